//! The job's rules on a fake clock and a simulated cluster: views, commits, leases, refusals and
//! evictions, deadlines, screening and second opinions, digests, joins. [`Cluster`] plays the
//! workers the way the real ones behave (replicas, carried states, the gradient sum in member
//! order, records), without I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use data::windows::{SyntheticSpec, synthetic};
use model::config::{ModelConfig, TrainSpec};
use model::engine::cpu::CpuEngine;
use model::params::ParamLayout;
use model::replica::{Computed, Record, Reduced, Replica, StepRecord, digest, owned_chunks};
use model::state::SlotStates;

use super::*;

fn spec(batch: usize, steps: u64) -> TrainSpec {
    TrainSpec {
        model: ModelConfig {
            hidden: 4,
            ..ModelConfig::seed()
        },
        batch_size: batch,
        epochs: 1,
        max_steps: Some(steps),
        seed: 5,
        ..Default::default()
    }
}

fn trainer(batch: usize, steps: u64) -> Trainer {
    let data = synthetic(&SyntheticSpec {
        sequences: batch * 12,
        val_sequences: 0,
        timesteps: 8,
        ..SyntheticSpec::new(batch, 1)
    });
    Trainer::new(spec(batch, steps), Arc::new(data)).unwrap()
}

fn cfg(min_workers: usize) -> JobConfig {
    JobConfig {
        lease: Duration::from_secs(3),
        min_workers,
        deadline: DeadlinePolicy::Fixed(Duration::from_secs(10)),
        verify_first: 0,
        depth: 4,
        ..JobConfig::default()
    }
}

fn me(id: &str) -> Caller<'_> {
    Caller::id(id)
}

fn reference(batch: usize, steps: u64) -> Vec<f32> {
    let mut t = trainer(batch, steps);
    let mut e = CpuEngine::new(&t.spec().model, 1);
    while t.step_local(&mut e).unwrap().is_some() {}
    t.params().to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// How a simulated worker misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Its gradients are multiplied by 1e25.
    Corrupt,
    /// It never reports a step computed.
    Hang,
    /// It reports that it cannot compute.
    Fail,
    /// It reports a digest other than its replica's.
    Digest,
}

/// One simulated worker.
struct Sim {
    name: String,
    id: String,
    fault: Fault,
    view: Option<View>,
    replica: Option<Replica>,
    /// The step its replica is at.
    at: u64,
    carried: Option<SlotStates>,
    work: BTreeMap<u64, WorkOut>,
    grads: BTreeMap<u64, Vec<f32>>,
    uploads: Vec<u64>,
    /// Steps it computed (to count recomputation).
    computed: u64,
}

/// Workers driven step by step against a job.
struct Cluster {
    job: Job,
    workers: Vec<Sim>,
    now: Instant,
    engine: CpuEngine,
    commits: u64,
}

impl Cluster {
    fn new(job: Job) -> Self {
        let engine = CpuEngine::new(&job.trainer().spec().model, 1);
        Self {
            job,
            workers: Vec::new(),
            now: Instant::now(),
            engine,
            commits: 0,
        }
    }

    fn join(&mut self, name: &str, fault: Fault) -> usize {
        let id = self
            .job
            .register(name, None, "127.0.0.1:1000", self.now)
            .unwrap();
        self.job.follow(&me(&id), self.now).unwrap();
        self.workers.push(Sim {
            name: name.into(),
            id,
            fault,
            view: None,
            replica: None,
            at: 0,
            carried: None,
            work: BTreeMap::new(),
            grads: BTreeMap::new(),
            uploads: Vec::new(),
            computed: 0,
        });
        self.workers.len() - 1
    }

    /// Delivers every worker's directives.
    fn pull(&mut self) {
        for w in &mut self.workers {
            for d in self.job.pull(&me(&w.id), self.now) {
                match d {
                    Directive::View(mut v) => {
                        match v.state.take() {
                            Some(r) => w.replica = Some(r),
                            None => assert!(
                                w.at == v.start_step
                                    && w.replica
                                        .as_ref()
                                        .is_some_and(|r| digest(&r.params) == v.digest),
                                "{}: a view without state for a replica that is not the committed one",
                                w.name
                            ),
                        }
                        w.at = v.start_step;
                        w.carried = Some(v.states.clone());
                        w.work.clear();
                        w.view = Some(*v);
                    }
                    Directive::Work(wo) => {
                        w.work.insert(wo.plan.cursor.global, *wo);
                    }
                    Directive::Upload(step) => w.uploads.push(step),
                    Directive::Finished(_) => w.view = None,
                    Directive::Wait(_) => {}
                }
            }
        }
    }

