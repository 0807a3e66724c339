//! The job state machine: membership and leases, views (the workers that compute together and
//! their slots), the work handed out ahead of the commits, the screening of what members report
//! and second opinions, evictions, and step commit. No I/O and no clock of its own (every call
//! takes `now`), so it is unit-tested with a fake clock and a simulated cluster; the gRPC service
//! only decodes, hands over and reports. `README.md` beside this file tells the life of a step.
//!
//! Rules, in one place:
//! - A view is formed from the members that follow (have an open directive stream) and are not
//!   stuck, once there are `min_workers` of them: each gets one contiguous range of the `B` slots,
//!   and the view starts at the next step to commit. A member that never follows gets no slots.
//! - Work is handed out up to `depth` steps past the last committed one. A member computes from
//!   its replica of the parameters and the states its previous step ended with, sums gradients
//!   with the other members, applies the update to its replica and reports.
//! - A step commits when every member's `Computed` record for it passed screening and every
//!   chunk of the summed gradient is in: the update is applied to the coordinator's copy (checked
//!   finite before anything is stored), the final `(h, c)` of all slots are stored together,
//!   exactly once, and every member's digest must equal the committed parameters' digest.
//! - Faults are charged to the member: a refused record (wrong sizes, values no LSTM produces),
//!   a failure it reports, or a peer's report that it sent something unusable counts against it,
//!   and after `max_refusals` it is evicted; so is a member that misses `max_deadline_misses`
//!   deadlines, one whose result disagrees with a second opinion, and one whose replica's digest
//!   differs from the committed parameters. An evicted worker may register again only after a
//!   back-off that doubles each time. The job fails only when one step fails on several
//!   different workers.
//! - A result that is suspicious (a gradient far above the run's recent ones), one of the first
//!   results of a run, or one sampled by `verify_fraction` waits until the coordinator computes
//!   the same shard itself and the member uploads its gradient; they must agree.
//! - Any fault, and any member that stops following, ends the view: the next one starts from the
//!   last committed step, and what members computed past it is discarded. A member that joins, or
//!   becomes ready again, waits until the view's handed-out steps are committed (a drain), so a
//!   join costs no recomputation.

mod screen;
mod step;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use model::replica::View;
use model::trainer::{Committed, ShardData, Trainer};

use self::screen::Stats;
use self::step::ViewState;

/// Longest eviction back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Evicted ids remembered, so that their next call hears why.
const EVICTED_MEMORY: usize = 1024;
/// Distinct worker names remembered for the step-failure threshold.
const NAMES_MEMORY: usize = 4096;
/// Different workers that must fail one step before the job fails.
const STEP_FAILURE_WORKERS: usize = 3;

/// How long a member has to compute a step.
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
    /// Step deadlines.
    pub deadline: DeadlinePolicy,
    /// Fraction of accepted results recomputed by the coordinator and compared.
    pub verify_fraction: f64,
    /// The first results of a run (this many) are all checked: the gradient statistic that flags
    /// suspicious results needs them.
    pub verify_first: usize,
    /// Steps of work handed out past the last committed one.
    pub depth: usize,
    /// Largest message, which bounds the chunks of the gradient sum.
    pub max_message_bytes: usize,
    /// Benchmark aid: members sleep this many milliseconds per slot instead of computing.
    pub simulate_ms_per_slot: f64,
    /// Steps between checkpoints (and at the end).
    pub checkpoint_every: u64,
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
            depth: 16,
            max_message_bytes: 64 << 20,
            simulate_ms_per_slot: 0.0,
            checkpoint_every: 50,
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
    /// A report for a view that is over, a step that is already committed, or a duplicate.
    #[error("{0}")]
    Stale(String),
    /// A report for a step or shard not given to the sender.
    #[error("{0}")]
    NotAssigned(String),
    /// A report with wrong sizes, non-finite values or values no LSTM can produce, or a
    /// registration that cannot take part.
    #[error("{0}")]
    Invalid(String),
}

/// The work of one step for one member, to be encoded by the service.
#[derive(Debug, Clone)]
pub(crate) struct WorkOut {
    /// The view.
    pub view: u64,
    /// The step.
    pub plan: model::trainer::StepPlan,
    /// The member's index.
    pub member: u32,
    /// First global slot of its shard.
    pub first_slot: usize,
    /// The shard's data.
    pub data: ShardData,
    /// Report the step computed within this time of starting it.
    pub deadline: Duration,
    /// The step's learning rate.
    pub lr: f64,
    /// The step's valid outputs.
    pub outputs: usize,
}

