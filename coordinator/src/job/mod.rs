//! The job state machine: membership and leases, the shard plan of each step, deadlines, the
//! screening of results and second opinions, evictions, and step commit. No I/O and no clock of
//! its own (every call takes `now`), so it is unit-tested with a fake clock; the gRPC service only
//! decodes, hands over and reports. `README.md` beside this file tells the life of a step.
//!
//! Rules, in one place:
//! - A step is planned when the previous one commits (or when the first workers arrive): its `B`
//!   slots are cut into one contiguous shard per member that has polled and is not stuck past a
//!   deadline. A member that never polls gets no shards.
//! - A worker polling for work gets the shard planned for it, else a result that waits for a
//!   second opinion (never its own), else a shard nobody holds, else a duplicate of a shard whose
//!   holders are all past their deadline. The first valid result wins; later ones are stale.
//! - Faults are charged to the worker: a refused result (wrong sizes, values no LSTM produces) or
//!   a failure it reports counts against it, and after `max_refusals` it is evicted; so is a worker
//!   that misses `max_deadline_misses` deadlines, and one whose result disagrees with a second
//!   opinion. An evicted worker may register again only after a back-off that doubles each time.
//!   The job fails only when one shard is refused by several different workers.
//! - A result that is suspicious (a gradient far above the run's recent ones), one of the first
//!   results of a run, or one sampled by `verify_fraction` is held until another worker (or, when
//!   there is none, the coordinator itself) computes the same shard. The shard is done when two
//!   results agree (a third decides between two that differ; the coordinator's own is trusted),
//!   and every worker whose result disagrees with the agreed one is evicted.
//! - A step commits when every shard has an accepted result: gradients are summed in shard order,
//!   the update is computed and checked finite before anything is stored, and the final `(h, c)`
//!   of all slots are stored together, exactly once.

mod screen;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use model::state::SlotStates;
use model::trainer::{Committed, ShardData, StepPlan, Submission, Trainer};

use self::screen::Stats;

/// Member key of the coordinator itself when it gives a second opinion (workers start at 1).
const LOCAL: u64 = 0;
/// Longest eviction back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Evicted ids remembered, so that their next call hears why.
const EVICTED_MEMORY: usize = 1024;
/// Distinct worker names remembered for the shard-failure threshold.
const NAMES_MEMORY: usize = 4096;
/// Different workers that must fail one shard before the job fails.
const SHARD_FAILURE_WORKERS: usize = 3;

/// How long a worker has for a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadlinePolicy {
    /// Always this long.
    Fixed(Duration),
    /// Five times the median time per slot of accepted shards times the shard's slots, and never
    /// less than `floor`.
    Adaptive {
        /// The least time a shard gets.
        floor: Duration,
    },
}

/// The rules a job runs by.
#[derive(Debug, Clone)]
pub(crate) struct JobConfig {
    /// A worker silent this long is dead.
    pub lease: Duration,
    /// Workers to wait for before the first step.
    pub min_workers: usize,
    /// Most members at once; more registrations are refused.
    pub max_workers: usize,
    /// Refused results after which a worker is evicted.
    pub max_refusals: u32,
    /// Missed deadlines after which a worker is evicted.
    pub max_deadline_misses: u32,
    /// First eviction back-off of a worker name; doubles with each eviction.
    pub evict_backoff: Duration,
    /// Shard deadlines.
    pub deadline: DeadlinePolicy,
    /// Fraction of accepted results recomputed by another worker and compared.
    pub verify_fraction: f64,
    /// The first results of a run (this many) are all checked by a second worker: the gradient
    /// statistic that flags suspicious results needs them.
    pub verify_first: usize,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(3),
            min_workers: 1,
            max_workers: 256,
            max_refusals: 3,
            max_deadline_misses: 3,
            evict_backoff: Duration::from_secs(5),
            deadline: DeadlinePolicy::Adaptive {
                floor: Duration::from_secs(30),
            },
            verify_fraction: 0.0,
            verify_first: 3,
        }
    }
}

/// Who is calling: the worker id it sent and, under mutual TLS, a digest of its client
/// certificate (an id is bound to the certificate it registered with).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    /// The worker id.
    pub id: &'a str,
    /// Digest of the client certificate, when there is one.
    pub identity: Option<&'a [u8]>,
}

#[cfg(test)]
impl<'a> Caller<'a> {
    /// A caller without a client certificate.
    pub(crate) fn id(id: &'a str) -> Self {
        Self { id, identity: None }
    }
}