    /// Every member of the view computes its next step (when it has the work), sums with the
    /// others and reports; returns whether anyone computed.
    fn round(&mut self) -> bool {
        self.pull();
        let model = self.job.trainer().spec().model.clone();
        let layout = ParamLayout::new(&model);
        // who computes: the members of the newest view that hold its next step's work
        let Some(view) = self
            .workers
            .iter()
            .filter_map(|w| w.view.as_ref().map(|v| v.id))
            .max()
        else {
            return false;
        };
        let members: Vec<usize> = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.view.as_ref().is_some_and(|v| v.id == view))
            .map(|(i, _)| i)
            .collect();
        if members
            .iter()
            .any(|&i| !self.workers[i].work.contains_key(&self.workers[i].at))
        {
            return false;
        }
        let mut outs = Vec::new();
        for &i in &members {
            let w = &mut self.workers[i];
            let mut work = w.work.remove(&w.at).expect("checked");
            let step = w.at;
            let mut records = Vec::new();
            if w.fault == Fault::Hang {
                outs.push((i, step, None, records));
                continue;
            }
            if w.fault == Fault::Fail {
                records.push(StepRecord {
                    step,
                    record: Record::Failure("engine: out of memory".into()),
                });
                outs.push((i, step, None, records));
                continue;
            }
            work.data.init = w.carried.clone().unwrap();
            let params = &w.replica.as_ref().unwrap().params;
            let mut out = work.data.compute(&mut self.engine, &model, params).unwrap();
            w.computed += 1;
            if w.fault == Fault::Corrupt {
                out.grad.iter_mut().for_each(|g| *g *= 1e25);
            }
            records.push(StepRecord {
                step,
                record: Record::Computed(Computed {
                    loss_sum: out.loss_sum,
                    finals: out.final_state.clone(),
                    grad_norm: model::trainer::l2_norm(&out.grad),
                    compute_ms: 1.0,
                }),
            });
            w.carried = Some(out.final_state.clone());
            w.grads.insert(step, out.grad.clone());
            outs.push((i, step, Some((out.grad, work)), records));
        }
        // the gradient sum in member order, when every member computed
        let all = outs.iter().all(|(_, _, g, _)| g.is_some());
        let mut sum: Option<Vec<f32>> = None;
        if all {
            for (_, _, g, _) in &outs {
                let g = &g.as_ref().unwrap().0;
                match &mut sum {
                    None => sum = Some(g.clone()),
                    Some(s) => s.iter_mut().zip(g).for_each(|(a, b)| *a += b),
                }
            }
        }
        for (i, step, g, mut records) in outs {
            let w = &mut self.workers[i];
            if let (Some(sum), Some((_, work))) = (&sum, &g) {
                let v = w.view.as_ref().unwrap();
                let r = w.replica.as_mut().unwrap();
                let mut d = r
                    .apply(&v.update, &model, &layout, step, work.lr, work.outputs, sum)
                    .unwrap_or(0);
                if w.fault == Fault::Digest {
                    d ^= 1;
                }
                let chunks = owned_chunks(v.chunks, v.members.len(), v.member)
                    .map(|k| sum[model::replica::chunk_range(sum.len(), v.chunks, k)].to_vec())
                    .collect();
                records.push(StepRecord {
                    step,
                    record: Record::Reduced(Reduced {
                        chunks,
                        digest: d,
                        ..Default::default()
                    }),
                });
                w.at += 1;
            }
            for s in std::mem::take(&mut w.uploads) {
                if let Some(g) = w.grads.get(&s) {
                    records.push(StepRecord {
                        step: s,
                        record: Record::Gradient(g.clone()),
                    });
                }
            }
            if !records.is_empty() {
                let view = w.view.as_ref().unwrap().id;
                let recs = records.into_iter().map(Ok).collect();
                let _ = self.job.report(&me(&w.id), view, recs, 0.0, self.now);
            }
        }
        self.settle();
        true
    }

    /// Uploads asked for and the coordinator's own second opinions, until nothing is left.
    fn settle(&mut self) {
        for _ in 0..4 {
            self.pull();
            for w in &mut self.workers {
                let Some(view) = w.view.as_ref().map(|v| v.id) else {
                    continue;
                };
                let recs: Vec<_> = std::mem::take(&mut w.uploads)
                    .into_iter()
                    .filter_map(|s| {
                        w.grads.get(&s).map(|g| {
                            Ok(StepRecord {
                                step: s,
                                record: Record::Gradient(g.clone()),
                            })
                        })
                    })
                    .collect();
                if !recs.is_empty() {
                    let _ = self.job.report(&me(&w.id), view, recs, 0.0, self.now);
                }
            }
            let checks = self.job.local_checks();
            for c in checks {
                let m = self.job.trainer().spec().model.clone();
                let out = c.data.compute(&mut self.engine, &m, &c.params).unwrap();
                self.job.submit_local(
                    c.step,
                    c.member,
                    LocalResult {
                        loss_sum: out.loss_sum,
                        grad: out.grad,
                        finals: out.final_state,
                    },
                    self.now,
                );
            }
            self.commits += self.job.take_commits().len() as u64;
        }
    }

    /// Rounds until the job is finished (or `max` rounds), advancing the clock a little each.
    fn run(&mut self, max: usize) {
        for _ in 0..max {
            if self.job.is_finished() {
                return;
            }
            self.now += Duration::from_millis(10);
            for w in &self.workers {
                let _ = self.job.heartbeat(&me(&w.id), self.now);
            }
            self.job.tick(self.now);
            self.round();
        }
    }

    fn notices(&mut self) -> Vec<Notice> {
        self.job.take_notices()
    }
}

