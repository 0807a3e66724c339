//! The job state machine: membership and leases, the shard plan of each step, step commit and
//! refusals. No I/O and no clock of its own (every call takes `now`), so it is unit-tested with a
//! fake clock; the gRPC service only adapts to it.
//!
//! A step is planned when the previous one commits (or when the first workers arrive): its `B`
//! slots are cut into one contiguous shard per live worker. A worker polling for work gets the
//! shard it owns, or else any orphaned shard (its owner died or left); a worker that joined after
//! planning waits for the next step. When every shard has a result the step commits exactly once:
//! gradients are summed in shard order, Adam is applied, and the final `(h, c)` of all slots are
//! stored together. A result for a committed step, for a shard the sender does not own, or with
//! wrong sizes or non-finite values is refused, and nothing of it is used.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use model::state::SlotStates;
use model::trainer::{Committed, ShardData, StepPlan, Trainer};

/// Refused submissions of one shard after which the job stops with an error.
const MAX_REFUSALS: u32 = 3;

/// Why a request was refused. Each maps to a gRPC status in one place (`error.rs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The worker id is not (or no longer) a member.
    #[error("unknown worker id `{0}`; register again")]
    UnknownWorker(String),
    /// A result for a step that is already committed, or a duplicate.
    #[error("{0}")]
    Stale(String),
    /// A result for a step or shard not assigned to the sender.
    #[error("{0}")]
    NotAssigned(String),
    /// A result with wrong sizes or non-finite values.
    #[error("{0}")]
    Invalid(String),
}

/// What a polling worker gets.
#[derive(Debug, Clone)]
pub enum Poll {
    /// A shard to compute.
    Assign(Box<Assignment>),
    /// Nothing yet; poll again.
    Wait(String),
    /// The job is over (successfully or not).
    Finished(String),
}

/// A shard of a step, handed to a worker.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The step.
    pub plan: StepPlan,
    /// Shard index within the step.
    pub shard: u32,
    /// First global slot of the shard.
    pub first_slot: usize,
    /// Data and initial states.
    pub data: ShardData,
}

/// Sizes a submission for `(step, shard)` must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Gradient length.
    pub grad: usize,
    /// Shape of `h` and `c`: `[layers, slots, hidden]`.
    pub state: [usize; 3],
}

/// A decoded shard result.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Global step id.
    pub step: u64,
    /// Shard index.
    pub shard: u32,
    /// Sum of squared errors.
    pub loss_sum: f64,
    /// Gradient of `loss_sum`.
    pub grad: Vec<f32>,
    /// Final states of the shard's slots.
    pub finals: SlotStates,
    /// Worker compute time.
    pub compute_ms: f64,
}

/// A committed step, for the step log and metrics.
#[derive(Debug, Clone)]
pub struct CommitReport {
    /// The trainer's view of the commit.
    pub committed: Committed,
    /// Slot ranges and the names of the workers that computed them.
    pub shards: Vec<(Range<usize>, String)>,
    /// Live workers at commit time.
    pub workers: usize,
    /// Wall time from planning to commit.
    pub wall: Duration,
    /// Longest worker compute time among the shards.
    pub compute_ms: f64,
}

/// The outcome of an accepted submission.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// Stored; other shards of the step are still out.
    Accepted,
    /// The step committed.
    Committed(Box<CommitReport>),
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    deadline: Instant,
}

#[derive(Debug)]
struct ShardSlot {
    range: Range<usize>,
    owner: Option<u64>,
    result: Option<(u64, Submission)>,
    refusals: u32,
}

#[derive(Debug)]
struct Running {
    plan: StepPlan,
    shards: Vec<ShardSlot>,
    started: Instant,
}

/// The job.
#[derive(Debug)]
pub struct Job {
    trainer: Trainer,
    /// Distinguishes worker ids of this coordinator process from a previous one's.
    incarnation: String,
    lease: Duration,
    min_workers: usize,
    started: bool,
    members: BTreeMap<u64, Member>,
    next_id: u64,
    running: Option<Running>,
    failed: Option<String>,
}

impl Job {
    /// A job over `trainer` that starts once `min_workers` have registered.
    pub fn new(trainer: Trainer, incarnation: String, lease: Duration, min_workers: usize) -> Self {
        Self {
            trainer,
            incarnation,
            lease,
            min_workers: min_workers.max(1),
            started: false,
            members: BTreeMap::new(),
            next_id: 1,
            running: None,
            failed: None,
        }
    }