/// Why a request was refused. Each maps to a gRPC status in one place (`error.rs`). No message
/// names another worker's id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The worker id is not (or no longer) a member.
    #[error("unknown worker id; register again")]
    UnknownWorker,
    /// The worker was evicted.
    #[error("this worker was evicted: {0}; register again")]
    Evicted(String),
    /// A registration during the back-off after an eviction.
    #[error("this worker was evicted ({reason}); register again in {} ms", retry_after.as_millis())]
    Backoff {
        /// Why it was evicted.
        reason: String,
        /// How long to wait.
        retry_after: Duration,
    },
    /// The job has as many workers as it takes.
    #[error("{0}")]
    Full(String),
    /// The id was registered with another client certificate.
    #[error("this worker id belongs to another client certificate")]
    WrongIdentity,
    /// A result for a step that is already committed, or a duplicate.
    #[error("{0}")]
    Stale(String),
    /// A result for a step or shard not assigned to the sender.
    #[error("{0}")]
    NotAssigned(String),
    /// A result with wrong sizes, non-finite values or values no LSTM can produce.
    #[error("{0}")]
    Invalid(String),
}

/// What a polling worker gets.
#[derive(Debug, Clone)]
pub(crate) enum Poll {
    /// A shard to compute.
    Assign(Box<Assignment>),
    /// Nothing yet; poll again.
    Wait(String),
    /// The job is over (successfully or not).
    Finished(String),
}

/// A shard of a step, handed to a worker.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    /// The step.
    pub plan: StepPlan,
    /// Shard index within the step.
    pub shard: u32,
    /// First global slot of the shard.
    pub first_slot: usize,
    /// Data and initial states.
    pub data: ShardData,
    /// Hand the result in within this time.
    pub deadline: Duration,
}

/// Sizes a submission for `(step, shard)` must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    /// Gradient length.
    pub grad: usize,
    /// Shape of `h` and `c`: `[layers, slots, hidden]`.
    pub state: [usize; 3],
}

/// Who computed one shard of a committed step, and how its time went.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShardReport {
    /// Its slots.
    pub(crate) range: Range<usize>,
    /// The worker's name.
    pub(crate) worker: String,
    /// Milliseconds the worker computed (as it reports).
    pub(crate) compute_ms: f64,
    /// Milliseconds from taking the shard to handing it in, less the compute: transfers,
    /// encoding and queueing.
    pub(crate) transfer_ms: f64,
    /// Milliseconds from planning the step until the worker took the shard.
    pub(crate) wait_ms: f64,
}

/// A committed step, for the step log and metrics.
#[derive(Debug, Clone)]
pub(crate) struct CommitReport {
    /// The trainer's view of the commit.
    pub committed: Committed,
    /// Who computed each shard, and how its time went.
    pub shards: Vec<ShardReport>,
    /// Live workers at commit time.
    pub workers: usize,
    /// Wall time from planning to commit.
    pub wall: Duration,
    /// Longest worker compute time among the shards.
    pub compute_ms: f64,
}

/// The outcome of an accepted submission.
#[derive(Debug, Clone)]
pub(crate) enum Submitted {
    /// Stored; other shards of the step are still out.
    Accepted,
    /// Held until another worker computes the same shard; why.
    Held(String),
    /// The step committed.
    Committed(Box<CommitReport>),
}

/// Something worth telling the operator, drained by the service with [`Job::take_notices`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Notice {
    /// A worker is no longer a member.
    Left {
        /// Its (former) id, to drop what is kept for it; never logged.
        id: String,
        /// Its name.
        name: String,
        /// Lease expired, left, or evicted and why.
        reason: String,
        /// Whether it was evicted (a fault), rather than gone.
        evicted: bool,
    },
    /// A result or a reported failure was refused and counted against its worker.
    Refused {
        /// The worker.
        name: String,
        /// The step.
        step: u64,
        /// The shard.
        shard: u32,
        /// Why.
        why: String,
    },
    /// A shard passed its deadline on a worker; other workers may now take it too.
    DeadlinePassed {
        /// The late worker.
        name: String,
        /// The step.
        step: u64,
        /// The shard.
        shard: u32,
        /// The deadline it had.
        deadline: Duration,
    },
    /// A result is held for a second opinion.
    Held {
        /// Its worker.
        name: String,
        /// The step.
        step: u64,
        /// The shard.
        shard: u32,
        /// Why.
        why: String,
    },
    /// A second opinion came in.
    Checked {
        /// The step.
        step: u64,
        /// The shard.
        shard: u32,
        /// Whose result was checked.
        first: String,
        /// Who checked it.
        second: String,
        /// `None` when they agree, else where they differ.
        disagreement: Option<String>,
    },
}

/// A second opinion the coordinator computes itself (no other worker can give it).
#[derive(Debug, Clone)]
pub(crate) struct LocalCheck {
    /// The step.
    pub step: u64,
    /// The shard.
    pub shard: u32,
    /// Parameters of the step.
    pub params: Vec<f32>,
    /// The shard's data.
    pub data: ShardData,
}

