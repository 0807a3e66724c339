//! What the user sees of a run, and the one writer of its files: `metrics.csv` (the step log),
//! checkpoints written in order, validation at epoch ends, progress, Prometheus gauges, and the
//! loss plot at the end.
//!
//! Everything arrives as [`Event`]s on one bounded channel and is handled in order by one task,
//! so rows, checkpoints and validation results never interleave, and the final checkpoint of an
//! interrupted run is written after every queued one. A write that still fails after brief retries
//! (a full disk) cancels the `fatal` token: the job stops at once with the error, the last good
//! checkpoint intact.
//!
//! # Layout
//! - [`csv`]: the step log.
//! - [`progress`]: the progress bar and the log writer that lifts it.
//! - [`prom`]: Prometheus metrics.
//! - [`plot`]: the loss plot.
//! - [`status`]: the live view served by `--ui-listen`.

pub(crate) mod csv;
mod forecast_plot;
pub(crate) mod plot;
pub(crate) mod progress;
pub(crate) mod prom;
pub(crate) mod status;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use model::checkpoint::{CHECKPOINT_FILE, Checkpoint};
use model::engine::cpu::CpuEngine;
use model::trainer::Trainer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::csv::{Point, StepLog, field};
pub(crate) use self::status::Status;
use crate::config::Progress;
use crate::error::CoordError;
use crate::job::CommitReport;

pub(crate) use self::csv::METRICS_FILE;
pub(crate) use self::forecast_plot::{PlotSeries, forecast_svg};
pub(crate) use self::progress::LogWriter;

/// The loss plot.
pub(crate) const PLOT_FILE: &str = "loss.svg";
/// Events that may wait for the reporter before senders are slowed down.
const QUEUE: usize = 256;
/// Checkpoint writes attempted before the job stops.
const CHECKPOINT_ATTEMPTS: u32 = 3;
/// Steps the throughput shown (progress, live page, Prometheus) is taken over.
pub(crate) const RATE_WINDOW: usize = 20;

/// Something that happened to the job.
#[derive(Debug)]
pub(crate) enum Event {
    /// A step committed.
    Committed {
        /// The commit.
        report: CommitReport,
        /// A checkpoint to write, when one is due.
        checkpoint: Option<Box<Checkpoint>>,
        /// A snapshot to validate, at epoch ends.
        validate: Option<Box<Trainer>>,
        /// Told once the commit is recorded and validated (the in-process trainer waits for it at
        /// epoch ends under early stopping, so where the run stops does not depend on timing).
        ack: Option<tokio::sync::oneshot::Sender<()>>,
    },
    /// A worker registered.
    Joined {
        /// Its name.
        name: String,
        /// Its device.
        device: String,
    },
    /// A worker left, was declared dead, or was evicted.
    Left {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
        /// Whether it was evicted for a fault.
        evicted: bool,
    },
    /// The run stops before its end: the checkpoint of where it stands, written last.
    Interrupted(Box<Checkpoint>),
}

/// The commit event of `report`, with a checkpoint (every `every` steps and at the end) and a
/// snapshot to validate (at epoch ends) when due: the one rule both trainers follow.
pub(crate) fn commit_event(trainer: &Trainer, report: CommitReport, every: u64) -> Event {
    let c = report.committed;
    let checkpoint = ((c.cursor.global + 1).is_multiple_of(every) || c.done)
        .then(|| Box::new(trainer.checkpoint()));
    let validate = (c.epoch_end || c.done).then(|| Box::new(trainer.clone()));
    Event::Committed {
        report,
        checkpoint,
        validate,
        ack: None,
    }
}

/// Settings of the reporter.
#[derive(Debug, Clone)]
pub(crate) struct ReportConfig {
    /// Run directory.
    pub(crate) out: PathBuf,
    /// Progress display.
    pub(crate) progress: Progress,
    /// Time between progress log lines.
    pub(crate) progress_every: Duration,
    /// Steps of the whole run.
    pub(crate) total_steps: u64,
    /// First step of this process (non-zero after a resume).
    pub(crate) start_step: u64,
    /// Sequences per step.
    pub(crate) batch_size: usize,
    /// Early stopping: epochs without a better validation loss before `early` is cancelled.
    pub(crate) patience: Option<u64>,
    /// Cancelled when early stopping ends the run.
    pub(crate) early: CancellationToken,
}

/// The best epoch's checkpoint, kept beside the last one when validation runs.
pub(crate) const BEST_FILE: &str = "best.safetensors";

