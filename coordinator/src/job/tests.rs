//! The job's rules on a fake clock: planning, commit, leases, refusals and evictions, deadlines,
//! screening and second opinions.

use std::sync::Arc;

use data::windows::{SyntheticSpec, synthetic};
use model::config::{ModelConfig, TrainSpec};
use model::engine::cpu::CpuEngine;

use super::*;

fn spec(batch: usize, steps: u64) -> TrainSpec {
    TrainSpec {
        model: ModelConfig {
            hidden: 4,
            ..ModelConfig::seed()
        },
        adam: Default::default(),
        batch_size: batch,
        epochs: 1,
        max_steps: Some(steps),
        seed: 5,
        reset: Default::default(),
        val_state: Default::default(),
        clip_norm: None,
        compat: Default::default(),
        ..Default::default()
    }
}

fn trainer(batch: usize) -> Trainer {
    trainer_steps(batch, 4)
}

fn trainer_steps(batch: usize, steps: u64) -> Trainer {
    let data = synthetic(&SyntheticSpec {
        sequences: batch * 6,
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
        ..JobConfig::default()
    }
}

fn me(id: &str) -> Caller<'_> {
    Caller::id(id)
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
    match job.poll(&me(w), now).unwrap() {
        Poll::Assign(a) => *a,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

fn register(job: &mut Job, name: &str, now: Instant) -> String {
    job.register(name, None, now).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs local checks the way the service does.
fn run_local_checks(job: &mut Job, now: Instant) -> usize {
    let checks = job.local_checks(now);
    let n = checks.len();
    for c in checks {
        let m = job.trainer().spec().model.clone();
        let out = c
            .data
            .compute(&mut CpuEngine::new(&m, 1), &m, &c.params)
            .unwrap();
        let sub = Submission {
            step: c.step,
            shard: c.shard,
            loss_sum: out.loss_sum,
            grad: out.grad,
            finals: out.final_state,
            compute_ms: 0.0,
        };
        job.submit_local(sub, now).unwrap();
    }
    n
}

#[test]
fn waits_for_workers_then_shards_and_commits_once() {
    let t0 = Instant::now();
    let mut job = Job::new(trainer(6), cfg(2));
    let w1 = register(&mut job, "one", t0);
    assert!(matches!(job.poll(&me(&w1), t0).unwrap(), Poll::Wait(r) if r.contains("1 of 2")));
    let w2 = register(&mut job, "two", t0);
    // the step is planned once both have polled
    let a2 = assign(&mut job, &w2, t0);
    let a1 = assign(&mut job, &w1, t0);
    assert_eq!((a1.first_slot, a1.data.slots.len()), (0, 3));
    assert_eq!((a2.first_slot, a2.data.slots.len()), (3, 3));
    // re-polling returns the same shard (idempotent delivery)
    assert_eq!(assign(&mut job, &w1, t0).shard, a1.shard);
    let s1 = compute(&job, &a1);
    let s2 = compute(&job, &a2);
    // a shard that belongs to someone else, before its owner hands it in
    let mut theirs = s2.clone();
    theirs.step = a2.plan.cursor.global;
    let e = job.admit(&me(&w1), 0, a2.shard).unwrap_err();
    assert!(
        matches!(&e, Refusal::NotAssigned(m) if m.contains("not assigned to this worker")),
        "{e}"
    );
    assert!(
        !e.to_string().contains(&w2),
        "a refusal never names another worker's id"
    );
    assert!(matches!(
        job.submit(&me(&w1), theirs, t0),
        Err(Refusal::NotAssigned(_))
    ));
    assert!(matches!(
        job.submit(&me(&w1), s1.clone(), t0).unwrap(),
        Submitted::Accepted
    ));
    // duplicate
    assert!(matches!(
        job.submit(&me(&w1), s1.clone(), t0),
        Err(Refusal::Stale(_))
    ));
    match job.submit(&me(&w2), s2.clone(), t0).unwrap() {
        Submitted::Committed(r) => {
            assert_eq!(r.committed.cursor.global, 0);
            assert_eq!(r.shards.len(), 2);
        }
        other => panic!("expected a commit, got {other:?}"),
    }
    // late submission for the committed step
    let e = job.submit(&me(&w2), s2, t0).unwrap_err();
    assert!(
        matches!(&e, Refusal::Stale(m) if m.contains("already committed")),
        "{e}"
    );
    assert_eq!(job.trainer().cursor().global, 1);
}

#[test]
fn worker_ids_are_secrets_and_act_only_for_their_worker() {
    let t0 = Instant::now();
    let mut job = Job::new(trainer(4), cfg(1));
    let a = register(&mut job, "a", t0);
    let b = register(&mut job, "b", t0);
    assert_eq!(a.len(), 32, "128 bits in hex");
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
    // a guessed or derived id acts for nobody
    for guess in ["w1-a", "w2", &a[..31], "", &format!("{a}0")] {
        assert_eq!(job.heartbeat(&me(guess), t0), Err(Refusal::UnknownWorker));
        assert_eq!(job.leave(&me(guess)), Err(Refusal::UnknownWorker));
    }
    // bound to the client certificate it registered with
    let c = job.register("c", Some(b"cert-c"), t0).unwrap();
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
}

#[test]
fn membership_is_bounded_and_silent_members_get_no_shards() {
    let t0 = Instant::now();
    let mut job = Job::new(
        trainer(4),
        JobConfig {
            max_workers: 2,
            ..cfg(1)
        },
    );
    let a = register(&mut job, "a", t0);
    let _silent = register(&mut job, "silent", t0);
    let e = job.register("flood", None, t0).unwrap_err();
    assert!(
        matches!(&e, Refusal::Full(m) if m.contains("--max-workers")),
        "{e}"
    );
    // only `a` polls: the whole batch is its shard, none is planned for the silent member
    let sh = assign(&mut job, &a, t0);
    assert_eq!(sh.data.slots.len(), 4);
}

#[test]
fn dead_worker_shard_moves_and_result_equals_reference() {
    let t0 = Instant::now();
    let lease = Duration::from_secs(3);
    let mut job = Job::new(trainer(6), cfg(2));
    let mut reference = trainer(6);
    let mut eng = CpuEngine::new(&reference.spec().model, 1);
    let w1 = register(&mut job, "one", t0);
    let w2 = register(&mut job, "two", t0);
    let mut now = t0;
    assert!(matches!(job.poll(&me(&w2), now).unwrap(), Poll::Wait(_)));
    // step 0 normally; step 1: w2 dies holding its shard; step 2..: w1 alone
    for step in 0..4u64 {
        reference.step_local(&mut eng).unwrap();
        let a1 = assign(&mut job, &w1, now);
        let s1 = compute(&job, &a1);
        if step == 0 {
            let a2 = assign(&mut job, &w2, now);
            let s2 = compute(&job, &a2);
            job.submit(&me(&w1), s1, now).unwrap();
            job.submit(&me(&w2), s2, now).unwrap();
            continue;
        }
        if step == 1 {
            let _ = assign(&mut job, &w2, now); // w2 takes its shard and dies
            job.submit(&me(&w1), s1, now).unwrap();
            assert!(matches!(job.poll(&me(&w1), now).unwrap(), Poll::Wait(_)));
            now += lease + Duration::from_millis(1);
            job.heartbeat(&me(&w1), now - Duration::from_millis(2))
                .unwrap();
            job.tick(now);
            assert!(matches!(
                &job.take_notices()[..],
                [Notice::Left { name, reason, evicted: false, .. }] if name == "two" && reason == "lease expired"
            ));
            let orphan = assign(&mut job, &w1, now);
            assert_eq!(orphan.first_slot, 3);
            let s = compute(&job, &orphan);
            assert!(matches!(
                job.submit(&me(&w1), s, now).unwrap(),
                Submitted::Committed(_)
            ));
            // the dead worker's id is refused from now on
            assert!(matches!(
                job.poll(&me(&w2), now),
                Err(Refusal::UnknownWorker)
            ));
            continue;
        }
        job.submit(&me(&w1), s1, now).unwrap();
    }
    assert!(job.is_finished());
    let diff = max_diff(job.trainer().params(), reference.params());
    assert!(diff <= 1e-5, "max diff {diff}");
    assert!(matches!(
        job.poll(&me(&w1), now).unwrap(),
        Poll::Finished(_)
    ));
}

#[test]
fn a_faulty_worker_is_evicted_and_backs_off_but_the_job_goes_on() {
    let t0 = Instant::now();
    let mut job = Job::new(trainer(4), cfg(2));
    let bad = register(&mut job, "bad", t0);
    let good = register(&mut job, "good", t0);
    let mut now = t0;
    assert!(matches!(job.poll(&me(&good), now).unwrap(), Poll::Wait(_)));
    for round in 0..3 {
        let a = assign(&mut job, &bad, now);
        let mut s = compute(&job, &a);
        s.grad.pop();
        let e = job.submit(&me(&bad), s, now).unwrap_err();
        assert!(
            matches!(&e, Refusal::Invalid(m) if m.contains("grad")),
            "{e}"
        );
        assert!(job.failure().is_none(), "one worker never fails the job");
        if round < 2 {
            // the good worker computes its own shard, then the refused one
            let mine = assign(&mut job, &good, now);
            let sg = compute(&job, &mine);
            job.submit(&me(&good), sg, now).unwrap();
        }
        now += Duration::from_millis(10);
    }
    let notices = job.take_notices();
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Left { name, evicted: true, reason, .. } if name == "bad" && reason.contains("3 of its results were refused"))),
        "{notices:?}"
    );
    // evicted: its id now says so, and it may come back only after the back-off
    let e = job.poll(&me(&bad), now).unwrap_err();
    assert!(
        matches!(&e, Refusal::Evicted(m) if m.contains("refused")),
        "{e}"
    );
    let e = job.register("bad", None, now).unwrap_err();
    let Refusal::Backoff { retry_after, .. } = e else {
        panic!("expected a back-off, got {e:?}")
    };
    assert!(retry_after <= Duration::from_secs(5) && retry_after > Duration::ZERO);
    // meanwhile the good worker finishes the step alone, with the evicted worker's shard
    while !job.is_finished() {
        let a = assign(&mut job, &good, now);
        let s = compute(&job, &a);
        job.submit(&me(&good), s, now).unwrap();
    }
    assert!(job.failure().is_none());
    now += Duration::from_secs(6);
    job.register("bad", None, now)
        .expect("registers after the back-off");
}