#[derive(Debug, Clone, Copy)]
struct Busy {
    step: u64,
    shard: u32,
    since: Instant,
    due: Instant,
    /// Deadline periods already counted as misses.
    missed: u32,
}

#[derive(Debug)]
struct Member {
    id: String,
    name: String,
    identity: Option<Vec<u8>>,
    lease_until: Instant,
    polled: bool,
    refusals: u32,
    misses: u32,
    busy: Option<Busy>,
}

#[derive(Debug)]
struct Held {
    by: u64,
    name: String,
    sub: Submission,
    /// From taking the shard to handing in the result.
    took: Option<Duration>,
    /// From planning the step to taking the shard.
    waited: Option<Duration>,
}

#[derive(Debug)]
enum Phase {
    Open,
    /// Results from different workers that do not agree yet; the shard is done when a new one
    /// agrees with one of them (or the coordinator computes it itself).
    Checking {
        opinions: Vec<Held>,
    },
    Done(Box<Held>),
}

impl Phase {
    /// Whether `key` has handed in a result the phase holds.
    fn has_opinion_of(&self, key: u64) -> bool {
        match self {
            Phase::Checking { opinions } => opinions.iter().any(|o| o.by == key),
            _ => false,
        }
    }
}

#[derive(Debug)]
struct ShardSlot {
    range: Range<usize>,
    planned_for: Option<u64>,
    holders: Vec<u64>,
    phase: Phase,
    refused_by: BTreeSet<String>,
}

#[derive(Debug)]
struct Running {
    plan: StepPlan,
    shards: Vec<ShardSlot>,
    started: Instant,
}

#[derive(Debug, Clone)]
struct Backoff {
    until: Instant,
    next: Duration,
    reason: String,
}

/// The job.
#[derive(Debug)]
pub(crate) struct Job {
    trainer: Trainer,
    cfg: JobConfig,
    started: bool,
    members: BTreeMap<u64, Member>,
    ids: HashMap<String, u64>,
    next_key: u64,
    running: Option<Running>,
    failed: Option<String>,
    backoff: HashMap<String, Backoff>,
    evicted: VecDeque<(String, String)>,
    names_seen: BTreeSet<String>,
    stats: Stats,
    /// Results still to be checked as one of the first of the run.
    warmup_left: usize,
    notices: Vec<Notice>,
}

impl Job {
    /// A job over `trainer` run by `cfg`.
    pub(crate) fn new(trainer: Trainer, cfg: JobConfig) -> Self {
        let warmup_left = cfg.verify_first;
        Self {
            trainer,
            cfg: JobConfig {
                min_workers: cfg.min_workers.max(1),
                max_workers: cfg.max_workers.max(1),
                max_refusals: cfg.max_refusals.max(1),
                max_deadline_misses: cfg.max_deadline_misses.max(1),
                ..cfg
            },
            started: false,
            members: BTreeMap::new(),
            ids: HashMap::new(),
            next_key: LOCAL + 1,
            running: None,
            failed: None,
            backoff: HashMap::new(),
            evicted: VecDeque::new(),
            names_seen: BTreeSet::new(),
            stats: Stats::default(),
            warmup_left,
            notices: Vec::new(),
        }
    }

    /// The trainer (parameters, cursor, states).
    pub(crate) fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Live workers.
    pub(crate) fn live_workers(&self) -> usize {
        self.members.len()
    }

    /// Why the job failed, if it did.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Whether no more work will be handed out.
    pub(crate) fn is_finished(&self) -> bool {
        self.failed.is_some() || self.trainer.is_done()
    }

    /// What happened since the last call.
    pub(crate) fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Adds a worker; returns its secret id. Refused while the name is in an eviction back-off
    /// or when the job has `max_workers` members.
    pub(crate) fn register(
        &mut self,
        name: &str,
        identity: Option<&[u8]>,
        now: Instant,
    ) -> Result<String, Refusal> {
        if let Some(b) = self.backoff.get(name)
            && b.until > now
        {
            return Err(Refusal::Backoff {
                reason: b.reason.clone(),
                retry_after: b.until - now,
            });
        }
        if self.members.len() >= self.cfg.max_workers {
            return Err(Refusal::Full(format!(
                "the job has its maximum of {} workers (--max-workers)",
                self.cfg.max_workers
            )));
        }
        let key = self.next_key;
        self.next_key += 1;
        let id = proto::security::random_id();
        self.members.insert(
            key,
            Member {
                id: id.clone(),
                name: name.to_string(),
                identity: identity.map(<[u8]>::to_vec),
                lease_until: now + self.cfg.lease,
                polled: false,
                refusals: 0,
                misses: 0,
                busy: None,
            },
        );
        self.ids.insert(id.clone(), key);
        if self.names_seen.len() < NAMES_MEMORY {
            self.names_seen.insert(name.to_string());
        }
        Ok(id)
    }