/// The end of a run as the reporter saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    /// Steps committed by this process.
    pub steps: u64,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Last validation loss.
    pub last_val_loss: Option<f64>,
    /// Mean sequences per second over this process's steps.
    pub seq_per_s: f64,
}

/// The reporter task's handle.
pub(crate) type ReporterTask = tokio::task::JoinHandle<Result<Summary, CoordError>>;

/// Starts the reporter task; it ends when every sender is dropped, or at the first write that
/// fails for good (then `fatal` is cancelled). Returns its queue, its task and the live view it
/// keeps.
pub(crate) fn spawn(
    cfg: ReportConfig,
    fatal: CancellationToken,
) -> Result<(mpsc::Sender<Event>, ReporterTask, Status), CoordError> {
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| CoordError::io(format!("creating {}", cfg.out.display()), e))?;
    let (log, history) = StepLog::open(&cfg.out.join(METRICS_FILE), cfg.start_step)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let status = Status::new(cfg.total_steps, cfg.batch_size);
    let view = status.clone();
    Ok((
        tx,
        tokio::spawn(async move {
            let r = Reporter::new(cfg, log, history, view.clone()).run(rx).await;
            view.finished(match &r {
                Ok(_) => "the reporter finished".into(),
                Err(e) => e.to_string(),
            });
            if r.is_err() {
                fatal.cancel();
            }
            r
        }),
        status,
    ))
}

struct Reporter {
    cfg: ReportConfig,
    log: StepLog,
    history: Vec<Point>,
    summary: Summary,
    validator: Option<CpuEngine>,
    /// When the last step committed (its commit time, not when its event was handled).
    last_commit: Option<Instant>,
    /// Step times of the last [`RATE_WINDOW`] steps, by commit time.
    window: std::collections::VecDeque<Duration>,
    /// Sum of every step time of this process.
    total: Duration,
    last_log: Instant,
    rate: f64,
    /// Step of the last checkpoint written, for the error message of a failed one.
    last_checkpoint: Option<u64>,
    /// The live view.
    status: Status,
    /// Best validation loss so far and its epoch.
    best: Option<(f64, u64)>,
    /// Validations since the best one.
    since_best: u64,
    /// One straggler warning per worker a minute: on a busy machine a worker can turn slow and
    /// fast again every few steps, which the status page shows without a line each time.
    stragglers: runtime::logs::Limiter,
}