#[test]
fn waits_for_workers_then_views_and_commits_once_equal_to_the_reference() {
    let want = reference(6, 10);
    let mut c = Cluster::new(Job::new(trainer(6, 10), cfg(2)));
    let a = c.join("a", Fault::None);
    c.pull();
    assert!(
        c.workers[a].view.is_none(),
        "one of two workers: no view yet"
    );
    let b = c.join("b", Fault::None);
    c.pull();
    let va = c.workers[a].view.as_ref().unwrap();
    let vb = c.workers[b].view.as_ref().unwrap();
    assert_eq!((va.me().slots.clone(), vb.me().slots.clone()), (0..3, 3..6));
    assert_eq!(va.id, vb.id);
    assert!(
        va.state.is_none(),
        "the state was taken by the simulated worker"
    );
    // the pair token is shared by the two and by nobody else
    assert_eq!(va.members[1].pair_token, vb.members[0].pair_token);
    assert_eq!(va.members[1].pair_token.len(), 16);
    assert!(va.members[0].pair_token.is_empty());
    assert_eq!(c.workers[a].work.len(), 4, "depth steps handed out ahead");
    c.run(100);
    assert!(c.job.failure().is_none(), "{:?}", c.job.failure());
    assert_eq!(c.commits, 10, "every step committed once");
    assert_eq!(c.workers[a].computed + c.workers[b].computed, 20);
    let d = max_diff(c.job.trainer().params(), &want);
    assert!(d < 1e-6, "max difference {d}");
}

#[test]
fn worker_ids_are_secrets_and_act_only_for_their_worker() {
    let t0 = Instant::now();
    let mut job = Job::new(trainer(4, 4), cfg(1));
    let a = job.register("a", None, "h:1", t0).unwrap();
    let b = job.register("b", None, "h:2", t0).unwrap();
    assert_eq!(a.len(), 32, "128 bits in hex");
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
    for guess in ["w1-a", "w2", &a[..31], "", &format!("{a}0")] {
        assert_eq!(job.heartbeat(&me(guess), t0), Err(Refusal::UnknownWorker));
        assert_eq!(job.leave(&me(guess), t0), Err(Refusal::UnknownWorker));
        assert_eq!(job.follow(&me(guess), t0), Err(Refusal::UnknownWorker));
    }
    let c = job.register("c", Some(b"cert-c"), "h:3", t0).unwrap();
    let stolen = Caller {
        id: &c,
        identity: Some(b"cert-a"),
    };
    assert_eq!(job.heartbeat(&stolen, t0), Err(Refusal::WrongIdentity));
    assert_eq!(job.heartbeat(&me(&c), t0), Err(Refusal::WrongIdentity));
    let own = Caller {
        id: &c,
        identity: Some(b"cert-c"),
    };
    job.heartbeat(&own, t0).unwrap();
    assert_eq!(job.live_workers(), 3);
    for bad in ["", "nohost", ":80", "h:0", "h:99999", "h :1"] {
        let e = job.register("d", None, bad, t0).unwrap_err();
        assert!(
            matches!(&e, Refusal::Invalid(m) if m.contains("peer_address")),
            "{bad}: {e}"
        );
    }
}

