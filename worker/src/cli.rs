//! The command line of the `worker` program.

use std::io::{IsTerminal, Write};

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::WorkerArgs;
use crate::error::WorkerError;
use crate::session::{self, Outcome};

async fn serve_health(
    addr: std::net::SocketAddr,
    stop: CancellationToken,
) -> Result<(), WorkerError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| WorkerError::Config {
            field: "health_listen".into(),
            msg: format!("{addr}: {e}"),
        })?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(l),
                stop.cancelled_owned(),
            )
            .await;
    });
    Ok(())
}

async fn main_async(args: WorkerArgs) -> Result<(), WorkerError> {
    let dry = args.dry_run.unwrap_or(false);
    let cfg = args.with_file()?.resolve()?;
    if dry {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{cfg:#?}");
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    {
        let s = shutdown.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                if let Ok(mut term) = signal(SignalKind::terminate()) {
                    tokio::select! {
                        _ = term.recv() => info!("SIGTERM"),
                        _ = tokio::signal::ctrl_c() => info!("interrupted"),
                    }
                    s.cancel();
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
                s.cancel();
            }
        });
    }
    if let Some(a) = cfg.health_listen {
        serve_health(a, shutdown.clone()).await?;
    }
    let outcome = session::run(cfg, shutdown.clone()).await;
    shutdown.cancel();
    match outcome? {
        Outcome::Finished(m) => info!(message = %m, "done"),
        Outcome::Stopped => info!("stopped"),
    }
    Ok(())
}

/// Runs the program; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    model::device::set_runtime_dir_if_missing();
    let args = WorkerArgs::parse();
    init_tracing();
    run(args)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in colour only on a terminal and
/// without `NO_COLOR`.
pub fn init_tracing() {
    init_tracing_to(std::io::stderr);
}

/// [`init_tracing`] with another writer for stderr (the coordinator's keeps its progress bar
/// intact).
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

/// Runs a worker with parsed arguments (logging already set up); returns the exit code.
pub fn run(args: WorkerArgs) -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(cause = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_async(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