#[test]
fn the_job_fails_only_when_one_shard_fails_on_several_workers() {
    let t0 = Instant::now();
    let mut job = Job::new(trainer(4), cfg(1));
    let names = ["a", "b", "c"];
    let ids: Vec<String> = names.iter().map(|n| register(&mut job, n, t0)).collect();
    // each worker in turn reports that it cannot compute the same shard
    let first = assign(&mut job, &ids[0], t0);
    job.refuse(&me(&ids[0]), 0, first.shard, "engine: out of memory", t0);
    for (i, id) in ids.iter().enumerate().skip(1) {
        assert!(job.failure().is_none(), "after {i} workers");
        // let the others finish their own shards, then take the refused one
        loop {
            let a = assign(&mut job, id, t0);
            if a.shard == first.shard {
                break;
            }
            let s = compute(&job, &a);
            job.submit(&me(id), s, t0).unwrap();
        }
        job.refuse(&me(id), 0, first.shard, "engine: out of memory", t0);
    }
    let f = job.failure().expect("the shard failed on 3 workers");
    assert!(
        f.contains("failed on 3 different workers")
            && f.contains("sequence 0, sequence 1")
            && f.contains("out of memory"),
        "{f}"
    );
}

#[test]
fn a_hung_worker_misses_its_deadline_and_another_takes_the_shard() {
    let t0 = Instant::now();
    let deadline = Duration::from_secs(2);
    let mut job = Job::new(
        trainer(4),
        JobConfig {
            deadline: DeadlinePolicy::Fixed(deadline),
            lease: Duration::from_secs(600),
            ..cfg(2)
        },
    );
    let mut reference = trainer(4);
    let mut eng = CpuEngine::new(&reference.spec().model, 1);
    let hung = register(&mut job, "hung", t0);
    let fast = register(&mut job, "fast", t0);
    assert!(matches!(job.poll(&me(&hung), t0).unwrap(), Poll::Wait(_)));
    let af = assign(&mut job, &fast, t0);
    let ah = assign(&mut job, &hung, t0);
    assert_eq!(ah.deadline, deadline);
    let sf = compute(&job, &af);
    job.submit(&me(&fast), sf, t0).unwrap();
    // before the deadline nobody else gets the hung worker's shard
    assert!(matches!(job.poll(&me(&fast), t0).unwrap(), Poll::Wait(_)));
    let mut now = t0 + deadline + Duration::from_millis(1);
    assert!(job.tick(now));
    assert!(
        job.take_notices()
            .iter()
            .any(|n| matches!(n, Notice::DeadlinePassed { name, .. } if name == "hung"))
    );
    let dup = assign(&mut job, &fast, now);
    assert_eq!(dup.shard, ah.shard);
    let s = compute(&job, &dup);
    assert!(matches!(
        job.submit(&me(&fast), s.clone(), now).unwrap(),
        Submitted::Committed(_)
    ));
    reference.step_local(&mut eng).unwrap();
    // the hung worker's late result is stale
    let late = Submission { ..s };
    assert!(matches!(
        job.submit(&me(&hung), late, now),
        Err(Refusal::Stale(_))
    ));
    // a worker stuck past its deadline gets no shard of the next step, which runs on the others
    let next = assign(&mut job, &fast, now);
    assert_eq!(
        next.data.slots.len(),
        4,
        "the next step is planned without it"
    );
    let sn = compute(&job, &next);
    job.submit(&me(&fast), sn, now).unwrap();
    reference.step_local(&mut eng).unwrap();
    // a worker stuck for 3 deadline periods is evicted
    let _ = job.take_notices();
    for _ in 0..2 {
        now += deadline + Duration::from_millis(1);
        job.tick(now);
    }
    let notices = job.take_notices();
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Left { name, evicted: true, reason, .. } if name == "hung" && reason.contains("deadline 3 times"))),
        "{notices:?}"
    );
    assert_eq!(job.live_workers(), 1);
    while !job.is_finished() {
        let a = assign(&mut job, &fast, now);
        let s = compute(&job, &a);
        job.submit(&me(&fast), s, now).unwrap();
        reference.step_local(&mut eng).unwrap();
    }
    let d = max_diff(job.trainer().params(), reference.params());
    assert!(d <= 1e-6, "max diff {d}");
}