#[test]
fn membership_is_bounded_and_members_that_do_not_follow_get_no_slots() {
    let mut c = Cluster::new(Job::new(
        trainer(4, 4),
        JobConfig {
            max_workers: 2,
            ..cfg(1)
        },
    ));
    let _silent = c.job.register("silent", None, "h:1", c.now).unwrap();
    let a = c.join("a", Fault::None);
    let e = c.job.register("flood", None, "h:2", c.now).unwrap_err();
    assert!(
        matches!(&e, Refusal::Full(m) if m.contains("--max-workers")),
        "{e}"
    );
    c.pull();
    let v = c.workers[a].view.as_ref().unwrap();
    assert_eq!(v.members.len(), 1);
    assert_eq!(v.me().slots, 0..4);
}

#[test]
fn a_dead_worker_ends_the_view_and_the_run_still_equals_the_reference() {
    let want = reference(6, 12);
    let mut c = Cluster::new(Job::new(trainer(6, 12), cfg(2)));
    c.join("a", Fault::None);
    let b = c.join("b", Fault::None);
    c.run(3);
    let committed = c.job.trainer().cursor().global;
    assert!(committed >= 2, "committed {committed}");
    // b dies: no heartbeats; a keeps beating
    let dead = c.workers.remove(b);
    let t = c.now + Duration::from_secs(4);
    c.job.heartbeat(&me(&c.workers[0].id), t).unwrap();
    c.now = t;
    c.job.tick(c.now);
    let notices = c.notices();
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Left { name, reason, .. } if name == "b" && reason == "lease expired")),
        "{notices:?}"
    );
    assert!(
        notices.iter().any(|n| matches!(n, Notice::ViewStarted { members, after: Some(why), .. } if members == &["a"] && why.contains("lease expired"))),
        "{notices:?}"
    );
    assert_eq!(
        c.job.heartbeat(&me(&dead.id), c.now),
        Err(Refusal::UnknownWorker)
    );
    c.run(100);
    assert!(c.job.failure().is_none(), "{:?}", c.job.failure());
    let d = max_diff(c.job.trainer().params(), &want);
    assert!(d < 1e-6, "max difference {d}");
}

#[test]
fn a_closed_directive_stream_ends_the_view_at_once() {
    let mut c = Cluster::new(Job::new(trainer(6, 12), cfg(2)));
    c.join("a", Fault::None);
    c.join("b", Fault::None);
    c.run(2);
    let id = c.workers[1].id.clone();
    c.job.unfollow(&me(&id), c.now);
    let notices = c.notices();
    assert!(
        notices
            .iter()
            .any(|n| matches!(n, Notice::ViewStarted { members, .. } if members == &["a"])),
        "the view goes on without it, before its lease expires: {notices:?}"
    );
    // it follows again: it joins at the next view, after a drain
    c.job.follow(&me(&id), c.now).unwrap();
    c.workers[1].view = None;
    c.run(100);
    assert!(c.job.failure().is_none());
    assert_eq!(c.job.trainer().cursor().global, 12);
}

#[test]
fn a_faulty_worker_is_evicted_and_backs_off_but_the_job_goes_on() {
    let want = reference(4, 8);
    let mut c = Cluster::new(Job::new(trainer(4, 8), cfg(2)));
    c.join("bad", Fault::Fail);
    c.join("good", Fault::None);
    c.run(40);
    let notices = c.notices();
    let refused = notices
        .iter()
        .filter(|n| matches!(n, Notice::Refused { name, why, .. } if name == "bad" && why.contains("out of memory")))
        .count();
    assert_eq!(refused, 3, "{notices:?}");
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Left { name, evicted: true, reason, .. } if name == "bad" && reason.contains("3 of its results were refused"))),
        "{notices:?}"
    );
    let bad = c.workers[0].id.clone();
    let e = c.job.follow(&me(&bad), c.now).unwrap_err();
    assert!(
        matches!(&e, Refusal::Evicted(m) if m.contains("refused")),
        "{e}"
    );
    let e = c.job.register("bad", None, "h:1", c.now).unwrap_err();
    let Refusal::Backoff { retry_after, .. } = e else {
        panic!("expected a back-off, got {e:?}")
    };
    assert!(retry_after <= Duration::from_secs(5) && retry_after > Duration::ZERO);
    c.workers.remove(0);
    c.run(100);
    assert!(c.job.failure().is_none(), "{:?}", c.job.failure());
    let d = max_diff(c.job.trainer().params(), &want);
    assert!(
        d < 1e-6,
        "the good worker finished alone: max difference {d}"
    );
    let later = c.now + Duration::from_secs(6);
    c.job
        .register("bad", None, "h:1", later)
        .expect("registers after the back-off");
}