    /// The trainer (parameters, cursor, states).
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Live workers.
    pub fn live_workers(&self) -> usize {
        self.members.len()
    }

    /// Why the job failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Whether no more work will be handed out.
    pub fn is_finished(&self) -> bool {
        self.failed.is_some() || self.trainer.is_done()
    }

    /// Adds a worker; returns its id.
    pub fn register(&mut self, name: &str, now: Instant) -> String {
        let id = self.next_id;
        self.next_id += 1;
        self.members.insert(
            id,
            Member {
                name: name.to_string(),
                deadline: now + self.lease,
            },
        );
        self.wire_id(id)
    }

    fn wire_id(&self, id: u64) -> String {
        format!("w{id}-{}", self.incarnation)
    }

    fn member(&self, wire: &str) -> Result<u64, Refusal> {
        let unknown = || Refusal::UnknownWorker(wire.to_string());
        let (num, inc) = wire
            .strip_prefix('w')
            .and_then(|s| s.split_once('-'))
            .ok_or_else(unknown)?;
        let id: u64 = num.parse().map_err(|_| unknown())?;
        if inc != self.incarnation || !self.members.contains_key(&id) {
            return Err(unknown());
        }
        Ok(id)
    }

    /// The name a worker registered with.
    pub fn name_of(&self, wire: &str) -> Option<String> {
        self.member(wire)
            .ok()
            .map(|id| self.members[&id].name.clone())
    }

    /// Renews a worker's lease.
    pub fn heartbeat(&mut self, wire: &str, now: Instant) -> Result<(), Refusal> {
        let id = self.member(wire)?;
        let lease = self.lease;
        if let Some(m) = self.members.get_mut(&id) {
            m.deadline = now + lease;
        }
        Ok(())
    }

    /// Removes a worker at once; its unfinished shards become orphans.
    pub fn leave(&mut self, wire: &str) -> Result<String, Refusal> {
        let id = self.member(wire)?;
        Ok(self.remove(id))
    }

    fn remove(&mut self, id: u64) -> String {
        let m = self.members.remove(&id).map(|m| m.name).unwrap_or_default();
        if let Some(run) = &mut self.running {
            for s in &mut run.shards {
                if s.owner == Some(id) && s.result.is_none() {
                    s.owner = None;
                }
            }
        }
        m
    }

