//! The command line of the `worker` program.

use clap::Parser;
use runtime::process::say;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::WorkerArgs;
use crate::error::WorkerError;
use crate::session::{self, Health, Outcome};

async fn serve_health(
    addr: std::net::SocketAddr,
    stop: CancellationToken,
) -> Result<Health, WorkerError> {
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
            .serve_with_incoming_shutdown(runtime::net::incoming(l), stop.cancelled_owned())
            .await;
    });
    Ok(Health::new(Some(reporter)))
}

async fn main_async(args: WorkerArgs) -> Result<(), WorkerError> {
    let dry = args.dry_run.unwrap_or(false);
    let cfg = args.with_file()?.resolve()?;
    if dry {
        say(&format!("{cfg:#?}"));
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    runtime::process::cancel_on_signals(shutdown.clone());
    let health = match cfg.health_listen {
        Some(a) => serve_health(a, shutdown.clone()).await?,
        None => Health::new(None),
    };
    let outcome = session::run(cfg, health, shutdown.clone()).await;
    shutdown.cancel();
    match outcome? {
        Outcome::Finished(m) => info!(message = %m, "done"),
        Outcome::Stopped => info!("stopped"),
    }
    Ok(())
}

/// Runs the program; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { runtime::process::set_runtime_dir_if_missing() };
    let args = WorkerArgs::parse();
    runtime::process::init_tracing_to(std::io::stderr);
    runtime::process::run_on_this_thread(main_async(args))
}