/// What a member is to be told, in order.
#[derive(Debug, Clone)]
pub(crate) enum Directive {
    /// Start computing in this view.
    View(Box<View>),
    /// One step's work.
    Work(Box<WorkOut>),
    /// Upload the gradient of this step.
    Upload(u64),
    /// The job is over.
    Finished(String),
    /// Not in a view yet; why.
    Wait(String),
}

/// Sizes a report's records must have, and for which view.
pub(crate) use proto::step::Expect;

/// Who computed one shard of a committed step, and how its time went.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShardReport {
    /// Its slots.
    pub(crate) range: Range<usize>,
    /// The worker's name.
    pub(crate) worker: String,
    /// Milliseconds the worker computed (as it reports).
    pub(crate) compute_ms: f64,
    /// Milliseconds of the member's own part of the gradient sum and update: sending, summing,
    /// applying (its reduce time less its waiting, plus its update time).
    pub(crate) transfer_ms: f64,
    /// Milliseconds it waited for the other members' chunks.
    pub(crate) wait_ms: f64,
}

/// Where a committed step's time went, beyond each shard's own figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Breakdown {
    /// Longest gradient sum among the members (from the end of its compute to the summed
    /// gradient).
    pub reduce_ms: f64,
    /// Longest time a member waited for others' chunks within it.
    pub wait_ms: f64,
    /// Longest update of a replica.
    pub update_ms: f64,
    /// Coordinator CPU time spent on the step: decoding its records, screening, committing
    /// ([`runtime::clock::Stopwatch`]: time waiting for a core is not counted).
    pub coordinator_ms: f64,
    /// From the step's last record arriving to its commit (second opinions, earlier steps).
    pub commit_lag_ms: f64,
    /// Most peer bytes one member sent and received for the step.
    pub peer_bytes: u64,
    /// Bytes the coordinator received and sent for the step.
    pub coordinator_bytes: u64,
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
    /// Wall time from handing the step out to its commit.
    pub wall: Duration,
    /// Longest worker compute time among the shards.
    pub compute_ms: f64,
    /// The rest of the step's time.
    pub breakdown: Breakdown,
    /// When it committed: throughput is sequences committed over the time between commits.
    pub at: Instant,
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
    /// A record or a reported failure was refused and counted against its worker.
    Refused {
        /// The worker.
        name: String,
        /// The step.
        step: u64,
        /// Why.
        why: String,
    },
    /// A member did not report a step computed in time; the view goes on without it.
    DeadlinePassed {
        /// The late worker.
        name: String,
        /// The step.
        step: u64,
        /// The deadline it had.
        deadline: Duration,
    },
    /// A result is held for a second opinion.
    Held {
        /// Its worker.
        name: String,
        /// The step.
        step: u64,
        /// Why.
        why: String,
    },
    /// A second opinion came in.
    Checked {
        /// The step.
        step: u64,
        /// Whose result was checked.
        first: String,
        /// `None` when they agree, else where they differ.
        disagreement: Option<String>,
    },
    /// A view started.
    ViewStarted {
        /// Its id.
        id: u64,
        /// Its first step.
        step: u64,
        /// Its members' names, in order.
        members: Vec<String>,
        /// Why the previous view ended, if one did.
        after: Option<String>,
    },
}

/// A second opinion the coordinator computes itself.
#[derive(Debug, Clone)]
pub(crate) struct LocalCheck {
    /// The step.
    pub step: u64,
    /// Whose shard (member index).
    pub member: usize,
    /// Parameters of the step.
    pub params: Vec<f32>,
    /// The shard's data.
    pub data: ShardData,
    /// The job simulates its compute (a benchmark aid): so does the second opinion.
    pub simulated: bool,
}

/// A shard result the coordinator computed itself, handed in with [`Job::submit_local`].
#[derive(Debug, Clone)]
pub(crate) struct LocalResult {
    /// Sum of the loss.
    pub loss_sum: f64,
    /// The gradient.
    pub grad: Vec<f32>,
    /// Final states.
    pub finals: model::state::SlotStates,
}

#[derive(Debug, Clone, Copy)]
struct Busy {
    step: u64,
    since: Instant,
    due: Instant,
    /// Deadline periods already counted as misses.
    missed: u32,
}

