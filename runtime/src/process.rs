//! The life of a program: logging set up first, the async runtime, signals that cancel one root
//! token, and the exit code an error maps to.
//!
//! Exit codes: `0` success, `1` the work failed (a job error, an unreachable coordinator, a
//! device error), `2` the configuration is invalid (nothing was started).

use std::fmt::Display;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Exit code of a run that failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of an invalid configuration.
pub const EXIT_CONFIG: u8 = 2;

/// Errors that know which exit code they end a program with.
pub trait ExitStatus: Display {
    /// The process exit code for this error.
    fn exit_code(&self) -> u8 {
        EXIT_FAILURE
    }
}

impl ExitStatus for crate::config::ConfigError {
    fn exit_code(&self) -> u8 {
        EXIT_CONFIG
    }
}

/// Logs to stderr through `writer`, filtered by `RUST_LOG` (default `info`), in colour only on a
/// terminal and without `NO_COLOR`.
pub fn init_tracing_to<W>(writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(colour)
        .try_init();
}

/// Mesa's Vulkan drivers print `XDG_RUNTIME_DIR is invalid or not set` on every probe when the
/// variable is unset, as it usually is in containers and CI. This points it at a private
/// directory so the logs stay clean.
///
/// # Safety
/// It changes the process environment: call it first thing in `main`, before any other thread
/// exists (no thread may read or write the environment at the same time).
pub unsafe fn set_runtime_dir_if_missing() {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
            return;
        }
        let dir = std::env::temp_dir().join("carry-runtime");
        if std::fs::create_dir_all(&dir).is_err()
            || std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_err()
        {
            return;
        }
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir) };
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C (SIGINT).
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => info!("SIGTERM"),
                _ = tokio::signal::ctrl_c() => info!("interrupted"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}

/// Runs `work` on a multi-threaded runtime (`threads` workers, or one per core) with rustls'
/// crypto provider installed, and turns its result into the process exit code; an error is
/// logged and also written to stderr as `error: ...`.
pub fn run<E, F>(threads: Option<usize>, work: F) -> ExitCode
where
    E: ExitStatus,
    F: Future<Output = Result<(), E>>,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    run_on(builder, work)
}

/// [`run`] on a runtime whose tasks all run on the calling thread: for a process whose async
/// work is a little I/O beside threads of its own that do the computing, where every hand-off
/// between runtime threads would be one more wake-up taking a core from them.
pub fn run_on_this_thread<E, F>(work: F) -> ExitCode
where
    E: ExitStatus,
    F: Future<Output = Result<(), E>>,
{
    run_on(tokio::runtime::Builder::new_current_thread(), work)
}

fn run_on<E, F>(mut builder: tokio::runtime::Builder, work: F) -> ExitCode
where
    E: ExitStatus,
    F: Future<Output = Result<(), E>>,
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(cause = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match rt.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes one line to stdout, the machine-readable channel (`READY <addr>`, results), and
/// flushes it.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
