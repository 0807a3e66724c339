//! `--spawn-workers 0`: the in-process reference trainer. The whole batch is one shard computed
//! here; commits go through the same reporter, by the same checkpoint and validation rule, as a
//! distributed run.

use std::time::Instant;

use model::device::{make_engine, resolve};
use model::trainer::Trainer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::TrainConfig;
use crate::error::CoordError;
use crate::job::{CommitReport, ShardReport};
use crate::report::{Event, commit_event};

/// Trains every remaining step in this thread; returns the trainer at the end, or where it stood
/// when `stop` fired (a signal, or a file the reporter could not write).
pub(crate) fn run(
    cfg: &TrainConfig,
    mut trainer: Trainer,
    events: &mpsc::Sender<Event>,
    stop: &CancellationToken,
) -> Result<Trainer, CoordError> {
    let compute = resolve(cfg.device)?;
    let mut engine = make_engine(cfg.engine, &compute, &trainer.spec().model, cfg.threads)?;
    info!(engine = %engine.describe(), "training in this process");
    let b = trainer.spec().batch_size;
    loop {
        if stop.is_cancelled() {
            info!(step = trainer.cursor().global, "stopping early");
            break;
        }
        let t0 = Instant::now();
        let Some(c) = trainer.step_local(engine.as_mut())? else {
            break;
        };
        let wall = t0.elapsed();
        let report = CommitReport {
            committed: c,
            shards: vec![ShardReport {
                range: 0..b,
                worker: "in-process".to_string(),
                compute_ms: wall.as_secs_f64() * 1e3,
                transfer_ms: 0.0,
                wait_ms: 0.0,
            }],
            workers: 0,
            wall,
            compute_ms: wall.as_secs_f64() * 1e3,
            breakdown: Default::default(),
            at: Instant::now(),
        };
        let mut event = commit_event(&trainer, report, cfg.checkpoint_every);
        // under early stopping, an epoch's validation decides whether the next step runs
        let wait = (cfg.patience.is_some() && c.epoch_end).then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if let Event::Committed { ack, .. } = &mut event {
                *ack = Some(tx);
            }
            rx
        });
        if events.blocking_send(event).is_err() {
            // the reporter stopped: it could not write a file, and says why
            break;
        }
        if let Some(rx) = wait {
            let _ = rx.blocking_recv();
        }
    }
    Ok(trainer)
}