#[test]
fn the_job_fails_only_when_one_step_fails_on_several_workers() {
    let mut c = Cluster::new(Job::new(
        trainer(4, 8),
        JobConfig {
            max_refusals: 10,
            ..cfg(1)
        },
    ));
    for n in ["a", "b", "c"] {
        c.join(n, Fault::Fail);
    }
    c.run(20);
    let f = c.job.failure().expect("step 0 failed on 3 workers");
    assert!(
        f.contains("step 0")
            && f.contains("failed on 3 different workers")
            && f.contains("sequence ")
            && f.contains("out of memory"),
        "{f}"
    );
}

#[test]
fn a_hung_worker_misses_its_deadline_and_the_view_goes_on_without_it() {
    let want = reference(4, 8);
    let mut c = Cluster::new(Job::new(
        trainer(4, 8),
        JobConfig {
            deadline: DeadlinePolicy::Fixed(Duration::from_millis(500)),
            ..cfg(2)
        },
    ));
    c.join("good", Fault::None);
    let hung = c.join("hung", Fault::Hang);
    c.round();
    assert_eq!(
        c.job.trainer().cursor().global,
        0,
        "the hung member holds step 0 up"
    );
    // past its deadline: the view goes on without it
    c.now += Duration::from_millis(600);
    for w in &c.workers {
        c.job.heartbeat(&me(&w.id), c.now).unwrap();
    }
    c.job.tick(c.now);
    let notices = c.notices();
    assert!(
        notices
            .iter()
            .any(|n| matches!(n, Notice::DeadlinePassed { name, step: 0, .. } if name == "hung")),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|n| matches!(n, Notice::ViewStarted { members, .. } if members == &["good"])),
        "{notices:?}"
    );
    c.workers[hung].view = None;
    // it keeps its heartbeat, and misses a deadline per period until it is evicted
    for _ in 0..4 {
        c.now += Duration::from_millis(500);
        for w in &c.workers {
            let _ = c.job.heartbeat(&me(&w.id), c.now);
        }
        c.job.tick(c.now);
        c.round();
    }
    let notices = c.notices();
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Left { name, evicted: true, reason, .. } if name == "hung" && reason.contains("missed its shard deadline 3 times"))),
        "{notices:?}"
    );
    c.workers.remove(hung);
    c.run(100);
    let d = max_diff(c.job.trainer().params(), &want);
    assert!(d < 1e-6, "max difference {d}");
}

#[test]
fn a_huge_gradient_waits_for_a_second_opinion_and_its_worker_is_evicted() {
    let want = reference(6, 12);
    let mut c = Cluster::new(Job::new(trainer(6, 12), cfg(3)));
    c.join("a", Fault::None);
    c.join("b", Fault::None);
    let liar = c.join("liar", Fault::None);
    c.run(4);
    assert!(c.job.trainer().cursor().global >= 2);
    c.workers[liar].fault = Fault::Corrupt;
    c.run(100);
    let notices = c.notices();
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Held { name, why, .. } if name == "liar" && why.contains("median"))),
        "{notices:?}"
    );
    assert!(
        notices.iter().any(
            |n| matches!(n, Notice::Checked { first, disagreement: Some(_), .. } if first == "liar")
        ),
        "{notices:?}"
    );
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Left { name, evicted: true, reason, .. } if name == "liar" && reason.contains("disagreed with a second opinion"))),
        "{notices:?}"
    );
    assert!(c.job.failure().is_none());
    let d = max_diff(c.job.trainer().params(), &want);
    assert!(
        d < 1e-5,
        "nothing of the liar's was committed: max difference {d}"
    );
}

