//! Failures survived: a worker SIGKILLed mid-epoch, the coordinator SIGKILLed and resumed, a
//! worker joining a running job, and a job left with no workers at all.

use std::time::Duration;

use carry_it::{
    JOB, Proc, TempDir, assert_step_log, max_diff, metrics, params, reference, wait_rows,
};

/// A worker slowed to about `ms` per shard, so the test can act mid-run.
fn worker(name: &str, url: &str, ms: &str, dir: &TempDir) -> Proc {
    carry_it::worker(name, url, &["--throttle-ms", ms], dir)
}

fn coordinator(name: &str, dir: &TempDir, out: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["train", "--out", out];
    args.extend_from_slice(JOB);
    args.extend_from_slice(extra);
    Proc::coordinator(name, &args, &[], dir.path())
}

#[test]
fn a_killed_worker_is_replaced_and_nothing_is_lost_or_repeated() {
    let dir = TempDir::new("worker-kill");
    let want = reference(&dir, "ref", &[]);
    let out = dir.join("run");
    let mut c = coordinator(
        "coordinator",
        &dir,
        out.to_str().unwrap(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--lease-ms",
            "800",
        ],
    );
    let url = format!("http://{}", c.ready());
    let _a = worker("alpha", &url, "30", &dir);
    let mut b = worker("bravo", &url, "30", &dir);
    wait_rows(&out, 12, Duration::from_secs(60), &c);
    b.kill9();
    let _r = worker("replacement", &url, "30", &dir);
    c.success(Duration::from_secs(120));
    let d = max_diff(&params(&out), &want);
    c.check(
        d <= 1e-4,
        &format!("max parameter difference {d} after a worker was killed"),
    );
    let rows = metrics(&out);
    assert_step_log(&rows, 50);
    assert!(
        rows.iter().any(|r| r.shards.contains("replacement")),
        "the replacement got shards"
    );
    assert!(
        c.log().contains("lease expired"),
        "the dead worker was detected by its lease"
    );
}

#[test]
fn a_killed_coordinator_resumes_from_its_checkpoint() {
    let dir = TempDir::new("coordinator-kill");
    let want = reference(&dir, "ref", &[]);
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let mut c = coordinator(
        "coordinator-1",
        &dir,
        out_s,
        &["--listen", "127.0.0.1:0", "--checkpoint-every", "5"],
    );
    let addr = c.ready();
    let url = format!("http://{addr}");
    let _a = worker("alpha", &url, "30", &dir);
    let _b = worker("bravo", &url, "30", &dir);
    wait_rows(&out, 18, Duration::from_secs(60), &c);
    c.kill9();
    let ck = model::checkpoint::Checkpoint::load(&out).expect("a checkpoint survives the kill");
    assert!(
        ck.cursor.global >= 10 && ck.cursor.global.is_multiple_of(5),
        "checkpoint at step {}",
        ck.cursor.global
    );
    let mut c2 = coordinator(
        "coordinator-2",
        &dir,
        out_s,
        &["--listen", &addr, "--resume", out_s],
    );
    c2.ready();
    c2.success(Duration::from_secs(120));
    c2.check(c2.log().contains("resumed from checkpoint"), "resumed");
    let d = max_diff(&params(&out), &want);
    c2.check(
        d <= 1e-4,
        &format!("max parameter difference {d} after the coordinator was killed"),
    );
    assert_step_log(&metrics(&out), 50);
}

#[test]
fn workers_join_a_running_job_and_an_empty_job_waits() {
    let dir = TempDir::new("elastic");
    let want = reference(&dir, "ref", &[]);
    let out = dir.join("run");
    let mut c = coordinator(
        "coordinator",
        &dir,
        out.to_str().unwrap(),
        &["--listen", "127.0.0.1:0", "--lease-ms", "800"],
    );
    let url = format!("http://{}", c.ready());
    let mut a = worker("alpha", &url, "30", &dir);
    wait_rows(&out, 5, Duration::from_secs(60), &c);
    let mut b = worker("bravo", &url, "30", &dir);
    wait_rows(&out, 20, Duration::from_secs(60), &c);
    assert!(
        metrics(&out).iter().any(|r| r.shards.contains("bravo")),
        "the joiner got shards"
    );
    // all workers gone: one leaves on SIGTERM, one dies
    a.signal(libc::SIGTERM);
    a.success(Duration::from_secs(30));
    b.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    let stalled = metrics(&out).len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(metrics(&out).len(), stalled, "no progress without workers");
    let gone = c.exited();
    c.check(
        !gone,
        "the coordinator waits for workers instead of failing",
    );
    let _d = worker("delta", &url, "0", &dir);
    c.success(Duration::from_secs(120));
    let d = max_diff(&params(&out), &want);
    c.check(d <= 1e-4, &format!("max parameter difference {d}"));
    assert_step_log(&metrics(&out), 50);
    assert!(
        a.log().contains("left the job"),
        "SIGTERM makes the worker leave cleanly"
    );
}
