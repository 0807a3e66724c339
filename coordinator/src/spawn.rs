//! `--spawn-workers K`: launches K local worker processes (the `worker` program installed beside
//! this one, like `torchrun --nproc-per-node`), splitting the cores between them, and reaps them
//! when the job ends. On Linux each child is told to die with the coordinator, so a killed
//! coordinator leaves no orphans behind. Their output comes through the coordinator's log, each
//! line prefixed with the worker's name, so it never tears the progress bar. Under mutual TLS
//! they get client certificates of a CA made for this process only ([`SpawnTls`]).

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{TlsFiles, TrainConfig};
use crate::error::CoordError;

/// What spawned workers need for TLS, in a private temporary directory removed on drop: the
/// trust anchors for the server (its certificate chain, and the client CA, which usually signed
/// it) and, under mutual TLS, a client certificate signed by a CA made for this process only (its
/// key never leaves memory), which the server trusts beside `--tls-client-ca`.
#[derive(Debug)]
pub(crate) struct SpawnTls {
    dir: std::path::PathBuf,
    client_ca: Option<Vec<u8>>,
}

impl SpawnTls {
    /// Writes the files for a server with `tls`.
    pub(crate) fn new(tls: &TlsFiles) -> Result<Self, CoordError> {
        let dir = std::env::temp_dir().join(format!(
            "carry-spawn-{}-{}",
            std::process::id(),
            proto::security::random_id()
        ));
        let io = |e| CoordError::io(format!("writing {}", dir.display()), e);
        std::fs::create_dir_all(&dir).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| CoordError::io(format!("reading {}", p.display()), e))
        };
        let mut bundle = read(&tls.cert)?;
        let mut client_ca = None;
        if let Some(ca) = &tls.client_ca {
            bundle.push(b'\n');
            bundle.extend(read(ca)?);
            let ca = crate::pki::Ca::new("carry spawned workers (one coordinator only)")?;
            let (cert, key) = ca.issue(
                &["carry-spawned-worker"],
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            )?;
            std::fs::write(dir.join("client.pem"), cert).map_err(io)?;
            std::fs::write(dir.join("client.key"), key).map_err(io)?;
            client_ca = Some(ca.pem().into_bytes());
        }
        std::fs::write(dir.join("ca-bundle.pem"), bundle).map_err(io)?;
        Ok(Self { dir, client_ca })
    }

    /// The CA of the spawned workers' client certificates, to trust beside `--tls-client-ca`.
    pub(crate) fn client_ca(&self) -> Option<&[u8]> {
        self.client_ca.as_deref()
    }

    fn args(&self, cmd: &mut Command) {
        cmd.arg("--tls-ca")
            .arg(self.dir.join("ca-bundle.pem"))
            .arg("--tls-domain")
            .arg("localhost");
        if self.client_ca.is_some() {
            cmd.arg("--tls-cert")
                .arg(self.dir.join("client.pem"))
                .arg("--tls-key")
                .arg(self.dir.join("client.key"));
        }
    }
}

impl Drop for SpawnTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `worker` program beside this executable.
fn worker_program() -> Result<std::path::PathBuf, CoordError> {
    let me = std::env::current_exe()
        .map_err(|e| CoordError::Spawn(format!("locating this executable: {e}")))?;
    let p = me.with_file_name(format!("worker{}", std::env::consts::EXE_SUFFIX));
    if !p.is_file() {
        return Err(CoordError::Spawn(format!(
            "expected the worker program at {}, beside the coordinator; build both programs (cargo build --release --workspace --bins)",
            p.display()
        )));
    }
    Ok(p)
}

/// Running local workers.
#[derive(Debug)]
pub(crate) struct Workers {
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
pub(crate) fn spawn(
    cfg: &TrainConfig,
    count: usize,
    url: &str,
    tls: Option<&SpawnTls>,
) -> Result<Workers, CoordError> {
    let bin = worker_program()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / count.max(1)).max(1);
    let mut children = Vec::with_capacity(count);
    let mut relays = Vec::with_capacity(2 * count);
    for i in 0..count {
        let name = format!("local-{i}");
        let mut cmd = Command::new(&bin);
        cmd.arg("--coordinator")
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
        if let Some(t) = tls {
            t.args(&mut cmd);
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
    pub(crate) fn all_exited(&mut self) -> bool {
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
    pub(crate) async fn reap(mut self, grace: Duration) {
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