    /// Removes workers whose lease ran out; returns their names.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let dead: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.deadline < now)
            .map(|(&id, _)| id)
            .collect();
        dead.into_iter().map(|id| self.remove(id)).collect()
    }

    fn plan_next(&mut self, now: Instant) {
        if self.running.is_some() || self.is_finished() || self.members.is_empty() {
            return;
        }
        if !self.started && self.members.len() < self.min_workers {
            return;
        }
        let Some(plan) = self.trainer.plan() else {
            return;
        };
        self.started = true;
        let b = self.trainer.spec().batch_size;
        let owners: Vec<u64> = self.members.keys().copied().collect();
        let k = owners.len().min(b);
        let shards = (0..k)
            .map(|i| ShardSlot {
                range: i * b / k..(i + 1) * b / k,
                owner: Some(owners[i]),
                result: None,
                refusals: 0,
            })
            .collect();
        self.running = Some(Running {
            plan,
            shards,
            started: now,
        });
    }

    /// The next assignment for a worker, or why there is none.
    pub fn poll(&mut self, wire: &str, now: Instant) -> Result<Poll, Refusal> {
        let id = self.member(wire)?;
        self.heartbeat(wire, now)?;
        if let Some(f) = &self.failed {
            return Ok(Poll::Finished(format!("the job failed: {f}")));
        }
        if self.trainer.is_done() {
            return Ok(Poll::Finished(format!(
                "the job is complete ({} steps)",
                self.trainer.total_steps()
            )));
        }
        self.plan_next(now);
        let Some(run) = &mut self.running else {
            return Ok(Poll::Wait(format!(
                "waiting for workers: {} of {} registered",
                self.members.len(),
                self.min_workers
            )));
        };
        let pick = run
            .shards
            .iter()
            .position(|s| s.owner == Some(id) && s.result.is_none())
            .or_else(|| {
                run.shards
                    .iter()
                    .position(|s| s.owner.is_none() && s.result.is_none())
            });
        let Some(i) = pick else {
            return Ok(Poll::Wait(format!(
                "step {} is in progress on other workers",
                run.plan.cursor.global
            )));
        };
        run.shards[i].owner = Some(id);
        let range = run.shards[i].range.clone();
        let plan = run.plan;
        Ok(Poll::Assign(Box::new(Assignment {
            plan,
            shard: i as u32,
            first_slot: range.start,
            data: self.trainer.shard(&plan, range),
        })))
    }

    /// Checks that `wire` may submit `(step, shard)` and returns the sizes the result must have.
    pub fn expect(&self, wire: &str, step: u64, shard: u32) -> Result<Expected, Refusal> {
        let id = self.member(wire)?;
        let current = self.trainer.cursor().global;
        if step < current {
            return Err(Refusal::Stale(format!(
                "step {step} is already committed; the job is at step {current}"
            )));
        }
        let run = match &self.running {
            Some(r) if r.plan.cursor.global == step => r,
            _ => {
                return Err(Refusal::NotAssigned(format!(
                    "step {step} has not been assigned; the job is at step {current}"
                )));
            }
        };
        let s = run.shards.get(shard as usize).ok_or_else(|| {
            Refusal::NotAssigned(format!(
                "step {step} has {} shards, got shard {shard}",
                run.shards.len()
            ))
        })?;
        if s.result.is_some() {
            return Err(Refusal::Stale(format!(
                "shard {shard} of step {step} was already submitted"
            )));
        }
        if s.owner != Some(id) {
            let holder = s.owner.map_or("no worker".to_string(), |o| self.wire_id(o));
            return Err(Refusal::NotAssigned(format!(
                "shard {shard} of step {step} is assigned to {holder}, not {wire}"
            )));
        }
        let m = &self.trainer.spec().model;
        Ok(Expected {
            grad: self.trainer.layout().len(),
            state: [m.layers, s.range.len(), m.hidden],
        })
    }

    /// Records that a submission for `(step, shard)` was malformed; after repeated refusals the
    /// job fails. The shard goes back to the pool so another worker can compute it.
    pub fn refuse(&mut self, wire: &str, step: u64, shard: u32, why: &str) {
        let Some(run) = &mut self.running else { return };
        if run.plan.cursor.global != step {
            return;
        }
        let Some(s) = run.shards.get_mut(shard as usize) else {
            return;
        };
        s.refusals += 1;
        s.owner = None;
        if s.refusals >= MAX_REFUSALS {
            self.failed = Some(format!(
                "shard {shard} of step {step} was refused {} times, last from {wire}: {why}",
                s.refusals
            ));
        }
    }

    /// Stores a result that passed [`Job::expect`] and the wire checks; commits the step when
    /// it was the last one out.
    pub fn submit(
        &mut self,
        wire: &str,
        sub: Submission,
        now: Instant,
    ) -> Result<Submitted, Refusal> {
        let exp = self.expect(wire, sub.step, sub.shard)?;
        let id = self.member(wire)?;
        if sub.grad.len() != exp.grad {
            return Err(Refusal::Invalid(format!(
                "grad: expected {} values, got {}",
                exp.grad,
                sub.grad.len()
            )));
        }
        let got = [sub.finals.layers(), sub.finals.slots(), sub.finals.hidden()];
        if got != exp.state {
            return Err(Refusal::Invalid(format!(
                "final state: expected shape {:?}, got {:?}",
                exp.state, got
            )));
        }
        if !sub.loss_sum.is_finite() || sub.loss_sum < 0.0 {
            return Err(Refusal::Invalid(format!(
                "loss_sum: expected a finite non-negative value, got {}",
                sub.loss_sum
            )));
        }
        self.heartbeat(wire, now)?;
        let run = self
            .running
            .as_mut()
            .expect("expect() checked the running step");
        let shard = sub.shard as usize;
        run.shards[shard].result = Some((id, sub));
        if run.shards.iter().any(|s| s.result.is_none()) {
            return Ok(Submitted::Accepted);
        }
        let run = self.running.take().expect("running");
        let mut grad = vec![0.0f32; self.trainer.layout().len()];
        let mut loss = 0.0;
        let mut compute_ms = 0.0f64;
        let mut finals = Vec::with_capacity(run.shards.len());
        let mut shards = Vec::with_capacity(run.shards.len());
        for s in &run.shards {
            let (owner, r) = s.result.as_ref().expect("all shards have results");
            for (g, v) in grad.iter_mut().zip(&r.grad) {
                *g += v;
            }
            loss += r.loss_sum;
            compute_ms = compute_ms.max(r.compute_ms);
            finals.push((s.range.clone(), &r.finals));
            let name = self
                .members
                .get(owner)
                .map_or_else(|| format!("w{owner}"), |m| m.name.clone());
            shards.push((s.range.clone(), name));
        }
        let committed = match self.trainer.commit(&run.plan, &grad, loss, &finals) {
            Ok(c) => c,
            Err(e) => {
                self.failed = Some(format!(
                    "commit of step {} failed: {e}",
                    run.plan.cursor.global
                ));
                return Err(Refusal::Invalid(e.to_string()));
            }
        };
        let report = CommitReport {
            committed,
            shards,
            workers: self.members.len(),
            wall: now.saturating_duration_since(run.started),
            compute_ms,
        };
        self.plan_next(now);
        Ok(Submitted::Committed(Box::new(report)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::config::{ModelConfig, TrainSpec};
    use model::data::{SyntheticSpec, synthetic};
    use model::engine::cpu::CpuEngine;
    use std::sync::Arc;

    fn spec(batch: usize) -> TrainSpec {
        TrainSpec {
            model: ModelConfig {
                hidden: 4,
                ..ModelConfig::seed()
            },
            adam: Default::default(),
            batch_size: batch,
            epochs: 1,
            max_steps: Some(4),
            seed: 5,
            reset: Default::default(),
            val_state: Default::default(),
        }
    }

    fn trainer(batch: usize) -> Trainer {
        let data = synthetic(&SyntheticSpec {
            sequences: batch * 6,
            val_sequences: 0,
            timesteps: 8,
            ..SyntheticSpec::new(batch, 1)
        });
        Trainer::new(spec(batch), Arc::new(data)).unwrap()
    }

    /// Computes an assignment like a worker would.
    fn compute(job: &Job, a: &Assignment) -> Submission {
        let mut e = CpuEngine::new(&job.trainer().spec().model, 1);
        let out = a
            .data
            .compute(&mut e, &job.trainer().spec().model, job.trainer().params())
            .unwrap();
        Submission {
            step: a.plan.cursor.global,
            shard: a.shard,
            loss_sum: out.loss_sum,
            grad: out.grad,
            finals: out.final_state,
            compute_ms: 1.0,
        }
    }

    fn assign(job: &mut Job, w: &str, now: Instant) -> Assignment {
        match job.poll(w, now).unwrap() {
            Poll::Assign(a) => *a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    #[test]
    fn waits_for_workers_then_shards_and_commits_once() {
        let t0 = Instant::now();
        let mut job = Job::new(trainer(6), "a".into(), Duration::from_secs(3), 2);
        let w1 = job.register("one", t0);
        assert!(matches!(job.poll(&w1, t0).unwrap(), Poll::Wait(r) if r.contains("1 of 2")));
        let w2 = job.register("two", t0);
        let a1 = assign(&mut job, &w1, t0);
        let a2 = assign(&mut job, &w2, t0);
        assert_eq!((a1.first_slot, a1.data.slots.len()), (0, 3));
        assert_eq!((a2.first_slot, a2.data.slots.len()), (3, 3));
        // re-polling returns the same shard (idempotent delivery)
        assert_eq!(assign(&mut job, &w1, t0).shard, a1.shard);
        let s1 = compute(&job, &a1);
        let s2 = compute(&job, &a2);
        assert!(matches!(
            job.submit(&w1, s1.clone(), t0).unwrap(),
            Submitted::Accepted
        ));
        // duplicate
        assert!(matches!(
            job.submit(&w1, s1.clone(), t0),
            Err(Refusal::Stale(_))
        ));
        // a shard that belongs to someone else
        let mut wrong = s2.clone();
        wrong.shard = 0;
        assert!(matches!(job.expect(&w2, 0, 0), Err(Refusal::Stale(_))));
        assert!(matches!(job.submit(&w2, wrong, t0), Err(Refusal::Stale(_))));
        match job.submit(&w2, s2.clone(), t0).unwrap() {
            Submitted::Committed(r) => {
                assert_eq!(r.committed.cursor.global, 0);
                assert_eq!(r.shards.len(), 2);
            }
            other => panic!("expected a commit, got {other:?}"),
        }
        // late submission for the committed step
        let e = job.submit(&w2, s2, t0).unwrap_err();
        assert!(
            matches!(&e, Refusal::Stale(m) if m.contains("already committed")),
            "{e}"
        );
        assert_eq!(job.trainer().cursor().global, 1);
    }

    #[test]
    fn dead_worker_shard_moves_and_result_equals_reference() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(3);
        let mut job = Job::new(trainer(6), "a".into(), lease, 2);
        let mut reference = trainer(6);
        let mut eng = CpuEngine::new(&reference.spec().model, 1);
        let w1 = job.register("one", t0);
        let w2 = job.register("two", t0);
        let mut now = t0;
        // step 0 normally; step 1: w2 dies holding its shard; step 2..: w1 alone, then w3 joins
        for step in 0..4u64 {
            reference.step_local(&mut eng).unwrap();
            let a1 = assign(&mut job, &w1, now);
            let s1 = compute(&job, &a1);
            if step == 0 {
                let a2 = assign(&mut job, &w2, now);
                let s2 = compute(&job, &a2);
                job.submit(&w1, s1, now).unwrap();
                job.submit(&w2, s2, now).unwrap();
                continue;
            }
            if step == 1 {
                let _ = assign(&mut job, &w2, now); // w2 takes its shard and dies
                job.submit(&w1, s1, now).unwrap();
                assert!(matches!(job.poll(&w1, now).unwrap(), Poll::Wait(_)));
                now += lease + Duration::from_millis(1);
                job.heartbeat(&w1, now - Duration::from_millis(2)).unwrap();
                assert_eq!(job.expire(now), vec!["two".to_string()]);
                let orphan = assign(&mut job, &w1, now);
                assert_eq!(orphan.first_slot, 3);
                let s = compute(&job, &orphan);
                assert!(matches!(
                    job.submit(&w1, s, now).unwrap(),
                    Submitted::Committed(_)
                ));
                // the dead worker's id is refused from now on
                assert!(matches!(job.poll(&w2, now), Err(Refusal::UnknownWorker(_))));
                continue;
            }
            job.submit(&w1, s1, now).unwrap();
        }
        assert!(job.is_finished());
        let diff = job
            .trainer()
            .params()
            .iter()
            .zip(reference.params())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= 1e-5, "max diff {diff}");
        assert!(matches!(job.poll(&w1, now).unwrap(), Poll::Finished(_)));
    }

    #[test]
    fn joiner_waits_for_the_next_step_and_refusals_fail_the_job() {
        let t0 = Instant::now();
        let mut job = Job::new(trainer(4), "a".into(), Duration::from_secs(3), 1);
        let w1 = job.register("one", t0);
        let a = assign(&mut job, &w1, t0);
        assert_eq!(a.data.slots.len(), 4);
        let w2 = job.register("two", t0);
        assert!(matches!(job.poll(&w2, t0).unwrap(), Poll::Wait(_)));
        let s = compute(&job, &a);
        job.submit(&w1, s, t0).unwrap();
        // next step is split over both
        assert_eq!(assign(&mut job, &w2, t0).data.slots.len(), 2);
        // unknown ids and wrong incarnations
        assert!(matches!(
            job.poll("w1-b", t0),
            Err(Refusal::UnknownWorker(_))
        ));
        assert!(matches!(
            job.poll("garbage", t0),
            Err(Refusal::UnknownWorker(_))
        ));
        // wrong gradient length is refused without effect
        let a1 = assign(&mut job, &w1, t0);
        let mut bad = compute(&job, &a1);
        bad.grad.pop();
        let e = job.submit(&w1, bad, t0).unwrap_err();
        assert!(
            matches!(&e, Refusal::Invalid(m) if m.contains("grad")),
            "{e}"
        );
        for _ in 0..3 {
            job.refuse(&w1, 1, a1.shard, "grad: NaN");
        }
        assert!(job.failure().unwrap().contains("refused 3 times"));
        assert!(matches!(job.poll(&w1, t0).unwrap(), Poll::Finished(m) if m.contains("failed")));
    }
}