/// What a member has been told of the current view.
#[derive(Debug, Default, Clone)]
struct Outbox {
    /// The view it was sent (`None`: none yet).
    view: Option<u64>,
    /// The last step whose work it was sent.
    work_through: Option<u64>,
    /// Gradient uploads to ask for.
    uploads: Vec<u64>,
    /// The last wait reason sent.
    wait: Option<String>,
    /// Whether it was told the job is over.
    finished: bool,
}

#[derive(Debug)]
struct Member {
    id: String,
    name: String,
    identity: Option<Vec<u8>>,
    peer_address: String,
    lease_until: Instant,
    /// Has an open directive stream.
    following: bool,
    refusals: u32,
    misses: u32,
    /// Its computation of this step is overdue.
    busy: Option<Busy>,
    /// The last step it reported reduced and its digest after it.
    reduced: Option<(u64, u64)>,
    /// The last step whose work it was handed, in any view.
    handed: Option<u64>,
    /// The last `(view, step)` a fault was counted against it in (one per attempt).
    last_fault: Option<(u64, u64)>,
    outbox: Outbox,
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
    view: Option<ViewState>,
    next_view: u64,
    /// A member waits to join: hand out no more work until the view's steps are committed.
    draining: bool,
    /// Why the last view ended, for the next one's notice.
    ended: Option<String>,
    failed: Option<String>,
    backoff: HashMap<String, Backoff>,
    evicted: VecDeque<(String, String)>,
    names_seen: BTreeSet<String>,
    /// Names of the workers that failed each step (the job fails when too many did).
    step_failures: BTreeMap<u64, BTreeSet<String>>,
    stats: Stats,
    /// Results still to be checked as one of the first of the run.
    warmup_left: usize,
    notices: Vec<Notice>,
    /// Commit events not taken yet ([`Job::take_commits`]), each with the checkpoint and
    /// validation snapshot due at its commit.
    commits: Vec<crate::report::Event>,
    /// Members may have something new to hear ([`Job::take_news`]).
    news: bool,
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
                depth: cfg.depth.max(1),
                checkpoint_every: cfg.checkpoint_every.max(1),
                ..cfg
            },
            started: false,
            members: BTreeMap::new(),
            ids: HashMap::new(),
            next_key: 1,
            view: None,
            next_view: 1,
            draining: false,
            ended: None,
            failed: None,
            backoff: HashMap::new(),
            evicted: VecDeque::new(),
            names_seen: BTreeSet::new(),
            step_failures: BTreeMap::new(),
            stats: Stats::default(),
            warmup_left,
            notices: Vec::new(),
            commits: Vec::new(),
            news: false,
        }
    }

    /// Whether members may have something new to hear since the last call (a view, work, a
    /// gradient to upload, the end of the job, a change in membership).
    pub(crate) fn take_news(&mut self) -> bool {
        std::mem::take(&mut self.news)
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

    /// Adds a worker accepting peer connections at `peer_address`; returns its secret id. Refused
    /// while the name is in an eviction back-off, when the job has `max_workers` members, or
    /// when the address is not `host:port`.
    pub(crate) fn register(
        &mut self,
        name: &str,
        identity: Option<&[u8]>,
        peer_address: &str,
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
        check_peer_address(peer_address).map_err(Refusal::Invalid)?;
        let key = self.next_key;
        self.next_key += 1;
        let id = proto::security::random_id();
        self.members.insert(
            key,
            Member {
                id: id.clone(),
                name: name.to_string(),
                identity: identity.map(<[u8]>::to_vec),
                peer_address: peer_address.to_string(),
                lease_until: now + self.cfg.lease,
                following: false,
                refusals: 0,
                misses: 0,
                busy: None,
                reduced: None,
                handed: None,
                last_fault: None,
                outbox: Outbox::default(),
            },
        );
        self.ids.insert(id.clone(), key);
        self.news = true;
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

    /// Removes a worker at once; the view it was in ends. Returns its name.
    pub(crate) fn leave(&mut self, who: &Caller<'_>, now: Instant) -> Result<String, Refusal> {
        let key = self.auth(who)?;
        let (_, name) = self.remove(key);
        self.view_lost(key, &format!("{name} left"), now);
        self.advance(now);
        Ok(name)
    }

    /// Checks that the caller is a member.
    pub(crate) fn check_member(&self, who: &Caller<'_>) -> Result<(), Refusal> {
        self.auth(who).map(|_| ())
    }

    /// The caller opened its directive stream: it may be placed in a view. A member of the
    /// current view that follows anew (its stream broke) ends the view, since it may have missed
    /// directives.
    pub(crate) fn follow(&mut self, who: &Caller<'_>, now: Instant) -> Result<(), Refusal> {
        let key = self.auth(who)?;
        let lease = self.cfg.lease;
        let m = self.members.get_mut(&key).expect("authenticated");
        m.lease_until = now + lease;
        let again = m.following || m.outbox.view.is_some();
        m.following = true;
        self.news = true;
        m.outbox = Outbox::default();
        if again {
            let name = m.name.clone();
            self.view_lost(
                key,
                &format!("{name} opened its directive stream again"),
                now,
            );
        }
        self.advance(now);
        Ok(())
    }

    /// The caller's directive stream closed (the process died, or the connection broke): it is
    /// taken out of its view at once, without waiting for its lease.
    pub(crate) fn unfollow(&mut self, who: &Caller<'_>, now: Instant) {
        let Ok(key) = self.auth(who) else { return };
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        m.following = false;
        m.outbox = Outbox::default();
        let name = m.name.clone();
        self.view_lost(key, &format!("{name}'s directive stream closed"), now);
        self.advance(now);
    }

    fn remove(&mut self, key: u64) -> (String, String) {
        let Some(m) = self.members.remove(&key) else {
            return Default::default();
        };
        self.news = true;
        self.ids.remove(&m.id);
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
            name: name.clone(),
            reason: format!("evicted: {reason}"),
            evicted: true,
        });
        self.view_lost(key, &format!("{name} was evicted"), now);
    }

    /// Counts a fault against `key` for `step` (evicted after `max_refusals`); the job fails
    /// when one step has failed on several different workers. The view ends: its step is
    /// computed again.
    fn refuse_key(&mut self, key: u64, step: u64, why: &str, now: Instant) {
        let view = self.view.as_ref().map_or(0, ViewState::id);
        self.count_fault(key, view, step, why, now);
        if self.failed.is_none() && self.members.contains_key(&key) {
            self.end_view(&format!("a result of step {step} was refused"), now);
        }
    }

    /// Counts a fault of `key` in `step` of view `view`, once per attempt (its report and a
    /// peer's report of the same step are one fault), evicting it after `max_refusals` and
    /// failing the job when the step failed on several different workers.
    fn count_fault(&mut self, key: u64, view: u64, step: u64, why: &str, now: Instant) {
        let name = self.name(key);
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if m.last_fault == Some((view, step)) {
            return;
        }
        m.last_fault = Some((view, step));
        m.refusals += 1;
        self.notices.push(Notice::Refused {
            name: name.clone(),
            step,
            why: why.to_string(),
        });
        let failed = self.step_failures.entry(step).or_default();
        failed.insert(name);
        let count = failed.len();
        let threshold = STEP_FAILURE_WORKERS.min(self.names_seen.len()).max(2);
        if count >= threshold {
            let names = self.step_failures[&step]
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let slots = self.shard_labels(key, step);
            self.failed = Some(format!(
                "step {step} ({slots}) failed on {count} different workers ({names}); the data there is the likely cause; last error: {why}"
            ));
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

    /// Advances time: removes workers whose lease ran out, counts missed deadlines (evicting
    /// workers that missed too many), and forms views. Returns whether anything changed that
    /// members should hear about.
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
                name: name.clone(),
                reason: "lease expired".into(),
                evicted: false,
            });
            self.view_lost(key, &format!("{name}'s lease expired"), now);
            changed = true;
        }
        changed |= self.deadlines(now);
        changed |= self.advance(now);
        changed
    }

    /// Counts passed deadlines: a member of the view that has not reported a step computed in
    /// time is taken out of the view, and each further deadline period counts a miss.
    fn deadlines(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let mut late = Vec::new();
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
                        deadline: period,
                    });
                    late.push((key, m.name.clone(), b.step));
                }
                m.misses += periods - b.missed;
                b.missed = periods;
                changed = true;
                if m.misses >= self.cfg.max_deadline_misses {
                    evict.push((key, m.misses));
                }
            }
        }
        for (key, name, step) in late {
            self.view_lost(
                key,
                &format!("{name} is past its deadline for step {step}"),
                now,
            );
        }
        for (key, n) in evict {
            self.evict(key, format!("it missed its shard deadline {n} times"), now);
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
}

/// Checks a registered peer address: `host:port` with a port above 0.
fn check_peer_address(a: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "peer_address: expected host:port where the worker accepts peer connections, got `{a}`"
        )
    };
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || a.len() > 300 || a.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok(())
}
