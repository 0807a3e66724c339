//! The live view of a job, kept by the reporter as events arrive and served as JSON at
//! `/api/status` (and drawn by the page at `/`): the loss curves, throughput, step times, the
//! workers with their state and timings, which slots each computed recently, the slowest one,
//! and the checkpoints written. Series are bounded: past a limit every other point is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use crate::job::CommitReport;

/// Points kept per series before it is thinned.
const MAX_POINTS: usize = 4000;
/// Recent shards kept per worker.
const RECENT: usize = 12;
/// Recent step times kept.
const STEP_TIMES: usize = 300;
/// Checkpoints kept in the history.
const CHECKPOINTS: usize = 100;
/// A worker whose shard time per slot is this many times the others' median is slow.
const STRAGGLER_RATIO: f64 = 1.5;
/// Commits in a row a worker must be slow before it is called a straggler.
const STRAGGLER_STREAK: u32 = 10;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One shard a worker computed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct RecentShard {
    pub(crate) step: u64,
    /// Slots as `first-last`.
    pub(crate) slots: String,
    pub(crate) compute_ms: f64,
    pub(crate) transfer_ms: f64,
    pub(crate) wait_ms: f64,
}

/// A worker as the job saw it.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Worker {
    /// `alive`, `left`, `evicted` or `gone` (lease expired).
    pub(crate) state: String,
    /// Why it is not alive.
    pub(crate) reason: String,
    pub(crate) device: String,
    pub(crate) joined_unix_ms: u64,
    pub(crate) shards: u64,
    /// Moving averages of its shards, in milliseconds.
    pub(crate) compute_ms: f64,
    pub(crate) transfer_ms: f64,
    pub(crate) wait_ms: f64,
    /// Moving average of its shard time per slot (compute and transfer), in milliseconds.
    pub(crate) ms_per_slot: f64,
    /// Slower than the others for a while: the job runs at its pace.
    pub(crate) straggler: bool,
    pub(crate) recent: Vec<RecentShard>,
    #[serde(skip)]
    slow_streak: u32,
}

/// One checkpoint written.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CheckpointInfo {
    pub(crate) step: u64,
    pub(crate) unix_ms: u64,
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct StatusData {
    pub(crate) total_steps: u64,
    /// Steps committed.
    pub(crate) steps: u64,
    pub(crate) epoch: u64,
    pub(crate) batch_size: usize,
    pub(crate) started_unix_ms: u64,
    /// How the job ended, once it has.
    pub(crate) finished: Option<String>,
    /// `[step, loss]`.
    pub(crate) loss: Vec<[f64; 2]>,
    /// `[step, validation loss]`.
    pub(crate) val_loss: Vec<[f64; 2]>,
    /// `[step, sequences per second]`.
    pub(crate) throughput: Vec<[f64; 2]>,
    /// `[step, step ms, compute ms]` of recent steps; the rest of a step is overhead.
    pub(crate) step_ms: Vec<[f64; 3]>,
    /// First steps of the epochs after the first.
    pub(crate) epoch_starts: Vec<u64>,
    pub(crate) workers: BTreeMap<String, Worker>,
    /// The worker with the longest shard time per slot, when there are several.
    pub(crate) slowest: Option<String>,
    pub(crate) checkpoints: Vec<CheckpointInfo>,
}

fn push_bounded<T>(v: &mut Vec<T>, x: T) {
    v.push(x);
    if v.len() > MAX_POINTS {
        let mut i = 0;
        v.retain(|_| {
            i += 1;
            i % 2 == 0
        });
    }
}

/// The shared live view.
#[derive(Debug, Clone)]
pub(crate) struct Status(Arc<Mutex<StatusData>>);

/// What a commit changed in the view, for the log.
#[derive(Debug, Default)]
pub(crate) struct Noticed {
    /// Workers that just became stragglers: name, ms per slot, the others' median.
    pub(crate) stragglers: Vec<(String, f64, f64)>,
}