#[test]
fn a_lone_workers_first_results_are_checked_by_the_coordinator() {
    let mut c = Cluster::new(Job::new(
        trainer(4, 6),
        JobConfig {
            verify_first: 3,
            ..cfg(1)
        },
    ));
    c.join("alone", Fault::None);
    c.run(100);
    let notices = c.notices();
    let held = notices
        .iter()
        .filter(|n| matches!(n, Notice::Held { why, .. } if why.contains("first results")))
        .count();
    let agreed = notices
        .iter()
        .filter(|n| {
            matches!(
                n,
                Notice::Checked {
                    disagreement: None,
                    ..
                }
            )
        })
        .count();
    assert_eq!((held, agreed), (3, 3), "{notices:?}");
    assert_eq!(c.commits, 6);
}

#[test]
fn bounds_no_lstm_can_break_are_refused_and_counted() {
    let mut c = Cluster::new(Job::new(trainer(4, 4), cfg(1)));
    let a = c.join("a", Fault::None);
    c.pull();
    let id = c.workers[a].id.clone();
    let view = c.workers[a].view.as_ref().unwrap().id;
    let mut h = vec![0.0; 2 * 4 * 4];
    h[5] = 1.5;
    let finals = SlotStates::from_flat(2, 4, 4, h, vec![0.0; 32]).unwrap();
    let bad = StepRecord {
        step: 0,
        record: Record::Computed(Computed {
            loss_sum: 1.0,
            finals,
            grad_norm: 1.0,
            compute_ms: 1.0,
        }),
    };
    c.job
        .report(&me(&id), view, vec![Ok(bad)], 0.0, c.now)
        .unwrap();
    let notices = c.notices();
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Refused { why, .. } if why.contains("|h| <= 1") && why.contains("1.5"))),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|n| matches!(n, Notice::ViewStarted { after: Some(_), .. })),
        "the step is computed again in a new view: {notices:?}"
    );
}

#[test]
fn stale_unassigned_and_duplicate_records_are_refused() {
    let mut c = Cluster::new(Job::new(trainer(4, 20), cfg(1)));
    let a = c.join("a", Fault::None);
    c.run(3);
    let id = c.workers[a].id.clone();
    let view = c.workers[a].view.as_ref().unwrap().id;
    let cursor = c.job.trainer().cursor().global;
    let computed = |step| StepRecord {
        step,
        record: Record::Computed(Computed {
            loss_sum: 1.0,
            finals: SlotStates::zeros(2, 4, 4),
            grad_norm: 1.0,
            compute_ms: 1.0,
        }),
    };
    let e = c
        .job
        .report(&me(&id), view, vec![Ok(computed(0))], 0.0, c.now)
        .unwrap_err();
    assert!(
        matches!(&e, Refusal::Stale(m) if m.contains("already committed")),
        "{e}"
    );
    let e = c
        .job
        .report(&me(&id), view, vec![Ok(computed(cursor + 15))], 0.0, c.now)
        .unwrap_err();
    assert!(
        matches!(&e, Refusal::NotAssigned(m) if m.contains("has not been assigned")),
        "{e}"
    );
    let e = c
        .job
        .report(&me(&id), view + 7, vec![Ok(computed(cursor))], 0.0, c.now)
        .unwrap_err();
    assert!(
        matches!(&e, Refusal::Stale(m) if m.contains("is over")),
        "{e}"
    );
    // a second Computed for a step already reported
    c.pull();
    let w = &mut c.workers[a];
    let mut work = w.work.remove(&w.at).unwrap();
    work.data.init = w.carried.clone().unwrap();
    let m = c.job.trainer().spec().model.clone();
    let out = work
        .data
        .compute(&mut c.engine, &m, &w.replica.as_ref().unwrap().params)
        .unwrap();
    let rec = StepRecord {
        step: w.at,
        record: Record::Computed(Computed {
            loss_sum: out.loss_sum,
            finals: out.final_state,
            grad_norm: 1.0,
            compute_ms: 1.0,
        }),
    };
    c.job
        .report(&me(&id), view, vec![Ok(rec.clone())], 0.0, c.now)
        .unwrap();
    let e = c
        .job
        .report(&me(&id), view, vec![Ok(rec)], 0.0, c.now)
        .unwrap_err();
    assert!(
        matches!(&e, Refusal::Stale(m) if m.contains("already reported")),
        "{e}"
    );
    // a record that did not decode is refused and counted
    let e = c
        .job
        .report(
            &me(&id),
            view,
            vec![Err((
                cursor,
                proto::convert::WireError::Missing { what: "h".into() },
            ))],
            0.0,
            c.now,
        )
        .unwrap_err();
    assert!(
        matches!(&e, Refusal::Invalid(m) if m.contains("h: missing")),
        "{e}"
    );
}

