//! What the user sees of a run: `metrics.csv` (one row per committed step: the step log),
//! checkpoints written in order, validation at epoch ends, a progress bar on a terminal or log
//! lines otherwise, Prometheus gauges, and the loss plot at the end.
//!
//! Everything arrives as [`Event`]s on one channel and is handled in order by one task, so rows,
//! checkpoints and validation results never interleave.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use model::checkpoint::{CHECKPOINT_FILE, Checkpoint};
use model::engine::cpu::CpuEngine;
use model::trainer::Trainer;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Progress;
use crate::error::CoordError;
use crate::job::CommitReport;

/// File names inside the run directory.
pub const METRICS_FILE: &str = "metrics.csv";
/// The loss plot.
pub const PLOT_FILE: &str = "loss.svg";
const HEADER: &str =
    "step,epoch,step_in_epoch,loss,val_loss,seq_per_s,workers,step_ms,compute_ms,shards";

/// Something that happened to the job.
#[derive(Debug)]
pub enum Event {
    /// A step committed.
    Committed {
        /// The commit.
        report: CommitReport,
        /// A checkpoint to write, when one is due.
        checkpoint: Option<Box<Checkpoint>>,
        /// A snapshot to validate, at epoch ends.
        validate: Option<Box<Trainer>>,
    },
    /// A worker registered.
    Joined {
        /// Its name.
        name: String,
        /// Its device.
        device: String,
    },
    /// A worker left or was declared dead.
    Left {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Settings of the reporter.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// Run directory.
    pub out: PathBuf,
    /// Progress display.
    pub progress: Progress,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// First step of this process (non-zero after a resume).
    pub start_step: u64,
    /// Sequences per step.
    pub batch_size: usize,
}

/// The end of a run as the reporter saw it.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Steps committed by this process.
    pub steps: u64,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Last validation loss.
    pub last_val_loss: Option<f64>,
    /// Mean sequences per second over this process's steps.
    pub seq_per_s: f64,
}

struct Row {
    step: u64,
    loss: f64,
    val: Option<f64>,
}

/// The reporter task's handle.
pub type ReporterTask = tokio::task::JoinHandle<Result<Summary, CoordError>>;

/// Starts the reporter task; it ends when every sender is dropped.
pub fn spawn(
    cfg: ReportConfig,
) -> Result<(mpsc::UnboundedSender<Event>, ReporterTask), CoordError> {
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| CoordError::io(format!("creating {}", cfg.out.display()), e))?;
    let (history, file) = open_metrics(&cfg.out.join(METRICS_FILE), cfg.start_step)?;
    let (tx, rx) = mpsc::unbounded_channel();
    Ok((tx, tokio::spawn(run(cfg, rx, history, file))))
}

/// Opens `metrics.csv` for appending, keeping the rows of steps before `start_step` (the step log
/// of a resumed run continues exactly where its checkpoint left off).
fn open_metrics(path: &Path, start_step: u64) -> Result<(Vec<Row>, BufWriter<File>), CoordError> {
    let mut keep = vec![HEADER.to_string()];
    let mut history = Vec::new();
    if start_step > 0
        && let Ok(text) = std::fs::read_to_string(path)
    {
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split(',').collect();
            let Some(step) = cols.first().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            if step < start_step {
                history.push(Row {
                    step,
                    loss: cols.get(3).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
                    val: cols.get(4).and_then(|v| v.parse().ok()),
                });
                keep.push(line.to_string());
            }
        }
    }
    let io = |e| CoordError::io(format!("writing {}", path.display()), e);
    let mut f = BufWriter::new(File::create(path).map_err(io)?);
    for line in keep {
        writeln!(f, "{line}").map_err(io)?;
    }
    f.flush().map_err(io)?;
    Ok((history, f))
}

/// The progress bar on screen, if any, so that log lines can be written above it.
static SHOWN_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Log output to stderr that lifts the progress bar while a line is written, so log lines and
/// the bar never overwrite each other on a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let bar = SHOWN_BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(b) => b.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The bar while it is shown; dropping it takes it off [`LogWriter`]'s hands.
struct Shown(ProgressBar);

impl Shown {
    fn new(pb: ProgressBar) -> Self {
        if let Ok(mut b) = SHOWN_BAR.lock() {
            *b = Some(pb.clone());
        }
        Self(pb)
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        if let Ok(mut b) = SHOWN_BAR.lock() {
            *b = None;
        }
    }
}

fn progress_bar(cfg: &ReportConfig) -> Option<Shown> {
    let bar = match cfg.progress {
        Progress::Bar => true,
        Progress::Auto => std::io::stderr().is_terminal(),
        Progress::Log | Progress::Off => false,
    };
    bar.then(|| {
        // registered before it first draws, so no log line can land on it
        let shown = Shown::new(ProgressBar::new(cfg.total_steps));
        let pb = &shown.0;
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template"),
        );
        pb.set_position(cfg.start_step);
        shown
    })
}

