//! `--spawn-workers K`: launches K local worker processes (like `torchrun --nproc-per-node`),
//! splitting the cores between them, and reaps them when the job ends. On Linux each child is
//! told to die with the coordinator, so a killed coordinator leaves no orphans behind. Their
//! output comes through the coordinator's log, each line prefixed with the worker's name, so it
//! never tears the progress bar.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::TrainConfig;
use crate::error::CoordError;

/// Running local workers.
#[derive(Debug)]
pub struct Workers {
    /// Name, process, and exit status once seen.
    children: Vec<(String, Child, Option<std::process::ExitStatus>)>,
    /// Tasks copying the workers' output into this process's log.
    relays: Vec<JoinHandle<()>>,
}

/// Copies `from` line by line into the coordinator's log output, prefixed with `[name] `.
fn relay(name: &str, from: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<()> {
    let prefix = format!("[{name}] ");
    tokio::spawn(async move {
        let mut lines = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match lines.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    let mut out = prefix.clone().into_bytes();
                    out.extend_from_slice(&line);
                    let _ = crate::report::LogWriter.write_all(&out);
                }
            }
        }
    })
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
    let mut relays = Vec::with_capacity(2 * count);
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
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
        let mut child = cmd
            .spawn()
            .map_err(|e| CoordError::Spawn(format!("starting {}: {e}", bin.display())))?;
        info!(worker = %name, pid = child.id().unwrap_or(0), threads, "spawned local worker");
        if let Some(out) = child.stdout.take() {
            relays.push(relay(&name, out));
        }
        if let Some(err) = child.stderr.take() {
            relays.push(relay(&name, err));
        }
        children.push((name, child, None));
    }
    Ok(Workers { children, relays })
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
        // the last lines of their output, which may still be on the way
        for r in self.relays {
            let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
        }
    }
}
