//! `--spawn-workers 0`: the in-process reference trainer. The whole batch is one shard computed
//! here; commits go through the same reporter as a distributed run.

use std::time::Instant;

use model::device::{make_engine, resolve};
use model::trainer::Trainer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::TrainConfig;
use crate::error::CoordError;
use crate::job::CommitReport;
use crate::report::Event;

/// Trains every remaining step in this thread; returns the trainer at the end (or at shutdown).
pub fn run(
    cfg: &TrainConfig,
    mut trainer: Trainer,
    events: &mpsc::UnboundedSender<Event>,
    shutdown: &CancellationToken,
) -> Result<Trainer, CoordError> {
    let compute = resolve(cfg.device)?;
    let mut engine = make_engine(cfg.engine, &compute, &trainer.spec().model, cfg.threads)?;
    info!(engine = %engine.describe(), "training in this process");
    let b = trainer.spec().batch_size;
    loop {
        if shutdown.is_cancelled() {
            info!(step = trainer.cursor().global, "stopping early");
            break;
        }
        let t0 = Instant::now();
        let Some(c) = trainer.step_local(engine.as_mut())? else {
            break;
        };
        let wall = t0.elapsed();
        let checkpoint = ((c.cursor.global + 1) % cfg.checkpoint_every == 0 || c.done)
            .then(|| Box::new(trainer.checkpoint()));
        let validate = (c.epoch_end || c.done).then(|| Box::new(trainer.clone()));
        let report = CommitReport {
            committed: c,
            shards: vec![(0..b, "in-process".to_string())],
            workers: 0,
            wall,
            compute_ms: wall.as_secs_f64() * 1e3,
        };
        let _ = events.send(Event::Committed {
            report,
            checkpoint,
            validate,
        });
    }
    Ok(trainer)
}