async fn run(
    cfg: ReportConfig,
    mut rx: mpsc::UnboundedReceiver<Event>,
    mut history: Vec<Row>,
    mut file: BufWriter<File>,
) -> Result<Summary, CoordError> {
    let bar = progress_bar(&cfg);
    let mut summary = Summary::default();
    let mut validator: Option<CpuEngine> = None;
    let started = Instant::now();
    let mut last_commit: Option<Instant> = None;
    let mut last_log = Instant::now();
    let mut rate = 0.0f64;
    let io = |e| {
        CoordError::io(
            format!("writing {}", cfg.out.join(METRICS_FILE).display()),
            e,
        )
    };
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Joined { name, device } => {
                info!(worker = %name, %device, "joined");
                metrics::counter!("carry_worker_joins_total").increment(1);
            }
            Event::Left { name, reason } => {
                info!(worker = %name, %reason, "left");
                metrics::counter!("carry_worker_departures_total").increment(1);
            }
            Event::Committed {
                report,
                checkpoint,
                validate,
            } => {
                let now = Instant::now();
                let c = report.committed;
                let dt = last_commit.map_or(report.wall, |t| now.saturating_duration_since(t));
                last_commit = Some(now);
                let inst = cfg.batch_size as f64 / dt.as_secs_f64().max(1e-9);
                rate = if summary.steps == 0 {
                    inst
                } else {
                    0.9 * rate + 0.1 * inst
                };
                let workers = report.workers;
                summary.steps += 1;
                summary.last_loss = Some(c.loss);
                let val = match validate {
                    Some(trainer) => {
                        let mut engine = validator
                            .take()
                            .unwrap_or_else(|| CpuEngine::new(&trainer.spec().model, 1));
                        let (engine, result) = tokio::task::spawn_blocking(move || {
                            let r = trainer.validate(&mut engine);
                            (engine, r)
                        })
                        .await
                        .map_err(|e| CoordError::JobFailed(format!("validation panicked: {e}")))?;
                        validator = Some(engine);
                        match result {
                            Ok(v) => v,
                            Err(e) => {
                                warn!(cause = %e, "validation failed");
                                None
                            }
                        }
                    }
                    None => None,
                };
                if let Some(v) = val {
                    summary.last_val_loss = Some(v);
                    metrics::gauge!("carry_val_loss").set(v);
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
                    .map(|(r, w)| format!("{}-{}:{w}", r.start, r.end - 1))
                    .collect();
                writeln!(
                    file,
                    "{},{},{},{:.9},{},{:.1},{},{:.3},{:.3},{}",
                    c.cursor.global,
                    c.cursor.epoch,
                    c.cursor.step,
                    c.loss,
                    val.map_or(String::new(), |v| format!("{v:.9}")),
                    inst,
                    report.workers,
                    dt.as_secs_f64() * 1e3,
                    report.compute_ms,
                    shards.join(";")
                )
                .map_err(io)?;
                file.flush().map_err(io)?;
                history.push(Row {
                    step: c.cursor.global,
                    loss: c.loss,
                    val,
                });
                metrics::gauge!("carry_step").set(c.cursor.global as f64 + 1.0);
                metrics::gauge!("carry_epoch").set(c.cursor.epoch as f64);
                metrics::gauge!("carry_loss").set(c.loss);
                metrics::gauge!("carry_sequences_per_second").set(rate);
                metrics::gauge!("carry_workers").set(report.workers as f64);
                metrics::counter!("carry_steps_total").increment(1);
                if let Some(ck) = checkpoint {
                    let path = cfg.out.join(CHECKPOINT_FILE);
                    let p = path.clone();
                    tokio::task::spawn_blocking(move || ck.save(&p))
                        .await
                        .map_err(|e| {
                            CoordError::JobFailed(format!("checkpoint writer panicked: {e}"))
                        })??;
                    tracing::debug!(path = %path.display(), step = c.cursor.global, "checkpoint written");
                }
                let msg = format!(
                    "epoch {} loss {:.5} {:.0} seq/s {} workers",
                    c.cursor.epoch, c.loss, rate, workers
                );
                match bar.as_ref().map(|b| &b.0) {
                    Some(b) => {
                        b.set_position(c.cursor.global + 1);
                        b.set_message(msg);
                    }
                    None if cfg.progress != Progress::Off
                        && (last_log.elapsed() >= Duration::from_secs(5) || c.done) =>
                    {
                        last_log = Instant::now();
                        info!(
                            epoch = c.cursor.epoch,
                            step = c.cursor.global + 1,
                            total = cfg.total_steps,
                            loss = c.loss,
                            seq_per_s = format!("{rate:.0}"),
                            workers,
                            "progress"
                        );
                    }
                    None => {}
                }
            }
        }
    }
    if let Some(b) = bar {
        b.0.finish();
    }
    summary.seq_per_s =
        summary.steps as f64 * cfg.batch_size as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let loss: Vec<(u64, f64)> = history
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step, r.loss))
        .collect();
    let val: Vec<(u64, f64)> = history
        .iter()
        .filter_map(|r| r.val.map(|v| (r.step, v)))
        .collect();
    if !loss.is_empty() {
        let path = cfg.out.join(PLOT_FILE);
        match crate::plot::write_loss_plot(&path, &loss, &val) {
            Ok(()) => info!(path = %path.display(), "loss plot written"),
            Err(e) => warn!(cause = %e, "could not write the loss plot"),
        }
    }
    Ok(summary)
}