#[test]
fn a_huge_gradient_waits_for_a_second_opinion_and_its_worker_is_evicted() {
    let t0 = Instant::now();
    let mut job = Job::new(trainer_steps(4, 6), cfg(2));
    let mut reference = trainer_steps(4, 6);
    let mut eng = CpuEngine::new(&reference.spec().model, 1);
    let liar = register(&mut job, "liar", t0);
    let honest = register(&mut job, "honest", t0);
    let now = t0;
    assert!(matches!(
        job.poll(&me(&honest), now).unwrap(),
        Poll::Wait(_)
    ));
    // three honest steps build the statistic
    for _ in 0..3 {
        let a = assign(&mut job, &liar, now);
        let b = assign(&mut job, &honest, now);
        let (sa, sb) = (compute(&job, &a), compute(&job, &b));
        job.submit(&me(&liar), sa, now).unwrap();
        job.submit(&me(&honest), sb, now).unwrap();
        reference.step_local(&mut eng).unwrap();
    }
    // the liar hands in a finite but huge gradient
    let a = assign(&mut job, &liar, now);
    let b = assign(&mut job, &honest, now);
    let mut bad = compute(&job, &a);
    bad.grad.iter_mut().for_each(|g| *g *= 1e30);
    let sb = compute(&job, &b);
    let held = job.submit(&me(&liar), bad, now).unwrap();
    assert!(
        matches!(&held, Submitted::Held(why) if why.contains("median")),
        "{held:?}"
    );
    job.submit(&me(&honest), sb, now).unwrap();
    // the liar cannot check its own result; the honest worker gets it
    assert!(matches!(job.poll(&me(&liar), now).unwrap(), Poll::Wait(_)));
    let check = assign(&mut job, &honest, now);
    assert_eq!(check.shard, a.shard);
    let good = compute(&job, &check);
    // two results that differ: a third opinion decides, here the coordinator's own
    assert!(matches!(
        job.submit(&me(&honest), good, now).unwrap(),
        Submitted::Held(_)
    ));
    assert_eq!(run_local_checks(&mut job, now), 1);
    assert!(job.trainer().cursor().global == 4, "the step committed");
    reference.step_local(&mut eng).unwrap();
    let notices = job.take_notices();
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Left { name, evicted: true, reason, .. } if name == "liar" && reason.contains("second opinion"))),
        "{notices:?}"
    );
    let d = max_diff(job.trainer().params(), reference.params());
    assert!(d <= 1e-6, "the corrupt gradient was never committed: {d}");
    assert!(job.trainer().params().iter().all(|p| p.is_finite()));
}