impl Status {
    /// A view of a job of `total_steps` steps of `batch_size` sequences.
    pub(crate) fn new(total_steps: u64, batch_size: usize) -> Self {
        Self(Arc::new(Mutex::new(StatusData {
            total_steps,
            batch_size,
            started_unix_ms: unix_ms(),
            ..StatusData::default()
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusData> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the view.
    pub(crate) fn snapshot(&self) -> StatusData {
        self.lock().clone()
    }

    /// A worker joined.
    pub(crate) fn joined(&self, name: &str, device: &str) {
        let mut d = self.lock();
        let w = d.workers.entry(name.to_string()).or_default();
        w.state = "alive".into();
        w.reason.clear();
        w.device = device.to_string();
        w.joined_unix_ms = unix_ms();
    }

    /// A worker left, its lease expired, or it was evicted.
    pub(crate) fn left(&self, name: &str, reason: &str, evicted: bool) {
        let mut d = self.lock();
        let w = d.workers.entry(name.to_string()).or_default();
        w.state = if evicted {
            "evicted"
        } else if reason.contains("lease") {
            "gone"
        } else {
            "left"
        }
        .into();
        w.reason = reason.to_string();
        w.straggler = false;
    }

    /// A checkpoint was written.
    pub(crate) fn checkpointed(&self, step: u64) {
        let mut d = self.lock();
        d.checkpoints.push(CheckpointInfo {
            step,
            unix_ms: unix_ms(),
        });
        if d.checkpoints.len() > CHECKPOINTS {
            d.checkpoints.remove(0);
        }
    }

    /// The step of the newest checkpoint written.
    pub(crate) fn last_checkpoint(&self) -> Option<u64> {
        self.lock().checkpoints.last().map(|c| c.step)
    }

    /// The job ended.
    pub(crate) fn finished(&self, how: String) {
        self.lock().finished = Some(how);
    }

    /// A step committed after `step_ms`, at `rate` sequences per second.
    pub(crate) fn committed(
        &self,
        r: &CommitReport,
        val: Option<f64>,
        rate: f64,
        step_ms: f64,
    ) -> Noticed {
        let mut d = self.lock();
        let c = &r.committed;
        let step = c.cursor.global;
        if d.epoch != c.cursor.epoch && d.steps > 0 {
            d.epoch_starts.push(step);
        }
        d.epoch = c.cursor.epoch;
        d.steps = step + 1;
        push_bounded(&mut d.loss, [step as f64, c.loss]);
        if let Some(v) = val {
            push_bounded(&mut d.val_loss, [step as f64, v]);
        }
        push_bounded(&mut d.throughput, [step as f64, rate]);
        d.step_ms.push([step as f64, step_ms, r.compute_ms]);
        if d.step_ms.len() > STEP_TIMES {
            d.step_ms.remove(0);
        }
        for s in &r.shards {
            let w = d.workers.entry(s.worker.clone()).or_insert_with(|| Worker {
                state: "alive".into(),
                joined_unix_ms: unix_ms(),
                ..Worker::default()
            });
            let per_slot = (s.compute_ms + s.transfer_ms) / s.range.len().max(1) as f64;
            let avg =
                |old: f64, new: f64, first: bool| if first { new } else { 0.8 * old + 0.2 * new };
            let first = w.shards == 0;
            w.compute_ms = avg(w.compute_ms, s.compute_ms, first);
            w.transfer_ms = avg(w.transfer_ms, s.transfer_ms, first);
            w.wait_ms = avg(w.wait_ms, s.wait_ms, first);
            w.ms_per_slot = avg(w.ms_per_slot, per_slot, first);
            w.shards += 1;
            w.recent.push(RecentShard {
                step,
                slots: format!("{}-{}", s.range.start, s.range.end.saturating_sub(1)),
                compute_ms: s.compute_ms,
                transfer_ms: s.transfer_ms,
                wait_ms: s.wait_ms,
            });
            if w.recent.len() > RECENT {
                w.recent.remove(0);
            }
        }
        // stragglers: among the workers of this step, one persistently slower than the others
        // one worker may hand in several shards of a step (a shard past its deadline is
        // offered again), so compare distinct workers
        let mut names: Vec<String> = r.shards.iter().map(|s| s.worker.clone()).collect();
        names.sort();
        names.dedup();
        let mut noticed = Noticed::default();
        if names.len() >= 2 {
            for n in &names {
                let mut others: Vec<f64> = names
                    .iter()
                    .filter(|m| *m != n)
                    .map(|m| d.workers[m].ms_per_slot)
                    .collect();
                others.sort_by(f64::total_cmp);
                let median = others[others.len() / 2];
                let w = d.workers.get_mut(n).expect("recorded above");
                if w.ms_per_slot > STRAGGLER_RATIO * median && median > 0.0 {
                    w.slow_streak += 1;
                    if w.slow_streak == STRAGGLER_STREAK {
                        w.straggler = true;
                        noticed.stragglers.push((n.clone(), w.ms_per_slot, median));
                    }
                } else {
                    w.slow_streak = 0;
                    w.straggler = false;
                }
            }
            d.slowest = names
                .iter()
                .max_by(|a, b| {
                    d.workers[*a]
                        .ms_per_slot
                        .total_cmp(&d.workers[*b].ms_per_slot)
                })
                .cloned();
        } else {
            d.slowest = None;
        }
        noticed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::ShardReport;
    use model::stream::Cursor;
    use model::trainer::Committed;

    fn report(step: u64, slow_ms: f64) -> CommitReport {
        CommitReport {
            committed: Committed {
                cursor: Cursor {
                    epoch: step / 20,
                    step: step % 20,
                    global: step,
                },
                loss: 1.0 / (step + 1) as f64,
                epoch_end: false,
                done: false,
            },
            shards: vec![
                ShardReport {
                    range: 0..5,
                    worker: "fast".into(),
                    compute_ms: 5.0,
                    transfer_ms: 1.0,
                    wait_ms: 0.1,
                },
                ShardReport {
                    range: 5..10,
                    worker: "slow".into(),
                    compute_ms: slow_ms,
                    transfer_ms: 1.0,
                    wait_ms: 0.1,
                },
            ],
            workers: 2,
            wall: std::time::Duration::from_millis(20),
            compute_ms: slow_ms,
            breakdown: Default::default(),
            at: std::time::Instant::now(),
        }
    }

    #[test]
    fn a_persistently_slower_worker_is_flagged_once() {
        let s = Status::new(100, 10);
        s.joined("fast", "cpu");
        s.joined("slow", "cpu");
        let mut flagged = Vec::new();
        for step in 0..30 {
            flagged.extend(
                s.committed(&report(step, 30.0), None, 100.0, 35.0)
                    .stragglers,
            );
        }
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert_eq!(flagged[0].0, "slow");
        let d = s.snapshot();
        assert_eq!(d.slowest.as_deref(), Some("slow"));
        assert!(d.workers["slow"].straggler && !d.workers["fast"].straggler);
        assert_eq!(d.epoch_starts, vec![20]);
        assert_eq!(d.workers["slow"].recent.last().unwrap().slots, "5-9");
        s.left("slow", "evicted: refused", true);
        assert_eq!(s.snapshot().workers["slow"].state, "evicted");
        // equal workers are not stragglers
        let t = Status::new(100, 10);
        for step in 0..30 {
            assert!(
                t.committed(&report(step, 5.0), None, 1.0, 6.0)
                    .stragglers
                    .is_empty()
            );
        }
    }
    #[test]
    fn one_worker_with_every_shard_of_a_step_is_no_straggler() {
        // a shard past its deadline is offered again, so one worker may hand in all of a step
        let s = Status::new(100, 10);
        let mut r = report(0, 30.0);
        for sh in &mut r.shards {
            sh.worker = "alone".into();
        }
        assert!(s.committed(&r, None, 1.0, 6.0).stragglers.is_empty());
        assert_eq!(s.snapshot().workers["alone"].shards, 2);
        assert_eq!(s.snapshot().slowest, None);
    }
}