    fn auth(&self, who: &Caller<'_>) -> Result<u64, Refusal> {
        let Some(&key) = self.ids.get(who.id) else {
            return Err(match self.evicted.iter().find(|(id, _)| id == who.id) {
                Some((_, reason)) => Refusal::Evicted(reason.clone()),
                None => Refusal::UnknownWorker,
            });
        };
        let m = &self.members[&key];
        if m.identity.is_some() && m.identity.as_deref() != who.identity {
            return Err(Refusal::WrongIdentity);
        }
        Ok(key)
    }

    fn name(&self, key: u64) -> String {
        if key == LOCAL {
            return "coordinator".into();
        }
        self.members
            .get(&key)
            .map_or_else(|| "a departed worker".into(), |m| m.name.clone())
    }

    /// Renews a worker's lease.
    pub(crate) fn heartbeat(&mut self, who: &Caller<'_>, now: Instant) -> Result<(), Refusal> {
        let key = self.auth(who)?;
        let lease = self.cfg.lease;
        if let Some(m) = self.members.get_mut(&key) {
            m.lease_until = now + lease;
        }
        Ok(())
    }

    /// Removes a worker at once; its unfinished shards go to others. Returns its name.
    pub(crate) fn leave(&mut self, who: &Caller<'_>) -> Result<String, Refusal> {
        let key = self.auth(who)?;
        Ok(self.remove(key).1)
    }

    /// Checks that the caller is a member.
    pub(crate) fn check_member(&self, who: &Caller<'_>) -> Result<(), Refusal> {
        self.auth(who).map(|_| ())
    }

    fn remove(&mut self, key: u64) -> (String, String) {
        let Some(m) = self.members.remove(&key) else {
            return Default::default();
        };
        self.ids.remove(&m.id);
        if let Some(run) = &mut self.running {
            for s in &mut run.shards {
                s.holders.retain(|&h| h != key);
                if s.planned_for == Some(key) {
                    s.planned_for = None;
                }
            }
        }
        (m.id, m.name)
    }

