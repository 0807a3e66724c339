//! Chaos drills: one run of a real coordinator and workers while workers are killed and
//! replaced, frozen past their lease and thawed, a participant hands in corrupted results, and the
//! coordinator is killed and resumed. The run must end equal to the in-process reference with
//! every step in `metrics.csv` exactly once. [`Plan::all_once`] is the short drill of the test
//! suite; [`Plan::seeded`] a longer random one (`scripts/chaos.sh`). Every injection is printed.

use std::time::Duration;

use crate::{Proc, TempDir, assert_step_log, max_diff, metrics, params, wait_rows, worker};

/// Lease of the drill's coordinator: short, so that frozen workers are noticed quickly.
const LEASE_MS: u64 = 800;

/// Something done to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// SIGKILL a healthy worker and start a replacement.
    KillWorker,
    /// SIGSTOP a healthy worker for twice the lease, then SIGCONT.
    FreezeWorker,
    /// A participant that hands in finite but huge gradients joins.
    Liar,
    /// SIGKILL the coordinator and resume it from its checkpoint on the same address.
    KillCoordinator,
}

/// When to inject what: after the step log has reached a number of rows.
#[derive(Debug, Clone)]
pub struct Plan {
    steps: u64,
    events: Vec<(usize, Injection)>,
    args: Vec<String>,
}

impl Plan {
    fn new(steps: u64, events: Vec<(usize, Injection)>) -> Self {
        let args = [
            "--sequences",
            "200",
            "--val-sequences",
            "40",
            "--batch-size",
            "10",
            "--epochs",
            "1000",
            "--seed",
            "7",
            "--progress",
            "log",
            "--checkpoint-every",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--steps".to_string(), steps.to_string()])
        .collect();
        Self {
            steps,
            events,
            args,
        }
    }

    /// Each injection once, in a 60-step run.
    pub fn all_once() -> Self {
        Self::new(
            60,
            vec![
                (6, Injection::Liar),
                (14, Injection::KillWorker),
                (24, Injection::FreezeWorker),
                (34, Injection::KillCoordinator),
            ],
        )
    }

    /// `rounds` random injections, one every 20 steps or so, drawn from `seed`.
    pub fn seeded(seed: u64, rounds: usize) -> Self {
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut next = || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x >> 33
        };
        let kinds = [
            Injection::KillWorker,
            Injection::FreezeWorker,
            Injection::Liar,
            Injection::KillCoordinator,
        ];
        let mut at = 5usize;
        let events = (0..rounds)
            .map(|_| {
                at += 12 + (next() % 16) as usize;
                (at, kinds[(next() % 4) as usize])
            })
            .collect();
        Self::new(at as u64 + 30, events)
    }

    /// The training arguments of the run (also those of its reference).
    pub fn job_args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }
}

fn say(msg: &str) {
    eprintln!("chaos: {msg}");
}

/// Runs `plan` in `dir`: the reference first, then the drill; panics if anything was lost.
pub fn run(dir: &TempDir, plan: &Plan) {
    let job = plan.job_args();
    let ref_out = dir.join("ref");
    let mut args = vec![
        "train",
        "--spawn-workers",
        "0",
        "--out",
        ref_out.to_str().unwrap(),
    ];
    args.extend_from_slice(&job);
    Proc::coordinator("ref", &args, &[], dir.path()).success(Duration::from_secs(300));
    let want = params(&ref_out);

    let out = dir.join("run");
    let out_s = out.to_str().unwrap().to_string();
    let lease = LEASE_MS.to_string();
    let coordinator = |name: &str, listen: &str, resume: bool| {
        let mut args = vec![
            "train",
            "--listen",
            listen,
            "--out",
            &out_s,
            "--lease-ms",
            &lease,
            "--evict-backoff-ms",
            "500",
            "--workers",
            "2",
        ];
        if resume {
            args.extend_from_slice(&["--resume", &out_s]);
        }
        args.extend_from_slice(&job);
        Proc::coordinator(name, &args, &[], dir.path())
    };
    let mut c = coordinator("coordinator-1", "127.0.0.1:0", false);
    let addr = c.ready();
    let url = format!("http://{addr}");
    let throttle = ["--throttle-ms", "30"];
    let mut healthy: Vec<Proc> = ["alpha", "bravo", "charlie"]
        .iter()
        .map(|n| worker(n, &url, &throttle, dir))
        .collect();
    let mut spare = 0;
    let mut liars = Vec::new();
    let mut restarts = 1;
    for (k, &(row, what)) in plan.events.iter().enumerate() {
        wait_rows(&out, row, Duration::from_secs(120), &c);
        let step = metrics(&out).len();
        match what {
            Injection::KillWorker => {
                let i = k % healthy.len();
                healthy[i].kill9();
                spare += 1;
                let name = format!("spare-{spare}");
                say(&format!(
                    "step {step}: SIGKILL a worker, start {name} in its place"
                ));
                healthy[i] = worker(&name, &url, &throttle, dir);
            }
            Injection::FreezeWorker => {
                let i = (k + 1) % healthy.len();
                say(&format!(
                    "step {step}: SIGSTOP a worker for {} ms (its lease is {LEASE_MS} ms), then SIGCONT",
                    2 * LEASE_MS
                ));
                healthy[i].signal(libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(2 * LEASE_MS));
                healthy[i].signal(libc::SIGCONT);
            }
            Injection::Liar => {
                let name = format!("liar-{}", liars.len() + 1);
                say(&format!(
                    "step {step}: {name} joins and hands in gradients 1e25 times too large"
                ));
                liars.push(worker(&name, &url, &["--fault", "corrupt:0"], dir));
            }
            Injection::KillCoordinator => {
                c.kill9();
                restarts += 1;
                let ck = model::checkpoint::Checkpoint::load(&out)
                    .expect("a checkpoint survives the kill");
                say(&format!(
                    "step {step}: SIGKILL the coordinator; resume it from its checkpoint at step {}",
                    ck.cursor.global
                ));
                c = coordinator(&format!("coordinator-{restarts}"), &addr, true);
                c.ready();
            }
        }
    }
    c.success(Duration::from_secs(300));
    let rows = metrics(&out);
    assert_step_log(&rows, plan.steps);
    let d = max_diff(&params(&out), &want);
    c.check(
        d <= 1e-4,
        &format!("max parameter difference {d} from the reference after the drill"),
    );
    say(&format!(
        "nothing lost: {} steps, each in metrics.csv exactly once; parameters within {d:.2e} of the reference",
        rows.len()
    ));
}
