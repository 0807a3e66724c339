//! Views and steps: forming a view from the members that are ready, handing out work ahead of the
//! commits, taking members' records, screening them at the step to commit, second opinions, and
//! the commit itself. Part of [`Job`]; see the rules in `mod.rs`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use model::replica::{
    Computed, Member as ViewMember, Record, Reduction, StepRecord, View, chunk_count, digest,
    owned_chunks,
};
use model::trainer::Ahead;
use runtime::clock::Stopwatch;
use sha2::{Digest, Sha256};

use super::screen;
use super::{
    Breakdown, Busy, CommitReport, Directive, Expect, Job, LocalCheck, LocalResult, Notice, Outbox,
    Refusal, ShardReport, WorkOut,
};
use crate::report::Event;

/// What the coordinator knows of one member's part of a handed-out step.
#[derive(Debug, Default)]
struct Shard {
    /// Its `Computed` record and when it arrived.
    computed: Option<(Computed, Instant)>,
    /// Its digest after the update, times and bytes.
    reduced: Option<Reduced>,
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
struct Reduced {
    digest: u64,
    reduce_ms: f64,
    wait_ms: f64,
    update_ms: f64,
    bytes: u64,
}

#[derive(Debug, Default)]
enum Phase {
    /// Not screened yet.
    #[default]
    Open,
    /// Waits for the member's gradient and the coordinator's own computation of the shard.
    Checking {
        grad: Option<Vec<f32>>,
        local: Option<LocalResult>,
        local_started: bool,
    },
    /// Passed.
    Done,
}

/// A handed-out step not committed yet.
#[derive(Debug)]
struct StepState {
    ahead: Ahead,
    issued: Instant,
    shards: Vec<Shard>,
    /// The summed gradient, chunk by chunk, as the members report it.
    chunks: Vec<Option<Vec<f32>>>,
    /// When its last record arrived.
    last_record: Option<Instant>,
    /// Coordinator time spent on it (milliseconds).
    coordinator_ms: f64,
    /// Members already charged for a peer fault in this step (several peers may report one).
    faulted: Vec<usize>,
}

/// The current view.
#[derive(Debug)]
pub(super) struct ViewState {
    id: u64,
    start: u64,
    /// Member keys in index order.
    keys: Vec<u64>,
    ranges: Vec<Range<usize>>,
    reduction: Reduction,
    chunks: usize,
    /// Pair tokens derive from it.
    secret: [u8; 16],
    /// Digest of the committed parameters at `start`.
    digest: u64,
    /// Handed-out steps not committed yet.
    steps: BTreeMap<u64, StepState>,
    /// The last step handed out.
    last: Option<Ahead>,
    /// The step each member computes next (the one after the last it reported reduced): its
    /// deadline runs from when it could start it.
    next: Vec<u64>,
}

impl ViewState {
    /// Its id.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    fn index_of(&self, key: u64) -> Option<usize> {
        self.keys.iter().position(|&k| k == key)
    }