    fn evict(&mut self, key: u64, reason: String, now: Instant) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let (id, name) = (m.id.clone(), m.name.clone());
        self.remove(key);
        let base = self.cfg.evict_backoff;
        if self.backoff.len() >= NAMES_MEMORY {
            // forget back-offs that are over (their doubling starts afresh)
            self.backoff.retain(|_, b| b.until > now);
        }
        let b = self.backoff.entry(name.clone()).or_insert(Backoff {
            until: now,
            next: base,
            reason: String::new(),
        });
        b.until = now + b.next;
        b.next = (b.next * 2).min(MAX_BACKOFF);
        b.reason.clone_from(&reason);
        if self.evicted.len() == EVICTED_MEMORY {
            self.evicted.pop_front();
        }
        self.evicted.push_back((id.clone(), reason.clone()));
        self.notices.push(Notice::Left {
            id,
            name,
            reason: format!("evicted: {reason}"),
            evicted: true,
        });
    }

    /// Advances time: removes workers whose lease ran out, counts missed deadlines (evicting
    /// workers that missed too many), and plans the next step. Returns whether anything changed
    /// that waiting workers should hear about.
    pub(crate) fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let dead: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.lease_until < now)
            .map(|(&k, _)| k)
            .collect();
        for key in dead {
            let (id, name) = self.remove(key);
            self.notices.push(Notice::Left {
                id,
                name,
                reason: "lease expired".into(),
                evicted: false,
            });
            changed = true;
        }
        let mut evict = Vec::new();
        for (&key, m) in &mut self.members {
            let Some(b) = &mut m.busy else { continue };
            if now <= b.due {
                continue;
            }
            let period = b
                .due
                .saturating_duration_since(b.since)
                .max(Duration::from_millis(1));
            let periods = 1 + (now.duration_since(b.due).as_nanos() / period.as_nanos()) as u32;
            if periods > b.missed {
                if b.missed == 0 {
                    self.notices.push(Notice::DeadlinePassed {
                        name: m.name.clone(),
                        step: b.step,
                        shard: b.shard,
                        deadline: period,
                    });
                }
                m.misses += periods - b.missed;
                b.missed = periods;
                changed = true;
                if m.misses >= self.cfg.max_deadline_misses {
                    evict.push((key, m.misses));
                }
            }
        }
        for (key, n) in evict {
            self.evict(key, format!("it missed its shard deadline {n} times"), now);
        }
        if self.running.is_none() && !self.is_finished() {
            self.plan_next(now);
            changed |= self.running.is_some();
        }
        changed
    }

    fn overdue(m: &Member, now: Instant) -> bool {
        m.busy.is_some_and(|b| now > b.due)
    }

    fn deadline_for(&self, slots: usize) -> Duration {
        match self.cfg.deadline {
            DeadlinePolicy::Fixed(d) => d,
            DeadlinePolicy::Adaptive { floor } => self.stats.ms_per_slot().map_or(floor, |ms| {
                floor.max(Duration::from_secs_f64(5.0 * ms * slots as f64 / 1e3))
            }),
        }
    }

    fn plan_next(&mut self, now: Instant) {
        if self.running.is_some() || self.is_finished() {
            return;
        }
        let ready: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.polled && !Self::overdue(m, now))
            .map(|(&k, _)| k)
            .collect();
        if ready.is_empty() || (!self.started && ready.len() < self.cfg.min_workers) {
            return;
        }
        let Some(plan) = self.trainer.plan() else {
            return;
        };
        self.started = true;
        let b = self.trainer.spec().batch_size;
        let k = ready.len().min(b);
        let shards = (0..k)
            .map(|i| ShardSlot {
                range: i * b / k..(i + 1) * b / k,
                planned_for: Some(ready[i]),
                holders: Vec::new(),
                phase: Phase::Open,
                refused_by: BTreeSet::new(),
            })
            .collect();
        self.running = Some(Running {
            plan,
            shards,
            started: now,
        });
    }

    /// Whether `key` may take shard `i` now, and how much it is preferred (lower first).
    fn offer(&self, run: &Running, i: usize, key: u64, now: Instant) -> Option<u8> {
        let s = &run.shards[i];
        if s.holders.contains(&key) {
            return None;
        }
        let all_overdue = !s.holders.is_empty()
            && s.holders.iter().all(|h| {
                self.members.get(h).is_some_and(|m| {
                    m.busy
                        .is_some_and(|b| b.step == run.plan.cursor.global && now > b.due)
                })
            });
        match &s.phase {
            Phase::Done(_) => None,
            Phase::Checking { .. } => {
                (!s.phase.has_opinion_of(key) && (s.holders.is_empty() || all_overdue)).then_some(1)
            }
            Phase::Open => {
                if s.planned_for == Some(key) {
                    Some(0)
                } else if s.holders.is_empty() && s.planned_for.is_none() {
                    Some(if s.refused_by.contains(&self.members[&key].name) {
                        3
                    } else {
                        2
                    })
                } else if all_overdue {
                    Some(4)
                } else {
                    None
                }
            }
        }
    }

    /// The next assignment for a worker, or why there is none.
    pub(crate) fn poll(&mut self, who: &Caller<'_>, now: Instant) -> Result<Poll, Refusal> {
        let key = self.auth(who)?;
        let lease = self.cfg.lease;
        let m = self.members.get_mut(&key).expect("authenticated");
        m.lease_until = now + lease;
        m.polled = true;
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
        let Some(run) = &self.running else {
            let ready = self.members.values().filter(|m| m.polled).count();
            return Ok(Poll::Wait(format!(
                "waiting for workers: {ready} of {} ready",
                self.cfg.min_workers
            )));
        };
        let step = run.plan.cursor.global;
        // a shard it already holds (its reply was lost): the same one again
        let mine = self.members[&key].busy.and_then(|b| {
            (b.step == step
                && run.shards.get(b.shard as usize).is_some_and(|s| {
                    s.holders.contains(&key) && !matches!(s.phase, Phase::Done(_))
                }))
            .then_some(b.shard as usize)
        });
        if mine.is_none() {
            // polling without a result: whatever it held before is abandoned
            self.members.get_mut(&key).expect("authenticated").busy = None;
        }
        let run = self.running.as_ref().expect("planned");
        let pick = mine.or_else(|| {
            (0..run.shards.len())
                .filter_map(|i| self.offer(run, i, key, now).map(|rank| (rank, i)))
                .min()
                .map(|(_, i)| i)
        });
        let Some(i) = pick else {
            return Ok(Poll::Wait(format!(
                "step {step} is in progress on other workers"
            )));
        };
        let range = run.shards[i].range.clone();
        let plan = run.plan;
        let deadline = self.deadline_for(range.len());
        let run = self.running.as_mut().expect("running");
        let s = &mut run.shards[i];
        if !s.holders.contains(&key) {
            s.holders.push(key);
        }
        if s.planned_for == Some(key) {
            s.planned_for = None;
        }
        let m = self.members.get_mut(&key).expect("authenticated");
        let since = match m.busy {
            Some(b) if b.step == step && b.shard == i as u32 => b.since,
            _ => now,
        };
        m.busy = Some(Busy {
            step,
            shard: i as u32,
            since,
            due: since + deadline,
            missed: 0,
        });
        Ok(Poll::Assign(Box::new(Assignment {
            plan,
            shard: i as u32,
            first_slot: range.start,
            data: self.trainer.shard(&plan, range),
            deadline,
        })))
    }

    /// Checks that the caller may hand in `(step, shard)` and returns the sizes the result must
    /// have.
    pub(crate) fn admit(
        &self,
        who: &Caller<'_>,
        step: u64,
        shard: u32,
    ) -> Result<Admission, Refusal> {
        let key = self.auth(who)?;
        self.admit_key(key, step, shard)
    }

    fn admit_key(&self, key: u64, step: u64, shard: u32) -> Result<Admission, Refusal> {
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
        match &s.phase {
            Phase::Done(_) => {
                return Err(Refusal::Stale(format!(
                    "shard {shard} of step {step} was already submitted"
                )));
            }
            Phase::Checking { .. } if s.phase.has_opinion_of(key) => {
                return Err(Refusal::Stale(format!(
                    "shard {shard} of step {step} was already submitted; it awaits a second opinion"
                )));
            }
            _ => {}
        }
        if !s.holders.contains(&key) {
            return Err(Refusal::NotAssigned(format!(
                "shard {shard} of step {step} is not assigned to this worker"
            )));
        }
        let m = &self.trainer.spec().model;
        Ok(Admission {
            grad: self.trainer.layout().len(),
            state: [m.layers, s.range.len(), m.hidden],
        })
    }

    /// Records that a result for `(step, shard)` could not be used (it did not decode) or that the
    /// worker reported it could not compute it. Counts against the worker (evicted after
    /// `max_refusals`); the shard goes to another worker. The job fails when one shard has been
    /// refused by several different workers.
    pub(crate) fn refuse(
        &mut self,
        who: &Caller<'_>,
        step: u64,
        shard: u32,
        why: &str,
        now: Instant,
    ) {
        let Ok(key) = self.auth(who) else { return };
        self.refuse_key(key, step, shard, why, now);
    }

    fn refuse_key(&mut self, key: u64, step: u64, shard: u32, why: &str, now: Instant) {
        let name = self.name(key);
        if let Some(m) = self.members.get_mut(&key) {
            if m.busy.is_some_and(|b| b.step == step && b.shard == shard) {
                m.busy = None;
            }
            m.refusals += 1;
        }
        self.notices.push(Notice::Refused {
            name: name.clone(),
            step,
            shard,
            why: why.to_string(),
        });
        let threshold = SHARD_FAILURE_WORKERS.min(self.names_seen.len()).max(2);
        let mut failure = None;
        if let Some(run) = &mut self.running
            && run.plan.cursor.global == step
            && let Some(s) = run.shards.get_mut(shard as usize)
        {
            s.holders.retain(|&h| h != key);
            if s.planned_for == Some(key) {
                s.planned_for = None;
            }
            s.refused_by.insert(name);
            if s.refused_by.len() >= threshold {
                let seqs: Vec<String> = s
                    .range
                    .clone()
                    .map(|slot| self.trainer.slot_label(&run.plan, slot))
                    .collect();
                failure = Some(format!(
                    "shard {shard} of step {step} (slots {}..{}, {}) failed on {} different workers ({}); the data there is the likely cause; last error: {why}",
                    s.range.start,
                    s.range.end,
                    seqs.join(", "),
                    s.refused_by.len(),
                    s.refused_by.iter().cloned().collect::<Vec<_>>().join(", "),
                ));
            }
        }
        if failure.is_some() {
            self.failed = failure;
            return;
        }
        if let Some(m) = self.members.get(&key)
            && m.refusals >= self.cfg.max_refusals
        {
            let n = m.refusals;
            self.evict(
                key,
                format!("{n} of its results were refused; the last: {why}"),
                now,
            );
        }
    }

    /// The states shard `range` of the running step started from.
    fn initial_states(&self, plan: &StepPlan, range: Range<usize>) -> SlotStates {
        let data = self.trainer.shard(plan, range);
        data.initial_states(&self.trainer.spec().model, self.trainer.params())
            .unwrap_or(data.init)
    }

    /// Hands in a decoded result. It is checked for sizes and for bounds no LSTM can break
    /// (refused and counted against the worker otherwise), then screened: a suspicious result is
    /// held for a second opinion; otherwise it is accepted, and the step commits when it was the
    /// last one out.
    pub(crate) fn submit(
        &mut self,
        who: &Caller<'_>,
        sub: Submission,
        now: Instant,
    ) -> Result<Submitted, Refusal> {
        let key = self.auth(who)?;
        let adm = self.admit_key(key, sub.step, sub.shard)?;
        if let Err(why) = self.check_sizes_and_bounds(&adm, &sub) {
            self.refuse_key(key, sub.step, sub.shard, &why, now);
            return Err(Refusal::Invalid(why));
        }
        let lease = self.cfg.lease;
        let m = self.members.get_mut(&key).expect("authenticated");
        m.lease_until = now + lease;
        let planned = self.running.as_ref().map(|r| r.started);
        let m = self.members.get_mut(&key).expect("authenticated");
        let (took, waited) = match m.busy {
            Some(b) if b.step == sub.step && b.shard == sub.shard => {
                m.busy = None;
                (
                    Some(now.saturating_duration_since(b.since)),
                    planned.map(|p| b.since.saturating_duration_since(p)),
                )
            }
            _ => (None, None),
        };
        let held = Held {
            by: key,
            name: m.name.clone(),
            sub,
            took,
            waited,
        };
        Ok(self.accept(held, now))
    }

    fn check_sizes_and_bounds(&self, adm: &Admission, sub: &Submission) -> Result<(), String> {
        if sub.grad.len() != adm.grad {
            return Err(format!(
                "grad: expected {} values, got {}",
                adm.grad,
                sub.grad.len()
            ));
        }
        let got = [sub.finals.layers(), sub.finals.slots(), sub.finals.hidden()];
        if got != adm.state {
            return Err(format!(
                "final state: expected shape {:?}, got {:?}",
                adm.state, got
            ));
        }
        let run = self.running.as_ref().expect("admitted");
        let range = run.shards[sub.shard as usize].range.clone();
        let init = self.initial_states(&run.plan, range);
        screen::check_bounds(sub, &init, self.trainer.timesteps())
    }

    /// Why `sub` needs a second opinion before it can count, if it does.
    fn suspicion(&mut self, sub: &Submission) -> Option<String> {
        if self.warmup_left > 0 {
            self.warmup_left -= 1;
            return Some("one of the first results of the run, which are all checked".into());
        }
        if let Some(why) = self.stats.suspicion(screen::norm_per_slot(sub)) {
            return Some(why);
        }
        let p = self.cfg.verify_fraction;
        if p > 0.0 {
            let h = model::rng::hash_words(&[
                self.trainer.spec().seed,
                0x7665_7269_6679, // "verify"
                sub.step,
                u64::from(sub.shard),
            ]);
            if ((h >> 11) as f64) / ((1u64 << 53) as f64) < p {
                return Some("sampled for verification (--verify-fraction)".into());
            }
        }
        None
    }

    fn accept(&mut self, held: Held, now: Instant) -> Submitted {
        let (step, shard) = (held.sub.step, held.sub.shard as usize);
        let run = self.running.as_mut().expect("admitted");
        let s = &mut run.shards[shard];
        s.holders.retain(|&h| h != held.by);
        let phase = std::mem::replace(&mut s.phase, Phase::Open);
        let mut opinions = match phase {
            Phase::Checking { opinions } => opinions,
            Phase::Open => Vec::new(),
            Phase::Done(done) => {
                // admission refuses results for finished shards; keep the first one
                self.set_phase(shard, Phase::Done(done));
                return Submitted::Accepted;
            }
        };
        if opinions.is_empty() {
            // the coordinator's own computation needs no second opinion
            let suspicion = if held.by == LOCAL {
                None
            } else {
                self.suspicion(&held.sub)
            };
            let Some(why) = suspicion else {
                self.set_phase(shard, Phase::Done(Box::new(held)));
                return self.maybe_commit(now);
            };
            self.notices.push(Notice::Held {
                name: held.name.clone(),
                step,
                shard: shard as u32,
                why: why.clone(),
            });
            self.set_phase(
                shard,
                Phase::Checking {
                    opinions: vec![held],
                },
            );
            return Submitted::Held(why);
        }
        // a further opinion: the shard is done when it agrees with one already in, and every
        // result that disagrees with the agreed one is corrupt (the coordinator's own is trusted)
        let differences: Vec<Option<String>> = opinions
            .iter()
            .map(|o| screen::agree(&o.sub, &held.sub).err())
            .collect();
        for (o, d) in opinions.iter().zip(&differences) {
            self.notices.push(Notice::Checked {
                step,
                shard: shard as u32,
                first: o.name.clone(),
                second: held.name.clone(),
                disagreement: d.clone(),
            });
        }
        let agreed = differences.iter().position(Option::is_none);
        let winner = match agreed {
            Some(i) => opinions.swap_remove(i),
            None if held.by == LOCAL => held,
            None => {
                opinions.push(held);
                self.set_phase(shard, Phase::Checking { opinions });
                return Submitted::Held(
                    "the results of two workers disagree; a third opinion decides".into(),
                );
            }
        };
        for o in &opinions {
            if o.by != LOCAL && screen::agree(&o.sub, &winner.sub).is_err() {
                self.evict(
                    o.by,
                    format!(
                        "its result for shard {shard} of step {step} disagreed with a second opinion"
                    ),
                    now,
                );
            }
        }
        self.set_phase(shard, Phase::Done(Box::new(winner)));
        self.maybe_commit(now)
    }

    fn set_phase(&mut self, shard: usize, phase: Phase) {
        if let Some(run) = &mut self.running {
            run.shards[shard].phase = phase;
        }
    }

    /// Second opinions that no worker can give (no live worker other than the one whose result
    /// is held): the coordinator computes them, and hands each in with [`Job::submit_local`].
    pub(crate) fn local_checks(&mut self, now: Instant) -> Vec<LocalCheck> {
        let Some(run) = &self.running else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for (i, s) in run.shards.iter().enumerate() {
            if !matches!(s.phase, Phase::Checking { .. }) || !s.holders.is_empty() {
                continue;
            }
            let other = self
                .members
                .iter()
                .any(|(&k, m)| !s.phase.has_opinion_of(k) && m.polled && !Self::overdue(m, now));
            if !other {
                due.push(i);
            }
        }
        let plan = run.plan;
        let mut out = Vec::with_capacity(due.len());
        for i in due {
            let run = self.running.as_mut().expect("running");
            run.shards[i].holders.push(LOCAL);
            let range = run.shards[i].range.clone();
            out.push(LocalCheck {
                step: plan.cursor.global,
                shard: i as u32,
                params: self.trainer.params().to_vec(),
                data: self.trainer.shard(&plan, range),
            });
        }
        out
    }

    /// Hands in a second opinion the coordinator computed (see [`Job::local_checks`]).
    pub(crate) fn submit_local(
        &mut self,
        sub: Submission,
        now: Instant,
    ) -> Result<Submitted, Refusal> {
        self.admit_key(LOCAL, sub.step, sub.shard)?;
        let held = Held {
            by: LOCAL,
            name: "coordinator".into(),
            sub,
            took: None,
            waited: None,
        };
        Ok(self.accept(held, now))
    }

    /// A second opinion the coordinator could not compute: the shard is offered to workers again.
    pub(crate) fn local_check_failed(&mut self, step: u64, shard: u32) {
        if let Some(run) = &mut self.running
            && run.plan.cursor.global == step
            && let Some(s) = run.shards.get_mut(shard as usize)
        {
            s.holders.retain(|&h| h != LOCAL);
        }
    }

    fn maybe_commit(&mut self, now: Instant) -> Submitted {
        let Some(run) = &self.running else {
            return Submitted::Accepted;
        };
        if !run.shards.iter().all(|s| matches!(s.phase, Phase::Done(_))) {
            return Submitted::Accepted;
        }
        let run = self.running.take().expect("running");
        let mut grad = vec![0.0f32; self.trainer.layout().len()];
        let mut loss = 0.0;
        let mut compute_ms = 0.0f64;
        let mut finals = Vec::with_capacity(run.shards.len());
        let mut shards = Vec::with_capacity(run.shards.len());
        let mut record = Vec::with_capacity(run.shards.len());
        for s in &run.shards {
            let Phase::Done(h) = &s.phase else {
                unreachable!("all shards are done")
            };
            for (g, v) in grad.iter_mut().zip(&h.sub.grad) {
                *g += v;
            }
            loss += h.sub.loss_sum;
            compute_ms = compute_ms.max(h.sub.compute_ms);
            finals.push((s.range.clone(), &h.sub.finals));
            let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
            shards.push(ShardReport {
                range: s.range.clone(),
                worker: h.name.clone(),
                compute_ms: h.sub.compute_ms,
                transfer_ms: (ms(h.took) - h.sub.compute_ms).max(0.0),
                wait_ms: ms(h.waited),
            });
            record.push((
                screen::norm_per_slot(&h.sub),
                h.took
                    .map(|t| t.as_secs_f64() * 1e3 / s.range.len().max(1) as f64),
            ));
        }
        let committed = match self.trainer.commit(&run.plan, &grad, loss, &finals) {
            Ok(c) => c,
            Err(e) => {
                self.failed = Some(format!(
                    "step {} was not committed: {e}; nothing of it was stored, and the last checkpoint is intact",
                    run.plan.cursor.global
                ));
                return Submitted::Accepted;
            }
        };
        for (norm, ms) in record {
            self.stats.record(norm, ms);
        }
        let report = CommitReport {
            committed,
            shards,
            workers: self.members.len(),
            wall: now.saturating_duration_since(run.started),
            compute_ms,
        };
        self.plan_next(now);
        Submitted::Committed(Box::new(report))
    }
}