impl Reporter {
    fn new(cfg: ReportConfig, log: StepLog, history: Vec<Point>, status: Status) -> Self {
        Self {
            status,
            cfg,
            log,
            history,
            summary: Summary::default(),
            validator: None,
            last_commit: None,
            window: std::collections::VecDeque::with_capacity(RATE_WINDOW + 1),
            total: Duration::ZERO,
            last_log: Instant::now(),
            rate: 0.0,
            last_checkpoint: None,
            best: None,
            since_best: 0,
            stragglers: runtime::logs::Limiter::new(Duration::from_secs(60)),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Event>) -> Result<Summary, CoordError> {
        let bar = progress::bar(self.cfg.progress, self.cfg.total_steps, self.cfg.start_step);
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Joined { name, device } => {
                    info!(worker = %name, %device, "joined");
                    self.status.joined(&name, &device);
                    prom::joined();
                }
                Event::Left {
                    name,
                    reason,
                    evicted,
                } => {
                    info!(worker = %name, %reason, "left");
                    self.status.left(&name, &reason, evicted);
                    prom::left(evicted);
                }
                Event::Committed {
                    report,
                    checkpoint,
                    validate,
                    ack,
                } => {
                    self.committed(report, checkpoint, validate, bar.as_ref())
                        .await?;
                    if let Some(a) = ack {
                        let _ = a.send(());
                    }
                }
                Event::Interrupted(ck) => {
                    let step = ck.cursor.global;
                    self.save(*ck).await?;
                    info!(step, "checkpoint written at shutdown");
                }
            }
        }
        if let Some(b) = &bar {
            b.finish();
        }
        self.summary.seq_per_s = self.summary.steps as f64 * self.cfg.batch_size as f64
            / self.total.as_secs_f64().max(1e-9);
        self.plot();
        Ok(self.summary)
    }

    async fn validate(&mut self, trainer: Box<Trainer>) -> Result<Option<f64>, CoordError> {
        let mut engine = self
            .validator
            .take()
            .unwrap_or_else(|| CpuEngine::new(&trainer.spec().model, 1));
        let (engine, result) = tokio::task::spawn_blocking(move || {
            let r = trainer.validate(&mut engine);
            (engine, r)
        })
        .await
        .map_err(|e| CoordError::JobFailed(format!("validation panicked: {e}")))?;
        self.validator = Some(engine);
        Ok(match result {
            Ok(v) => v,
            Err(e) => {
                warn!(cause = %e, "validation failed");
                None
            }
        })
    }

    /// Keeps the best epoch's weights in `best.safetensors`, and ends the run when the validation
    /// loss has not improved for `patience` epochs.
    async fn track_best(&mut self, val: f64, epoch: u64, ck: Checkpoint) -> Result<(), CoordError> {
        if self.best.is_none_or(|(b, _)| val < b) {
            self.best = Some((val, epoch));
            self.since_best = 0;
            let path = self.cfg.out.join(BEST_FILE);
            let p = path.clone();
            tokio::task::spawn_blocking(move || {
                runtime::fs::retry(CHECKPOINT_ATTEMPTS, Duration::from_millis(200), || {
                    ck.save(&p)
                })
            })
            .await
            .map_err(|e| CoordError::JobFailed(format!("checkpoint writer panicked: {e}")))?
            .map_err(|e| {
                CoordError::JobFailed(format!(
                    "writing the best weights to {} failed ({e}); the job stops",
                    path.display()
                ))
            })?;
            tracing::debug!(epoch, val_loss = val, "best weights written");
            return Ok(());
        }
        self.since_best += 1;
        if let (Some(p), Some((best, best_epoch))) = (self.cfg.patience, self.best)
            && self.since_best >= p
            && !self.cfg.early.is_cancelled()
        {
            info!(
                epoch,
                val_loss = val,
                best_epoch,
                best_val_loss = best,
                patience = p,
                "early stopping: no better validation loss for {p} epochs; the best weights are in {BEST_FILE}"
            );
            self.cfg.early.cancel();
        }
        Ok(())
    }

    /// Writes a checkpoint, retrying briefly; a write that keeps failing stops the job.
    async fn save(&mut self, ck: Checkpoint) -> Result<(), CoordError> {
        let path = self.cfg.out.join(CHECKPOINT_FILE);
        let step = ck.cursor.global;
        let p = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            runtime::fs::retry(CHECKPOINT_ATTEMPTS, Duration::from_millis(200), || {
                ck.save(&p)
            })
        })
        .await
        .map_err(|e| CoordError::JobFailed(format!("checkpoint writer panicked: {e}")))?;
        if let Err(e) = written {
            let last = self.last_checkpoint.map_or_else(
                || "the checkpoint there from before this process, if any".to_string(),
                |s| format!("the one at step {s}"),
            );
            return Err(CoordError::JobFailed(format!(
                "writing the checkpoint at step {step} failed {CHECKPOINT_ATTEMPTS} times ({e}); the job stops; {} keeps {last}",
                path.display()
            )));
        }
        self.last_checkpoint = Some(step);
        self.status.checkpointed(step);
        prom::checkpointed(step);
        tracing::debug!(path = %path.display(), step, "checkpoint written");
        Ok(())
    }

    async fn committed(
        &mut self,
        report: CommitReport,
        checkpoint: Option<Box<Checkpoint>>,
        validate: Option<Box<Trainer>>,
        bar: Option<&progress::Shown>,
    ) -> Result<(), CoordError> {
        let c = report.committed;
        // throughput from commit times: a step's time is from the commit before it (the first
        // step of this process: from handing it out) to its own commit, whenever its row is
        // written here
        let dt = self
            .last_commit
            .map_or(report.wall, |t| report.at.saturating_duration_since(t));
        self.last_commit = Some(report.at);
        self.total += dt;
        self.window.push_back(dt);
        if self.window.len() > RATE_WINDOW {
            self.window.pop_front();
        }
        let span: Duration = self.window.iter().sum();
        self.rate =
            self.window.len() as f64 * self.cfg.batch_size as f64 / span.as_secs_f64().max(1e-9);
        self.summary.steps += 1;
        self.summary.last_loss = Some(c.loss);
        let (val, snapshot) = match validate {
            Some(t) => {
                let ck = t.checkpoint();
                (self.validate(t).await?, Some(ck))
            }
            None => (None, None),
        };
        if let (Some(v), Some(ck)) = (val, snapshot) {
            self.track_best(v, c.cursor.epoch, ck).await?;
        }
        if let Some(v) = val {
            self.summary.last_val_loss = Some(v);
            prom::validated(v);
            info!(
                epoch = c.cursor.epoch,
                step = c.cursor.global,
                loss = c.loss,
                val_loss = v,
                "epoch done"
            );
        }
        let shards: Vec<String> = report
            .shards
            .iter()
            .map(|s| format!("{}-{}:{}", s.range.start, s.range.end - 1, s.worker))
            .collect();
        let timings: Vec<String> = report
            .shards
            .iter()
            .map(|s| {
                format!(
                    "{}={:.2}/{:.2}/{:.2}",
                    s.worker, s.compute_ms, s.transfer_ms, s.wait_ms
                )
            })
            .collect();
        let b = report.breakdown;
        let step_ms = dt.as_secs_f64() * 1e3;
        // the commit time on the wall clock
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Instant::now().saturating_duration_since(report.at))
            .as_secs_f64()
            * 1e3;
        let idle = (step_ms - report.compute_ms - b.reduce_ms - b.update_ms).max(0.0);
        self.log
            .append(&[
                c.cursor.global.to_string(),
                c.cursor.epoch.to_string(),
                c.cursor.step.to_string(),
                format!("{:.9}", c.loss),
                val.map_or(String::new(), |v| format!("{v:.9}")),
                format!("{:.1}", self.rate),
                report.workers.to_string(),
                format!("{step_ms:.3}"),
                format!("{:.3}", report.compute_ms),
                field(&shards.join(";")),
                field(&timings.join(";")),
                format!("{:.3}", b.reduce_ms),
                format!("{:.3}", b.wait_ms),
                format!("{:.3}", b.update_ms),
                format!("{:.3}", b.coordinator_ms),
                format!("{:.3}", b.commit_lag_ms),
                format!("{idle:.3}"),
                b.peer_bytes.to_string(),
                b.coordinator_bytes.to_string(),
                format!("{unix_ms:.3}"),
            ])
            .map_err(|e| {
                CoordError::JobFailed(format!(
                    "the step log could not be written ({e}); the job stops"
                ))
            })?;
        self.history.push(Point {
            step: c.cursor.global,
            epoch: c.cursor.epoch,
            loss: c.loss,
            val,
        });
        prom::committed(&report, self.rate);
        prom::step_time(step_ms, &b);
        let noticed = self
            .status
            .committed(&report, val, self.rate, dt.as_secs_f64() * 1e3);
        for (worker, ms, median) in noticed.stragglers {
            prom::straggler(&worker);
            if let Some(repeats_not_logged) = self.stragglers.check(&worker, Instant::now()) {
                warn!(
                    %worker,
                    ms_per_slot = format!("{ms:.2}"),
                    others_median = format!("{median:.2}"),
                    repeats_not_logged,
                    "straggler: this worker's shards take {:.1}x as long per slot as the others', and every step waits for it",
                    ms / median.max(1e-9)
                );
            }
        }
        if let Some(ck) = checkpoint {
            self.save(*ck).await?;
        }
        let workers = report.workers;
        match bar {
            Some(b) => b.set(
                c.cursor.global + 1,
                format!(
                    "epoch {} loss {:.5} {:.0} seq/s {} workers",
                    c.cursor.epoch, c.loss, self.rate, workers
                ),
            ),
            None if self.cfg.progress != Progress::Off
                && (self.last_log.elapsed() >= self.cfg.progress_every || c.done) =>
            {
                self.last_log = Instant::now();
                info!(
                    epoch = c.cursor.epoch,
                    step = c.cursor.global + 1,
                    total = self.cfg.total_steps,
                    loss = c.loss,
                    seq_per_s = format!("{:.0}", self.rate),
                    workers,
                    "progress"
                );
            }
            None => {}
        }
        Ok(())
    }

    fn plot(&self) {
        let loss: Vec<plot::Point> = self
            .history
            .iter()
            .filter(|r| r.loss.is_finite())
            .map(|r| (r.step, r.loss, r.epoch))
            .collect();
        let val: Vec<plot::Point> = self
            .history
            .iter()
            .filter_map(|r| r.val.map(|v| (r.step, v, r.epoch)))
            .collect();
        if loss.is_empty() {
            return;
        }
        let path = self.cfg.out.join(PLOT_FILE);
        match plot::write_loss_plot(&path, &loss, &val) {
            Ok(()) => info!(path = %path.display(), "loss plot written"),
            Err(e) => warn!(cause = %e, "could not write the loss plot"),
        }
    }
}
