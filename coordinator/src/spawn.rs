//! `--spawn-workers K`: launches K local worker processes (like `torchrun --nproc-per-node`),
//! splitting the cores between them, and reaps them when the job ends. On Linux each child is
//! told to die with the coordinator, so a killed coordinator leaves no orphans behind.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::config::TrainConfig;
use crate::error::CoordError;

/// Running local workers.
#[derive(Debug)]
pub struct Workers {
    /// Name, process, and exit status once seen.
    children: Vec<(String, Child, Option<std::process::ExitStatus>)>,
}

fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter()
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
}

/// Starts `count` workers connecting to `url`.
pub fn spawn(cfg: &TrainConfig, count: usize, url: &str) -> Result<Workers, CoordError> {
    // This executable runs the worker too (`coordinator worker ...`, the same code as the
    // `worker` program), so spawning needs nothing beyond what was built.
    let bin = std::env::current_exe()
        .map_err(|e| CoordError::Spawn(format!("locating this executable: {e}")))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / count.max(1)).max(1);
    let mut children = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("local-{i}");
        let mut cmd = Command::new(&bin);
        cmd.arg("worker")
            .arg("--coordinator")
            .arg(url)
            .arg("--name")
            .arg(&name)
            .args(&cfg.worker_args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // defaults that --worker-args may override
        if !has_flag(&cfg.worker_args, "--threads") {
            cmd.arg("--threads").arg(threads.to_string());
        }
        if !has_flag(&cfg.worker_args, "--device") {
            cmd.arg("--device").arg(cfg.device.to_string());
        }
        if let Some(t) = &cfg.token {
            cmd.env("CARRY_TOKEN", t.expose());
        }
        if let Some(tls) = &cfg.tls {
            cmd.arg("--tls-ca")
                .arg(&tls.cert)
                .arg("--tls-domain")
                .arg("localhost");
        }
        #[cfg(target_os = "linux")]
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| CoordError::Spawn(format!("starting {}: {e}", bin.display())))?;
        info!(worker = %name, pid = child.id().unwrap_or(0), threads, "spawned local worker");
        children.push((name, child, None));
    }
    Ok(Workers { children })
}

impl Workers {
    /// Whether every worker has exited; logs each one's exit status the first time it is seen.
    pub fn all_exited(&mut self) -> bool {
        let mut all = true;
        for (name, child, seen) in &mut self.children {
            if seen.is_some() {
                continue;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        warn!(worker = %name, %status, "local worker exited with an error");
                    }
                    *seen = Some(status);
                }
                _ => all = false,
            }
        }
        all
    }

    /// Waits up to `grace` for every worker to exit, then kills the rest.
    pub async fn reap(mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for (name, child, seen) in &mut self.children {
            if seen.is_some() {
                continue;
            }
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(Ok(status)) if status.success() => info!(worker = %name, "local worker exited"),
                Ok(Ok(status)) => {
                    warn!(worker = %name, %status, "local worker exited with an error")
                }
                Ok(Err(e)) => warn!(worker = %name, cause = %e, "waiting for local worker"),
                Err(_) => {
                    warn!(worker = %name, "local worker did not exit; killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }
}