    /// The secret members `a` and `b` share.
    fn pair_token(&self, a: usize, b: usize) -> Vec<u8> {
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(self.id.to_le_bytes());
        h.update(lo.to_le_bytes());
        h.update(hi.to_le_bytes());
        h.finalize()[..16].to_vec()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Job {
    /// Ends the view if `key` is one of its members.
    pub(super) fn view_lost(&mut self, key: u64, why: &str, now: Instant) {
        if self
            .view
            .as_ref()
            .is_some_and(|v| v.index_of(key).is_some())
        {
            self.end_view(why, now);
        }
    }

    /// Ends the view: what was handed out past the last commit is discarded, and a new view
    /// starts from the next step to commit as soon as members are ready.
    pub(super) fn end_view(&mut self, why: &str, now: Instant) {
        if self.view.take().is_none() {
            return;
        }
        self.news = true;
        self.ended = Some(why.to_string());
        self.draining = false;
        for m in self.members.values_mut() {
            m.outbox = Outbox {
                finished: m.outbox.finished,
                ..Outbox::default()
            };
            // a member past its deadline stays stuck (and counts misses) until it is heard from
            if !Self::overdue(m, now) {
                m.busy = None;
            }
        }
    }

    /// Labels of the slots `key` computes in `step`, for messages.
    pub(super) fn shard_labels(&self, key: u64, step: u64) -> String {
        let Some(v) = &self.view else {
            return format!("step {step}");
        };
        let (Some(i), Some(s)) = (v.index_of(key), v.steps.get(&step)) else {
            return format!("step {step}");
        };
        let r = v.ranges[i].clone();
        let labels: Vec<String> = r
            .clone()
            .map(|slot| self.trainer.slot_label_of(&s.ahead, slot))
            .collect();
        format!("slots {}..{}, {}", r.start, r.end, labels.join(", "))
    }

    /// Members that may be placed in a view now, in key order.
    fn ready(&self, now: Instant) -> Vec<u64> {
        self.members
            .iter()
            .filter(|(_, m)| m.following && !Self::overdue(m, now))
            .map(|(&k, _)| k)
            .collect()
    }

    /// Forms views, hands out work, screens and commits what can be: the one place where the
    /// job moves forward. Returns whether members have something new to hear.
    pub(super) fn advance(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for _ in 0..4 {
            if self.is_finished() {
                return true;
            }
            if self.view.is_none() {
                if !self.form_view(now) {
                    return changed;
                }
                changed = true;
            }
            changed |= self.commit_ready(now);
            if self.view.is_none() {
                continue;
            }
            // a member that is ready but not in the view joins once the view's steps commit
            let ready = self.ready(now);
            let v = self.view.as_ref().expect("a view");
            let outside = ready.iter().any(|k| v.index_of(*k).is_none())
                && v.keys.len() < self.trainer.spec().batch_size;
            if outside && !self.draining {
                self.draining = true;
                changed = true;
            }
            if self.draining && v.steps.is_empty() {
                let joining: Vec<String> = ready
                    .iter()
                    .filter(|k| v.index_of(**k).is_none())
                    .map(|k| self.name(*k))
                    .collect();
                self.end_view(&format!("{} joined", joining.join(", ")), now);
                continue;
            }
            if !self.draining {
                changed |= self.hand_out(now);
            }
            return changed;
        }
        changed
    }

    /// Forms a view from the ready members at the next step to commit; `false` when there are
    /// not enough of them.
    fn form_view(&mut self, now: Instant) -> bool {
        let ready = self.ready(now);
        if ready.is_empty() || (!self.started && ready.len() < self.cfg.min_workers) {
            return false;
        }
        let b = self.trainer.spec().batch_size;
        let keys: Vec<u64> = ready.into_iter().take(b).collect();
        let k = keys.len();
        let n = self.trainer.layout().len();
        let reduction = Reduction::for_view(k, n);
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret).expect("the operating system's random source");
        let id = self.next_view;
        self.next_view += 1;
        self.started = true;
        self.draining = false;
        let start = self.trainer.cursor().global;
        self.view = Some(ViewState {
            id,
            start,
            ranges: (0..k).map(|i| i * b / k..(i + 1) * b / k).collect(),
            keys: keys.clone(),
            reduction,
            chunks: chunk_count(n, k, reduction, self.cfg.max_message_bytes),
            secret,
            digest: digest(self.trainer.params()),
            steps: BTreeMap::new(),
            last: None,
            next: vec![start; k],
        });
        for m in self.members.values_mut() {
            m.outbox = Outbox {
                finished: m.outbox.finished,
                ..Outbox::default()
            };
        }
        self.news = true;
        self.notices.push(Notice::ViewStarted {
            id,
            step: start,
            members: keys.iter().map(|k| self.name(*k)).collect(),
            after: self.ended.take(),
        });
        true
    }

    /// Hands out work up to `depth` steps past the last commit, once at most half of that is
    /// still out (so that work goes out in batches rather than one message per step).
    fn hand_out(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let cursor = self.trainer.cursor().global;
        let out = self
            .view
            .as_ref()
            .and_then(|v| v.last.as_ref())
            .map_or(0, |a| (a.plan.cursor.global + 1).saturating_sub(cursor));
        if out > (self.cfg.depth as u64) / 2 {
            return false;
        }
        loop {
            let v = self.view.as_ref().expect("a view");
            let next = v.last.as_ref().map_or(cursor, |a| a.plan.cursor.global + 1);
            if next >= cursor + self.cfg.depth as u64 {
                break;
            }
            let Some(ahead) = self.trainer.plan_after(v.last.as_ref()) else {
                break;
            };
            let members = v.keys.len();
            let chunks = v.chunks;
            let step = ahead.plan.cursor.global;
            let v = self.view.as_mut().expect("a view");
            v.steps.insert(
                step,
                StepState {
                    ahead: ahead.clone(),
                    issued: now,
                    shards: (0..members).map(|_| Shard::default()).collect(),
                    chunks: vec![None; chunks],
                    last_record: None,
                    coordinator_ms: 0.0,
                    faulted: Vec::new(),
                },
            );
            v.last = Some(ahead);
            changed = true;
            self.news = true;
            // the deadline of members that can start this step now runs
            let starting: Vec<(u64, usize)> = (0..members)
                .filter(|&i| v.next[i] == step)
                .map(|i| (v.keys[i], v.ranges[i].len()))
                .collect();
            for (key, slots) in starting {
                self.start_deadline(key, step, slots, now);
            }
        }
        changed
    }

    /// Member `key` can start computing `step` now: it must report it computed within its
    /// deadline.
    fn start_deadline(&mut self, key: u64, step: u64, slots: usize, now: Instant) {
        let due = self.deadline_for(slots);
        if let Some(m) = self.members.get_mut(&key)
            && m.busy.is_none_or(|b| b.missed == 0)
        {
            m.busy = Some(Busy {
                step,
                since: now,
                due: now + due,
                missed: 0,
            });
        }
    }

    /// What member `who` is to be told next, in order (each directive once).
    pub(crate) fn pull(&mut self, who: &super::Caller<'_>, now: Instant) -> Vec<Directive> {
        let Ok(key) = self.auth(who) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(f) = &self.failed {
            let m = self.members.get_mut(&key).expect("authenticated");
            if !m.outbox.finished {
                m.outbox.finished = true;
                out.push(Directive::Finished(format!("the job failed: {f}")));
            }
            return out;
        }
        if self.trainer.is_done() {
            let total = self.trainer.total_steps();
            let m = self.members.get_mut(&key).expect("authenticated");
            // a member stuck past its deadline hears it once it is heard from again, or is
            // evicted for the deadlines it keeps missing meanwhile
            if !m.outbox.finished && !Self::overdue(m, now) {
                m.outbox.finished = true;
                out.push(Directive::Finished(format!(
                    "the job is complete ({total} steps)"
                )));
            }
            return out;
        }
        let index = self.view.as_ref().and_then(|v| v.index_of(key));
        let Some(i) = index else {
            let reason = self.wait_reason(key, now);
            let m = self.members.get_mut(&key).expect("authenticated");
            if m.following && m.outbox.wait.as_deref() != Some(reason.as_str()) {
                m.outbox.wait = Some(reason.clone());
                out.push(Directive::Wait(reason));
            }
            return out;
        };
        let v = self.view.as_ref().expect("a view");
        let m = &self.members[&key];
        if !m.following {
            return out;
        }
        if m.outbox.view != Some(v.id) {
            out.push(Directive::View(Box::new(self.view_for(i))));
        }
        let from = m.outbox.work_through.map_or(v.start, |s| s + 1);
        let v = self.view.as_ref().expect("a view");
        let mut through = m.outbox.work_through;
        for (&step, s) in v.steps.range(from..) {
            let range = v.ranges[i].clone();
            out.push(Directive::Work(Box::new(WorkOut {
                view: v.id,
                plan: s.ahead.plan,
                member: i as u32,
                first_slot: range.start,
                data: self.trainer.shard_of(&s.ahead, range.clone()),
                deadline: self.deadline_for(range.len()),
                lr: s.ahead.lr,
                outputs: s.ahead.outputs,
            })));
            through = Some(step);
        }
        let id = v.id;
        let m = self.members.get_mut(&key).expect("authenticated");
        m.outbox.view = Some(id);
        m.outbox.work_through = through;
        m.handed = m.handed.max(through);
        out.extend(m.outbox.uploads.drain(..).map(Directive::Upload));
        out
    }

    fn wait_reason(&self, key: u64, now: Instant) -> String {
        let m = &self.members[&key];
        if Self::overdue(m, now) {
            return "this worker is past its deadline; it joins a view once it is heard from"
                .into();
        }
        if self.view.is_some() {
            return format!(
                "joining at the next view, once the steps handed out are committed (the job is at step {})",
                self.trainer.cursor().global
            );
        }
        let ready = self.ready(now).len();
        format!(
            "waiting for workers: {ready} of {} ready",
            self.cfg.min_workers
        )
    }

    /// The view as member `i` receives it: with the committed state unless its replica is known
    /// to hold it already.
    fn view_for(&self, i: usize) -> View {
        let v = self.view.as_ref().expect("a view");
        let key = v.keys[i];
        let m = &self.members[&key];
        // it holds the committed state when it reduced the step before the view's first and
        // was handed nothing after it (a report still on its way could mean it went further)
        let holds = m.reduced == Some((v.start.wrapping_sub(1), v.digest))
            && m.handed.is_none_or(|h| h < v.start);
        let slots: Vec<usize> = v.ranges[i].clone().collect();
        View {
            id: v.id,
            start_step: v.start,
            member: i,
            members: v
                .keys
                .iter()
                .enumerate()
                .map(|(j, k)| ViewMember {
                    index: j,
                    slots: v.ranges[j].clone(),
                    address: self.members[k].peer_address.clone(),
                    pair_token: if j == i {
                        Vec::new()
                    } else {
                        v.pair_token(i, j)
                    },
                })
                .collect(),
            reduction: v.reduction,
            chunks: v.chunks,
            update: self.trainer.update_rule(),
            depth: self.cfg.depth,
            state: (!holds).then(|| model::replica::Replica {
                params: self.trainer.params().to_vec(),
                adam: self.trainer.adam().clone(),
            }),
            digest: v.digest,
            states: self.trainer.states().gather(&slots),
            simulate_ms_per_slot: self.cfg.simulate_ms_per_slot,
        }
    }

    /// The sizes `who`'s records in view `view` must have.
    pub(crate) fn expect(&self, who: &super::Caller<'_>, view: u64) -> Result<Expect, Refusal> {
        let key = self.auth(who)?;
        let v = self.current_view(view)?;
        let i = v.index_of(key).ok_or_else(|| {
            Refusal::NotAssigned(format!(
                "view {view} is not assigned to this worker: it is not one of its members"
            ))
        })?;
        let m = &self.trainer.spec().model;
        Ok(Expect {
            state: [m.layers, v.ranges[i].len(), m.hidden],
            params: self.trainer.layout().len(),
            chunks: v.chunks,
            members: v.keys.len(),
            member: i,
        })
    }

    fn current_view(&self, view: u64) -> Result<&ViewState, Refusal> {
        match &self.view {
            Some(v) if v.id == view => Ok(v),
            Some(v) => Err(Refusal::Stale(format!(
                "view {view} is over; the job is in view {} from step {}",
                v.id, v.start
            ))),
            None => Err(Refusal::Stale(format!(
                "view {view} is over; the job is at step {} and forms a new view",
                self.trainer.cursor().global
            ))),
        }
    }

    /// Takes a member's records of view `view`, in order (each decoded already, or the error
    /// its decoding gave, which is refused and counted against the member). `decode_ms` is the
    /// time decoding took, charged to the records' steps.
    pub(crate) fn report(
        &mut self,
        who: &super::Caller<'_>,
        view: u64,
        records: Vec<Result<StepRecord, (u64, proto::convert::WireError)>>,
        decode_ms: f64,
        now: Instant,
    ) -> Result<(), Refusal> {
        let key = self.auth(who)?;
        let lease = self.cfg.lease;
        let m = self.members.get_mut(&key).expect("authenticated");
        m.lease_until = now + lease;
        if Self::overdue(m, now) {
            // heard from: it may join a view again
            m.busy = None;
        }
        let ended = match self.current_view(view) {
            Ok(v) if v.index_of(key).is_some() => None,
            Ok(_) => Some(Refusal::NotAssigned(format!(
                "view {view} is not assigned to this worker: it is not one of its members"
            ))),
            Err(e) => Some(e),
        };
        if let Some(e) = ended {
            // failures of a view that is over still count: the job fails when one step fails
            // on several different workers, however the views that tried it ended
            let cursor = self.trainer.cursor().global;
            for r in records.iter().flatten() {
                if let Record::Failure(reason) = &r.record
                    && r.step >= cursor
                {
                    let why = format!("the worker could not compute it: {reason}");
                    self.count_fault(key, view, r.step, &why, now);
                }
            }
            self.advance(now);
            return Err(e);
        }
        let share = decode_ms / records.len().max(1) as f64;
        for r in records {
            let t0 = Stopwatch::start();
            let v = self.current_view(view)?;
            let i = v.index_of(key).ok_or_else(|| {
                Refusal::NotAssigned(format!(
                    "view {view} is not assigned to this worker: it is not one of its members"
                ))
            })?;
            let rec = match r {
                Ok(rec) => rec,
                Err((step, e)) => {
                    let why = e.to_string();
                    self.check_step(step)?;
                    self.refuse_key(key, step, &why, now);
                    return Err(Refusal::Invalid(why));
                }
            };
            let step = rec.step;
            self.check_step(step)?;
            self.take(key, i, rec, now)?;
            if let Some(s) = self.view.as_mut().and_then(|v| v.steps.get_mut(&step)) {
                s.coordinator_ms += share + t0.ms();
                s.last_record = Some(now);
            }
            if self.view.as_ref().is_none_or(|v| v.id != view) {
                // the record ended the view (a reported failure): the rest are moot
                break;
            }
        }
        self.advance(now);
        Ok(())
    }

    /// Refuses records for steps that are committed or were never handed out.
    fn check_step(&self, step: u64) -> Result<(), Refusal> {
        let cursor = self.trainer.cursor().global;
        if step < cursor {
            return Err(Refusal::Stale(format!(
                "step {step} is already committed; the job is at step {cursor}"
            )));
        }
        let handed = self
            .view
            .as_ref()
            .is_some_and(|v| v.steps.contains_key(&step));
        if !handed {
            return Err(Refusal::NotAssigned(format!(
                "step {step} has not been assigned; the job is at step {cursor}"
            )));
        }
        Ok(())
    }

    fn take(&mut self, key: u64, i: usize, rec: StepRecord, now: Instant) -> Result<(), Refusal> {
        let step = rec.step;
        match rec.record {
            Record::Computed(c) => {
                let v = self.view.as_mut().expect("checked");
                let s = v.steps.get_mut(&step).expect("checked");
                if s.shards[i].computed.is_some() {
                    return Err(Refusal::Stale(format!(
                        "step {step} was already reported computed by this worker"
                    )));
                }
                s.shards[i].computed = Some((c, now));
                // computed in time; while it waits for the others' chunks nothing is its fault
                if let Some(m) = self.members.get_mut(&key)
                    && m.busy.is_some_and(|b| b.step == step)
                {
                    m.busy = None;
                }
            }
            Record::Reduced(d) => {
                let v = self.view.as_mut().expect("checked");
                let (members, chunks) = (v.keys.len(), v.chunks);
                let s = v.steps.get_mut(&step).expect("checked");
                if s.shards[i].reduced.is_some() {
                    return Err(Refusal::Stale(format!(
                        "step {step} was already reported reduced by this worker"
                    )));
                }
                for (k, values) in owned_chunks(chunks, members, i).zip(d.chunks) {
                    s.chunks[k] = Some(values);
                }
                s.shards[i].reduced = Some(Reduced {
                    digest: d.digest,
                    reduce_ms: d.reduce_ms,
                    wait_ms: d.wait_ms,
                    update_ms: d.update_ms,
                    bytes: d.bytes_sent + d.bytes_received,
                });
                v.next[i] = v.next[i].max(step + 1);
                let handed = v.steps.contains_key(&(step + 1));
                let slots = v.ranges[i].len();
                if let Some(m) = self.members.get_mut(&key) {
                    m.reduced = Some((step, d.digest));
                }
                if handed {
                    self.start_deadline(key, step + 1, slots, now);
                }
            }
            Record::Gradient(g) => {
                let v = self.view.as_mut().expect("checked");
                let s = v.steps.get_mut(&step).expect("checked");
                match &mut s.shards[i].phase {
                    Phase::Checking { grad, .. } if grad.is_none() => *grad = Some(g),
                    _ => {
                        return Err(Refusal::Stale(format!(
                            "no gradient of step {step} was asked for, or it was handed in already"
                        )));
                    }
                }
            }
            Record::Failure(reason) => {
                self.refuse_key(
                    key,
                    step,
                    &format!("the worker could not compute it: {reason}"),
                    now,
                );
            }
            Record::PeerFault { member, reason } => {
                let v = self.view.as_mut().expect("checked");
                let culprit = v.keys[member];
                let s = v.steps.get_mut(&step).expect("checked");
                if s.faulted.contains(&member) {
                    return Ok(());
                }
                s.faulted.push(member);
                let by = self.name(key);
                self.refuse_key(
                    culprit,
                    step,
                    &format!("{by} could not use what it sent: {reason}"),
                    now,
                );
            }
        }
        Ok(())
    }

    /// Screens the step to commit and commits it (and the steps after it) when it is complete.
    fn commit_ready(&mut self, now: Instant) -> bool {
        let mut changed = false;
        loop {
            let cursor = self.trainer.cursor().global;
            if !self.screen(cursor, now) {
                return changed;
            }
            let Some(v) = &self.view else { return changed };
            let Some(s) = v.steps.get(&cursor) else {
                return changed;
            };
            let complete = s.shards.iter().all(|sh| {
                matches!(sh.phase, Phase::Done) && sh.computed.is_some() && sh.reduced.is_some()
            }) && s.chunks.iter().all(Option::is_some);
            if !complete {
                return changed;
            }
            self.commit(cursor, now);
            changed = true;
        }
    }

    /// Screens the `Computed` records of step `step` (the next to commit): bounds no LSTM can
    /// break are refused, suspicious results wait for a second opinion. `false` when the view
    /// ended.
    fn screen(&mut self, step: u64, now: Instant) -> bool {
        let Some(v) = &self.view else { return false };
        let Some(s) = v.steps.get(&step) else {
            return true;
        };
        let todo: Vec<usize> = s
            .shards
            .iter()
            .enumerate()
            .filter(|(_, sh)| sh.computed.is_some() && matches!(sh.phase, Phase::Open))
            .map(|(i, _)| i)
            .collect();
        for i in todo {
            let t0 = Stopwatch::start();
            let v = self.view.as_ref().expect("a view");
            let key = v.keys[i];
            let s = &v.steps[&step];
            let range = v.ranges[i].clone();
            let (c, _) = s.shards[i].computed.as_ref().expect("computed");
            let init = match self.trainer.start_states_of(&s.ahead, range.clone()) {
                Ok(i) => i,
                Err(e) => {
                    self.failed = Some(format!(
                        "the states step {step} starts from could not be made: {e}"
                    ));
                    return false;
                }
            };
            if let Err(why) =
                screen::check_bounds(c.loss_sum, &c.finals, &init, self.trainer.timesteps())
            {
                self.refuse_key(key, step, &why, now);
                return false;
            }
            let norm = c.grad_norm / range.len().max(1) as f64;
            let why = self.suspicion(norm, step, i);
            let v = self.view.as_mut().expect("a view");
            let s = v.steps.get_mut(&step).expect("handed out");
            s.coordinator_ms += t0.ms();
            match why {
                None => s.shards[i].phase = Phase::Done,
                Some(why) => {
                    s.shards[i].phase = Phase::Checking {
                        grad: None,
                        local: None,
                        local_started: false,
                    };
                    let name = self.name(key);
                    self.notices.push(Notice::Held { name, step, why });
                    if let Some(m) = self.members.get_mut(&key) {
                        m.outbox.uploads.push(step);
                    }
                    self.news = true;
                }
            }
        }
        self.settle(step, now)
    }

    /// Why a result with this gradient norm per slot needs a second opinion, if it does.
    fn suspicion(&mut self, norm: f64, step: u64, member: usize) -> Option<String> {
        if self.warmup_left > 0 {
            self.warmup_left -= 1;
            return Some("one of the first results of the run, which are all checked".into());
        }
        if let Some(why) = self.stats.suspicion(norm) {
            return Some(why);
        }
        let p = self.cfg.verify_fraction;
        if p > 0.0 {
            let h = model::rng::hash_words(&[
                self.trainer.spec().seed,
                0x7665_7269_6679, // "verify"
                step,
                member as u64,
            ]);
            if ((h >> 11) as f64) / ((1u64 << 53) as f64) < p {
                return Some("sampled for verification (--verify-fraction)".into());
            }
        }
        None
    }

    /// Settles the second opinions of `step` that have both results. `false` when the view
    /// ended.
    fn settle(&mut self, step: u64, now: Instant) -> bool {
        let Some(v) = &self.view else { return false };
        let Some(s) = v.steps.get(&step) else {
            return true;
        };
        let ready: Vec<usize> = s
            .shards
            .iter()
            .enumerate()
            .filter(|(_, sh)| {
                matches!(
                    &sh.phase,
                    Phase::Checking {
                        grad: Some(_),
                        local: Some(_),
                        ..
                    }
                )
            })
            .map(|(i, _)| i)
            .collect();
        for i in ready {
            let v = self.view.as_mut().expect("a view");
            let key = v.keys[i];
            let s = v.steps.get_mut(&step).expect("handed out");
            let sh = &mut s.shards[i];
            let Phase::Checking {
                grad: Some(grad),
                local: Some(local),
                ..
            } = std::mem::take(&mut sh.phase)
            else {
                unreachable!("filtered")
            };
            let (c, _) = sh.computed.as_ref().expect("computed");
            let theirs = screen::Result {
                loss_sum: c.loss_sum,
                grad: &grad,
                finals: &c.finals,
            };
            let ours = screen::Result {
                loss_sum: local.loss_sum,
                grad: &local.grad,
                finals: &local.finals,
            };
            let verdict = screen::agree(&theirs, &ours).err();
            let first = self.name(key);
            self.notices.push(Notice::Checked {
                step,
                first,
                disagreement: verdict.clone(),
            });
            if verdict.is_some() {
                self.evict(
                    key,
                    format!(
                        "its result for shard {i} of step {step} disagreed with a second opinion"
                    ),
                    now,
                );
                return false;
            }
            let v = self.view.as_mut().expect("a view");
            v.steps.get_mut(&step).expect("handed out").shards[i].phase = Phase::Done;
        }
        true
    }

    /// Second opinions the coordinator is to compute, with [`Job::submit_local`] for each.
    pub(crate) fn local_checks(&mut self) -> Vec<LocalCheck> {
        let cursor = self.trainer.cursor().global;
        let Some(v) = self.view.as_mut() else {
            return Vec::new();
        };
        let Some(s) = v.steps.get_mut(&cursor) else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for (i, sh) in s.shards.iter_mut().enumerate() {
            if let Phase::Checking { local_started, .. } = &mut sh.phase
                && !*local_started
            {
                *local_started = true;
                due.push(i);
            }
        }
        let ahead = s.ahead.clone();
        let ranges = v.ranges.clone();
        due.into_iter()
            .map(|i| LocalCheck {
                step: cursor,
                member: i,
                params: self.trainer.params().to_vec(),
                data: self.trainer.shard_of(&ahead, ranges[i].clone()),
                simulated: self.cfg.simulate_ms_per_slot > 0.0,
            })
            .collect()
    }

    /// Hands in a second opinion the coordinator computed.
    pub(crate) fn submit_local(&mut self, step: u64, member: usize, r: LocalResult, now: Instant) {
        if step != self.trainer.cursor().global {
            return;
        }
        let Some(s) = self.view.as_mut().and_then(|v| v.steps.get_mut(&step)) else {
            return;
        };
        if let Some(Phase::Checking { local, .. }) =
            s.shards.get_mut(member).map(|sh| &mut sh.phase)
        {
            *local = Some(r);
        }
        self.advance(now);
    }

    /// A second opinion the coordinator could not compute: it is tried again.
    pub(crate) fn local_check_failed(&mut self, step: u64, member: usize) {
        if let Some(Phase::Checking { local_started, .. }) = self
            .view
            .as_mut()
            .and_then(|v| v.steps.get_mut(&step))
            .and_then(|s| s.shards.get_mut(member))
            .map(|sh| &mut sh.phase)
        {
            *local_started = false;
        }
    }

    /// Commits step `step` (complete and screened): sums, updates, stores, checks digests.
    fn commit(&mut self, step: u64, now: Instant) {
        let t0 = Stopwatch::start();
        let v = self.view.as_mut().expect("a view");
        let s = v.steps.remove(&step).expect("complete");
        let ranges = v.ranges.clone();
        let keys = v.keys.clone();
        let mut grad = Vec::with_capacity(self.trainer.layout().len());
        for c in s.chunks.iter().flatten() {
            grad.extend_from_slice(c);
        }
        let mut loss = 0.0;
        let mut finals = Vec::with_capacity(s.shards.len());
        let mut shards = Vec::with_capacity(s.shards.len());
        let mut record = Vec::with_capacity(s.shards.len());
        let mut b = Breakdown::default();
        let mut compute_ms = 0.0f64;
        for (i, sh) in s.shards.iter().enumerate() {
            let (c, arrived) = sh.computed.as_ref().expect("complete");
            let d = sh.reduced.expect("complete");
            loss += c.loss_sum;
            finals.push((ranges[i].clone(), &c.finals));
            compute_ms = compute_ms.max(c.compute_ms);
            b.reduce_ms = b.reduce_ms.max(d.reduce_ms);
            b.wait_ms = b.wait_ms.max(d.wait_ms);
            b.update_ms = b.update_ms.max(d.update_ms);
            b.peer_bytes = b.peer_bytes.max(d.bytes);
            shards.push(ShardReport {
                range: ranges[i].clone(),
                worker: self.name(keys[i]),
                compute_ms: c.compute_ms,
                transfer_ms: (d.reduce_ms - d.wait_ms).max(0.0) + d.update_ms,
                wait_ms: d.wait_ms,
            });
            let _ = arrived;
            let slots = ranges[i].len().max(1) as f64;
            record.push((c.grad_norm / slots, Some(c.compute_ms / slots)));
        }
        let committed = match self.trainer.commit(&s.ahead.plan, &grad, loss, &finals) {
            Ok(c) => c,
            Err(e) => {
                self.failed = Some(format!(
                    "step {step} was not committed: {e}; nothing of it was stored, and the last checkpoint is intact"
                ));
                return;
            }
        };
        for (norm, ms) in record {
            self.stats.record(norm, ms);
        }
        self.step_failures.remove(&step);
        let want = digest(self.trainer.params());
        let diverged: Vec<(u64, u64)> = keys
            .iter()
            .zip(&s.shards)
            .filter_map(|(&k, sh)| {
                let d = sh.reduced.expect("complete").digest;
                (d != want).then_some((k, d))
            })
            .collect();
        b.coordinator_ms = s.coordinator_ms + t0.ms();
        b.commit_lag_ms = s
            .last_record
            .map_or(0.0, |t| ms(now.saturating_duration_since(t)));
        let report = CommitReport {
            committed,
            shards,
            workers: self.members.len(),
            wall: now.saturating_duration_since(s.issued),
            compute_ms,
            breakdown: b,
            at: now,
        };
        self.commits.push(crate::report::commit_event(
            &self.trainer,
            report,
            self.cfg.checkpoint_every,
        ));
        if let Some(v) = &mut self.view {
            v.digest = want;
        }
        for (k, d) in diverged {
            self.evict(
                k,
                format!(
                    "its replica's parameters after step {step} differ from the committed ones (digest {d:016x}, expected {want:016x})"
                ),
                now,
            );
        }
    }

    /// The commit events since the last call, in commit order.
    pub(crate) fn take_commits(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.commits)
    }
}
