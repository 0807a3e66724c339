//! The command line of the `coordinator` program.

use std::io::Write;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{TrainArgs, TrainConfig};
use crate::error::CoordError;
use crate::predict::{ExportArgs, PredictArgs};

/// Distributed data-parallel training of stateful LSTMs: the coordinator.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model: serve the job to workers, spawn local ones, or train in this process.
    Train(Box<TrainArgs>),
    /// Run a trained model on input sequences from a given or zero state.
    Predict(PredictArgs),
    /// Write a checkpoint's weights as PyTorch-layout safetensors.
    Export(ExportArgs),
    /// Run as a worker (what `--spawn-workers` launches; same as the `worker` program).
    #[command(hide = true)]
    Worker(Box<worker::config::WorkerArgs>),
}

/// Writes one line to stdout (the machine-readable channel: `READY <addr>`, results).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
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

/// Resolves train arguments (flags > env > TOML > defaults).
pub fn train_config(args: TrainArgs) -> Result<TrainConfig, CoordError> {
    args.with_file()?.resolve()
}

async fn train(args: TrainArgs) -> Result<(), CoordError> {
    let dry = args.dry_run.unwrap_or(false);
    let cfg = train_config(args)?;
    if dry {
        say(&format!("{cfg:#?}"));
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let listener = if cfg.spawn_workers == Some(0) {
        None
    } else {
        let l = crate::server::bind(cfg.listen).await?;
        let addr = l
            .local_addr()
            .map_err(|e| CoordError::io("reading the bound address", e))?;
        say(&format!("READY {addr}"));
        Some(l)
    };
    let out = cfg.out.clone();
    let summary = crate::server::run(cfg, listener, shutdown).await?;
    // `none` where there was nothing to measure (no steps run, no validation data)
    let value = |v: Option<f64>| v.map_or_else(|| "none".to_string(), |v| format!("{v:.6}"));
    let (loss, val_loss) = (value(summary.last_loss), value(summary.last_val_loss));
    info!(
        steps = summary.steps,
        %loss,
        %val_loss,
        seq_per_s = format!("{:.0}", summary.seq_per_s),
        out = %out.display(),
        "done"
    );
    say(&format!(
        "DONE steps={} loss={loss} val_loss={val_loss} seq_per_s={:.1} out={}",
        summary.steps,
        summary.seq_per_s,
        out.display()
    ));
    Ok(())
}

/// Runs the program; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    model::device::set_runtime_dir_if_missing();
    let cli = Cli::parse();
    worker::cli::init_tracing_to(crate::report::LogWriter::default);
    if let Command::Worker(args) = cli.command {
        return worker::cli::run(*args);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(cause = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Train(a) => train(*a).await,
            Command::Predict(a) => {
                let s = tokio::task::spawn_blocking(move || {
                    crate::predict::predict(&a).map(|s| (s, a.out))
                })
                .await
                .map_err(|e| CoordError::JobFailed(format!("predict panicked: {e}")))??;
                say(&format!(
                    "wrote predictions for {} sequences of {} steps to {}",
                    s.0.n,
                    s.0.t,
                    s.1.display()
                ));
                Ok(())
            }
            Command::Export(a) => {
                crate::predict::export_model(&a)?;
                say(&format!(
                    "exported {} to {}",
                    a.model.display(),
                    a.out.display()
                ));
                Ok(())
            }
            Command::Worker(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