#[test]
fn a_lone_workers_first_results_are_checked_by_the_coordinator() {
    let t0 = Instant::now();
    let mut job = Job::new(
        trainer(4),
        JobConfig {
            verify_first: 2,
            ..cfg(1)
        },
    );
    let mut reference = trainer(4);
    let mut eng = CpuEngine::new(&reference.spec().model, 1);
    let w = register(&mut job, "solo", t0);
    let mut held = 0;
    let mut local = 0;
    while !job.is_finished() {
        let a = assign(&mut job, &w, t0);
        let s = compute(&job, &a);
        if let Submitted::Held(_) = job.submit(&me(&w), s, t0).unwrap() {
            held += 1;
            local += run_local_checks(&mut job, t0);
        }
        reference.step_local(&mut eng).unwrap();
    }
    assert_eq!((held, local), (2, 2));
    assert_eq!(max_diff(job.trainer().params(), reference.params()), 0.0);
}

#[test]
fn bounds_no_lstm_can_break_are_refused_without_a_second_opinion() {
    let t0 = Instant::now();
    let mut job = Job::new(trainer(4), cfg(1));
    let w = register(&mut job, "w", t0);
    let a = assign(&mut job, &w, t0);
    let mut s = compute(&job, &a);
    let (h, c) = (s.finals.h().to_vec(), s.finals.c().to_vec());
    let mut h2 = h.clone();
    h2[0] = 1.5;
    s.finals = SlotStates::from_flat(2, 4, 4, h2, c).unwrap();
    let e = job.submit(&me(&w), s, t0).unwrap_err();
    assert!(
        matches!(&e, Refusal::Invalid(m) if m.contains("|h| <= 1")),
        "{e}"
    );
    let _ = h;
}

