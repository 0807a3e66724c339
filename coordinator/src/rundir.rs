//! The run directory of `train`: never clobbered, never shared. A directory that holds a run (a
//! checkpoint or a step log) is only continued (`--resume DIR`, `--auto-resume`) or replaced when
//! told to (`--overwrite`); a lock keeps a second coordinator out while one runs; temporary files
//! a killed writer left behind are removed. Without `--out`, each run gets a directory of its own
//! under `runs/`, and `runs/latest` links to the newest.

use std::path::{Path, PathBuf};

use model::checkpoint::{CHECKPOINT_FILE, Checkpoint};
use runtime::fs::DirLock;
use tracing::{info, warn};

use crate::config::{OutDir, TrainConfig};
use crate::error::CoordError;
use crate::report::{METRICS_FILE, PLOT_FILE};

/// The link to the newest run made without `--out`.
pub(crate) const LATEST: &str = "latest";

/// A run directory this process owns until it is dropped.
#[derive(Debug)]
pub(crate) struct RunDir {
    path: PathBuf,
    _lock: DirLock,
}

impl RunDir {
    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// What a directory holds of a previous run, described for a message.
fn previous_run(dir: &Path) -> Option<String> {
    let ck = dir.join(CHECKPOINT_FILE);
    if ck.is_file() {
        return Some(match Checkpoint::load(&ck) {
            Ok(c) => format!(
                "a run with a checkpoint at step {} of {}",
                c.cursor.global, c.total_steps
            ),
            Err(_) => "a checkpoint".into(),
        });
    }
    let metrics = dir.join(METRICS_FILE);
    if metrics.is_file() {
        let rows = std::fs::read_to_string(&metrics)
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0);
        return Some(format!("the step log of a run ({rows} steps)"));
    }
    None
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let b = if b.is_file() {
        b.parent().unwrap_or(b).to_path_buf()
    } else {
        b.to_path_buf()
    };
    canon(a) == canon(&b)
}

/// Takes the run directory of `cfg`: refuses one that holds a run it was not told to continue or
/// replace, locks it, and clears leftovers.
pub(crate) fn prepare(cfg: &TrainConfig) -> Result<RunDir, CoordError> {
    let dir = cfg.out.path().to_path_buf();
    let bad = |msg: String| CoordError::Config {
        field: "out".into(),
        msg,
    };
    let lock = DirLock::acquire(&dir).map_err(bad)?;
    let continues = cfg.auto_resume || cfg.resume.as_deref().is_some_and(|r| same_dir(&dir, r));
    if let Some(what) = previous_run(&dir)
        && !continues
    {
        if !cfg.overwrite {
            let d = dir.display();
            return Err(bad(format!(
                "{d} holds {what}; continue it with --resume {d} (or --auto-resume), replace it with --overwrite, or give another --out"
            )));
        }
        for f in [CHECKPOINT_FILE, METRICS_FILE, PLOT_FILE] {
            let p = dir.join(f);
            if p.exists() {
                std::fs::remove_file(&p)
                    .map_err(|e| CoordError::io(format!("removing {}", p.display()), e))?;
            }
        }
        warn!(dir = %dir.display(), replaced = %what, "--overwrite: the previous run is replaced");
    }
    let removed = runtime::fs::remove_stale_temps(&dir);
    if removed > 0 {
        info!(dir = %dir.display(), removed, "removed temporary files a stopped writer left");
    }
    if let OutDir::Fresh(p) = &cfg.out {
        link_latest(p);
    }
    Ok(RunDir {
        path: dir,
        _lock: lock,
    })
}

/// Points `runs/latest` at `run` (replacing the link atomically); best effort.
fn link_latest(run: &Path) {
    #[cfg(unix)]
    {
        let (Some(parent), Some(name)) = (run.parent(), run.file_name()) else {
            return;
        };
        let link = parent.join(LATEST);
        let tmp = parent.join(format!(".{LATEST}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let made =
            std::os::unix::fs::symlink(name, &tmp).and_then(|()| std::fs::rename(&tmp, &link));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            warn!(link = %link.display(), cause = %e, "could not link the newest run");
        }
    }
}