#[test]
fn a_peer_fault_counts_once_against_the_member_that_sent_it() {
    let mut c = Cluster::new(Job::new(trainer(6, 8), cfg(3)));
    for n in ["a", "b", "c"] {
        c.join(n, Fault::None);
    }
    c.pull();
    let view = c.workers[0].view.as_ref().unwrap().id;
    let step = c.job.trainer().cursor().global;
    for reporter in [0usize, 2] {
        let id = c.workers[reporter].id.clone();
        let rec = StepRecord {
            step,
            record: Record::PeerFault {
                member: 1,
                reason: "chunk 0: expected shape (10), got (9)".into(),
            },
        };
        let _ = c.job.report(&me(&id), view, vec![Ok(rec)], 0.0, c.now);
    }
    let notices = c.notices();
    let refused: Vec<_> = notices
        .iter()
        .filter_map(|n| match n {
            Notice::Refused { name, why, .. } => Some((name.clone(), why.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "b");
    assert!(
        refused[0].1.contains("could not use what it sent"),
        "{refused:?}"
    );
}

#[test]
fn a_replica_whose_digest_differs_is_evicted() {
    let mut c = Cluster::new(Job::new(trainer(4, 8), cfg(2)));
    c.join("a", Fault::None);
    c.join("drifted", Fault::Digest);
    c.run(3);
    let notices = c.notices();
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Left { name, evicted: true, reason, .. } if name == "drifted" && reason.contains("differ from the committed ones"))),
        "{notices:?}"
    );
}

#[test]
fn a_joining_worker_waits_for_a_drain_and_nothing_is_computed_twice() {
    let want = reference(6, 16);
    let mut c = Cluster::new(Job::new(trainer(6, 16), cfg(1)));
    c.join("a", Fault::None);
    c.run(3);
    let late = c.join("late", Fault::None);
    c.run(100);
    assert!(c.job.failure().is_none());
    let notices = c.notices();
    assert!(
        notices.iter().any(|n| matches!(n, Notice::ViewStarted { members, after: Some(why), .. } if members.len() == 2 && why.contains("late joined"))),
        "{notices:?}"
    );
    assert!(c.workers[late].computed > 0, "the joiner computed");
    let total = c.job.trainer().total_steps();
    assert_eq!(
        c.workers[0].computed, total,
        "a drain recomputes nothing: the first worker computed every step once"
    );
    assert_eq!(c.commits, total);
    let d = max_diff(c.job.trainer().params(), &want);
    assert!(d < 1e-6, "max difference {d}");
}

#[test]
fn a_commit_that_would_make_parameters_non_finite_is_not_applied() {
    let mut c = Cluster::new(Job::new(trainer(4, 4), cfg(1)));
    let a = c.join("a", Fault::None);
    c.pull();
    let before = c.job.trainer().params().to_vec();
    let id = c.workers[a].id.clone();
    let v = c.workers[a].view.clone().unwrap();
    let n = before.len();
    let computed = StepRecord {
        step: 0,
        record: Record::Computed(Computed {
            loss_sum: 1.0,
            finals: SlotStates::zeros(2, 4, 4),
            grad_norm: 1.0,
            compute_ms: 1.0,
        }),
    };
    let mut g = vec![0.0f32; n];
    g[0] = f32::MAX; // squared, Adam's second moment overflows
    let chunks = owned_chunks(v.chunks, 1, 0)
        .map(|k| g[model::replica::chunk_range(n, v.chunks, k)].to_vec())
        .collect();
    let reduced = StepRecord {
        step: 0,
        record: Record::Reduced(Reduced {
            chunks,
            digest: 1,
            ..Default::default()
        }),
    };
    c.job
        .report(&me(&id), v.id, vec![Ok(computed), Ok(reduced)], 0.0, c.now)
        .unwrap();
    let f = c.job.failure().expect("the job stops");
    assert!(f.contains("not committed") && f.contains("finite"), "{f}");
    assert_eq!(c.job.trainer().params(), &before[..], "nothing was applied");
    assert_eq!(c.job.trainer().cursor().global, 0);
}