#[test]
fn a_commit_that_would_make_parameters_non_finite_is_not_applied() {
    let t0 = Instant::now();
    let mut job = Job::new(trainer(4), cfg(1));
    let w = register(&mut job, "w", t0);
    let a = assign(&mut job, &w, t0);
    let before = job.trainer().params().to_vec();
    let mut s = compute(&job, &a);
    s.grad[0] = f32::MAX; // squared, Adam's second moment overflows
    job.submit(&me(&w), s, t0).unwrap();
    let f = job.failure().expect("the job stops");
    assert!(f.contains("not committed") && f.contains("finite"), "{f}");
    assert_eq!(job.trainer().params(), &before[..], "nothing was applied");
    assert_eq!(job.trainer().cursor().global, 0);
}

#[test]
fn a_liar_giving_a_second_opinion_cannot_evict_an_honest_worker() {
    let t0 = Instant::now();
    let mut job = Job::new(
        trainer(4),
        JobConfig {
            verify_first: 2,
            ..cfg(2)
        },
    );
    let mut reference = trainer(4);
    let mut eng = CpuEngine::new(&reference.spec().model, 1);
    let honest = register(&mut job, "honest", t0);
    let liar = register(&mut job, "liar", t0);
    assert!(matches!(job.poll(&me(&liar), t0).unwrap(), Poll::Wait(_)));
    let a = assign(&mut job, &honest, t0);
    let b = assign(&mut job, &liar, t0);
    // both first results are held for a check by the other worker
    let sa = compute(&job, &a);
    let sb = compute(&job, &b);
    assert!(matches!(
        job.submit(&me(&honest), sa, t0).unwrap(),
        Submitted::Held(_)
    ));
    assert!(matches!(
        job.submit(&me(&liar), sb, t0).unwrap(),
        Submitted::Held(_)
    ));
    // the liar checks the honest result and lies; the honest worker checks the liar's truly
    let check = assign(&mut job, &liar, t0);
    assert_eq!(check.shard, a.shard);
    let mut lie = compute(&job, &check);
    lie.grad.iter_mut().for_each(|g| *g *= 3.0);
    assert!(matches!(
        job.submit(&me(&liar), lie, t0).unwrap(),
        Submitted::Held(_)
    ));
    let check2 = assign(&mut job, &honest, t0);
    assert_eq!(check2.shard, b.shard);
    let s2 = compute(&job, &check2);
    job.submit(&me(&honest), s2, t0).unwrap();
    // two results that differ on the honest shard: the coordinator decides
    assert_eq!(run_local_checks(&mut job, t0), 1);
    reference.step_local(&mut eng).unwrap();
    assert_eq!(job.trainer().cursor().global, 1, "the step committed");
    let notices = job.take_notices();
    let evicted: Vec<&str> = notices
        .iter()
        .filter_map(|n| match n {
            Notice::Left {
                name,
                evicted: true,
                ..
            } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(evicted, vec!["liar"], "{notices:?}");
    let d = max_diff(job.trainer().params(), reference.params());
    assert!(d <= 1e-6, "the lie was never committed: {d}");
}
