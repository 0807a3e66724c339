//! The command line of the `coordinator` program.

use clap::{Parser, Subcommand};
use runtime::process::say;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{TrainArgs, TrainConfig};
use crate::error::CoordError;
use crate::predict::{ExportArgs, PredictArgs};

/// Distributed data-parallel training of stateful LSTMs: the coordinator.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Train a model: serve the job to workers, spawn local ones, or train in this process.
    Train(Box<TrainArgs>),
    /// Run a trained model on input sequences from a given or zero state.
    Predict(PredictArgs),
    /// Write a checkpoint's weights as PyTorch-layout safetensors.
    Export(ExportArgs),
    /// Serve a trained model online: every stream's (h, c) is kept between requests.
    Serve(Box<crate::serve::ServeArgs>),
    /// Forecast H steps of every series of a table with a model trained on series data.
    Forecast(Box<crate::forecast::ForecastArgs>),
    /// Hold out the last H steps of every series, forecast them, and score the forecast (MAE,
    /// RMSE, sMAPE, MASE) against persistence and seasonal-naive baselines.
    Evaluate(Box<crate::forecast::EvaluateArgs>),
}

/// Resolves train arguments (flags > env > TOML > defaults).
pub(crate) fn train_config(args: TrainArgs) -> Result<TrainConfig, CoordError> {
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
    runtime::process::cancel_on_signals(shutdown.clone());
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
    let out = cfg.out.path().to_path_buf();
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

async fn serve(args: crate::serve::ServeArgs) -> Result<(), CoordError> {
    let dry = args.dry_run.unwrap_or(false);
    let cfg = args.resolve()?;
    if dry {
        say(&format!("{cfg:#?}"));
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    runtime::process::cancel_on_signals(shutdown.clone());
    crate::serve::run(cfg, shutdown, |grpc, http| {
        say(&format!("READY {grpc}"));
        if let Some(h) = http {
            say(&format!("HTTP {h}"));
        }
    })
    .await
}

async fn dispatch(command: Command) -> Result<(), CoordError> {
    match command {
        Command::Serve(a) => serve(*a).await,
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
        Command::Forecast(a) => {
            let (s, out) = tokio::task::spawn_blocking(move || {
                crate::forecast::forecast(&a).map(|s| (s, a.out.clone()))
            })
            .await
            .map_err(|e| CoordError::JobFailed(format!("forecast panicked: {e}")))??;
            say(&format!(
                "wrote the forecast of {} series to {} and a plot to {}",
                s.series,
                out.display(),
                s.svg.display()
            ));
            Ok(())
        }
        Command::Evaluate(a) => {
            let scores = tokio::task::spawn_blocking(move || crate::forecast::evaluate(&a))
                .await
                .map_err(|e| CoordError::JobFailed(format!("evaluate panicked: {e}")))??;
            say(&scores.table());
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
    }
}

/// Runs the program; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { runtime::process::set_runtime_dir_if_missing() };
    let cli = Cli::parse();
    runtime::process::init_tracing_to(crate::report::LogWriter::default);
    if matches!(cli.command, Command::Serve(_)) {
        // many concurrent prediction streams: every core handles requests
        runtime::process::run(None, dispatch(cli.command))
    } else {
        // a training job's async work is its workers' calls and its bookkeeping, the heavy
        // pieces (validation, checkpoints, second opinions, the in-process trainer) run on the
        // blocking pool; one runtime thread saves the wake-ups of handing each call between
        // runtime threads, which take cores from the workers where they share a machine
        runtime::process::run_on_this_thread(dispatch(cli.command))
    }
}
