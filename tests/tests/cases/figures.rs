//! The throughput a user is shown is the throughput of the commits: the progress lines, the live
//! page, Prometheus and the DONE line agree with `metrics.csv`'s commit times over any window of
//! 20 steps, on a distributed run whose validation (long, at every epoch end) holds the reporter
//! up while steps keep committing behind it.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use carry_it::{Proc, TempDir, csv_records};

/// Sequences per second over the `n` steps ending at each step, from the commit times.
struct Commits {
    batch: f64,
    /// Commit time (ms) of each step, by step.
    at: Vec<f64>,
    /// Each step's time (ms), from the commit before it.
    step_ms: Vec<f64>,
}

impl Commits {
    fn read(out: &std::path::Path, batch: usize) -> Self {
        let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        let mut rows = csv_records(&text).into_iter();
        let header = rows.next().unwrap();
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        let (at, ms) = (col("unix_ms"), col("step_ms"));
        let (mut t, mut s) = (Vec::new(), Vec::new());
        for r in rows {
            t.push(r[at].parse::<f64>().unwrap());
            s.push(r[ms].parse::<f64>().unwrap());
        }
        Self {
            batch: batch as f64,
            at: t,
            step_ms: s,
        }
    }

    /// The rate over the (at most) 20 steps ending at `step`: from the commit times, and from the
    /// step times that metrics.csv states.
    fn window(&self, step: usize) -> (f64, f64) {
        let n = (step + 1).min(20);
        let a = step + 1 - n;
        let ms: f64 = self.step_ms[a..=step].iter().sum();
        let by_steps = n as f64 * self.batch / (ms / 1e3);
        let by_times = if a > 0 {
            n as f64 * self.batch / ((self.at[step] - self.at[a - 1]) / 1e3)
        } else {
            by_steps
        };
        (by_steps, by_times)
    }

    fn overall(&self) -> f64 {
        self.at.len() as f64 * self.batch / (self.step_ms.iter().sum::<f64>() / 1e3)
    }
}

fn close(shown: f64, want: f64) -> bool {
    (shown - want).abs() <= 0.05 * want
}

/// The body of `GET path`, or nothing when the server does not answer (yet).
fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let mut text = String::new();
    if write!(s, "GET {path} HTTP/1.0\r\nhost: x\r\n\r\n").is_err()
        || s.read_to_string(&mut text).is_err()
    {
        return String::new();
    }
    text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

fn gauge(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn progress_the_live_page_prometheus_and_done_agree_with_the_commit_times() {
    let dir = TempDir::new("figures");
    let out = dir.join("run");
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let batch = 10;
    let mut c = Proc::coordinator(
        "coordinator",
        &[
            "train",
            "--listen",
            "127.0.0.1:0",
            "--out",
            out.to_str().unwrap(),
            "--spawn-workers",
            "2",
            "--ui-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &metrics_addr,
            "--progress",
            "log",
            "--progress-every",
            "0.3",
            "--sequences",
            "400",
            // a validation long enough that many steps commit while it runs
            "--val-sequences",
            "6000",
            "--hidden",
            "16",
            "--epochs",
            "8",
            "--batch-size",
            &batch.to_string(),
            "--seed",
            "3",
        ],
        &[],
        dir.path(),
    );
    c.ready();
    let ui = c
        .wait_line(Duration::from_secs(60), "the status page's address", |l| {
            l.starts_with("UI http://")
        })
        .trim()
        .trim_start_matches("UI http://")
        .trim_end_matches('/')
        .to_string();
    // Prometheus, sampled while the job runs: the step and its rate; and the live page's
    // throughput history, as last seen
    let mut scraped = Vec::new();
    let mut status = String::new();
    let t0 = Instant::now();
    while !c.exited() && t0.elapsed() < Duration::from_secs(120) {
        let s = http_get(&ui, "/api/status");
        if !s.is_empty() {
            status = s;
        }
        let body = http_get(&metrics_addr, "/metrics");
        if let (Some(step), Some(rate)) = (
            gauge(&body, "carry_step"),
            gauge(&body, "carry_sequences_per_second"),
        ) && step >= 1.0
        {
            scraped.push((step as usize - 1, rate));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    c.success(Duration::from_secs(120));
    let commits = Commits::read(&out, batch);
    assert_eq!(commits.at.len(), 320, "40 steps per epoch, 8 epochs");
    // the step times metrics.csv states are the differences of its commit times
    for s in 20..commits.at.len() {
        let (steps, times) = commits.window(s);
        assert!(close(steps, times), "step {s}: {steps} vs {times}");
    }
    let mut checked = 0;
    // the progress lines
    for line in c.log().lines().filter(|l| l.contains("progress epoch=")) {
        let field = |k: &str| {
            line.split(&format!("{k}="))
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .map(|v| v.trim_matches('"').to_string())
        };
        let step: usize = field("step").unwrap().parse().unwrap();
        let shown: f64 = field("seq_per_s").unwrap().parse().unwrap();
        let (want, _) = commits.window(step - 1);
        assert!(
            close(shown, want),
            "progress at step {step}: {shown} seq/s, the commits say {want}: {line}"
        );
        checked += 1;
    }
    assert!(checked >= 3, "progress lines: {checked}");
    // the live page's throughput history
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let points = v["throughput"].as_array().unwrap();
    assert!(points.len() >= 20, "{} points", points.len());
    for p in points {
        let step = p[0].as_f64().unwrap() as usize;
        let shown = p[1].as_f64().unwrap();
        let (want, _) = commits.window(step);
        assert!(
            close(shown, want),
            "live page at step {step}: {shown} seq/s, the commits say {want}"
        );
    }
    // Prometheus: its step and rate gauges are set one after the other, so a scrape may fall
    // between them
    assert!(scraped.len() >= 3, "{} scrapes", scraped.len());
    for (step, shown) in scraped {
        let ok = [step, step.saturating_sub(1)]
            .iter()
            .any(|&s| close(shown, commits.window(s).0));
        assert!(
            ok,
            "Prometheus at step {step}: {shown} seq/s, the commits say {}",
            commits.window(step).0
        );
    }
    // the DONE line: every sequence over the time from the first step to the last commit
    let log = c.log();
    let done = log.lines().find(|l| l.starts_with("DONE ")).unwrap();
    let shown: f64 = done
        .split("seq_per_s=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        close(shown, commits.overall()),
        "DONE says {shown} seq/s, the commits {}",
        commits.overall()
    );
}
