//! Harness for process-level tests: starts the real `coordinator` and `worker` programs, reads
//! their `READY <addr>` lines, waits with timeouts, kills on drop, and keeps each process's output
//! in a log file that a failing test prints.

pub mod chaos;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds the programs from the current sources (a no-op when they are up to date), once per
/// test process, in the profile and target directory of this test binary: a process test never
/// runs a stale binary.
fn build_programs(dir: &Path) -> Result<(), String> {
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("target/<profile> has no name")?;
    let target = dir.parent().ok_or("target directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace())
        // the whole workspace, as test.sh builds it: selecting packages would unify features
        // differently and relink (or rebuild) the programs on every test run
        .args(["build", "--bins", "--workspace"])
        .arg("--target-dir")
        .arg(target);
    // cargo gives the test process its package's variables (CARGO_MANIFEST_DIR, ...); some
    // build scripts (ring's) rerun when those change, which would rebuild half the tree here
    // and again in the next `cargo build`
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || k == "CARGO_TARGET_TMPDIR"
            || k == "CARGO_RUSTC_CURRENT_DIR"
            || k == "OUT_DIR"
        {
            cmd.env_remove(k.as_ref());
        }
    }
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running cargo to build the programs: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the programs failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Path of a workspace program built next to the test binary (`target/<profile>/<name>`), from
/// the current sources.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    if let Err(e) = BUILT.get_or_init(|| build_programs(dir)) {
        panic!("{e}");
    }
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A scratch directory removed on drop (kept when the test panics, for inspection).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory named after `tag`.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "carry-it-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside.
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process whose stdout and stderr go to a log file; killed on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `program` with `args` and extra `env` in `dir` (also its working directory),
    /// logging into `dir/<name>.log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let f = File::create(&log).expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().expect("dup log")))
            .stderr(Stdio::from(f))
            .env(
                "RUST_LOG",
                std::env::var("CARRY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("CARRY_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Self {
            name: name.to_string(),
            child,
            log,
            status: None,
        }
    }

    /// Starts the coordinator.
    pub fn coordinator(name: &str, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Self {
        Self::start(name, &bin("coordinator"), args, env, dir)
    }

    /// Starts a worker.
    pub fn worker(name: &str, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Self {
        Self::start(name, &bin("worker"), args, env, dir)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Panics with the log when `cond` is false.
    pub fn check(&self, cond: bool, what: &str) {
        if !cond {
            panic!("{what}\n----- {} log -----\n{}", self.name, self.log());
        }
    }

    /// Waits until a line of the log satisfies `f`; returns it.
    pub fn wait_line(&self, timeout: Duration, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log().lines().find(|l| f(l)) {
                return l.to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n----- {} log -----\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `READY <addr>` and returns the address.
    pub fn ready(&self) -> String {
        let line = self.wait_line(Duration::from_secs(60), "READY", |l| {
            l.starts_with("READY ")
        });
        line.trim_start_matches("READY ").trim().to_string()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.status = Some(s);
                return s;
            }
            if Instant::now() > deadline {
                let log = self.log();
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {timeout:?}\n----- log -----\n{log}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a successful exit; panics with the log otherwise.
    pub fn success(&mut self, timeout: Duration) {
        let s = self.wait(timeout);
        self.check(s.success(), &format!("{} exited with {s}", self.name));
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status.is_some()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.wait(Duration::from_secs(10));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Global step.
    pub step: u64,
    /// Epoch.
    pub epoch: u64,
    /// Training loss.
    pub loss: f64,
    /// Validation loss (epoch ends).
    pub val_loss: Option<f64>,
    /// Live workers.
    pub workers: usize,
    /// Shards: `first-last:worker`.
    pub shards: String,
}

/// The records of a CSV text (RFC 4180: quoted fields may hold commas, quotes and line breaks).
pub fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut cur)),
            (false, '\r') => {}
            (false, '\n') => {
                fields.push(std::mem::take(&mut cur));
                records.push(std::mem::take(&mut fields));
            }
            (false, c) => cur.push(c),
        }
    }
    assert!(!quoted, "a quoted CSV field does not close");
    if !cur.is_empty() || !fields.is_empty() {
        fields.push(cur);
        records.push(fields);
    }
    records
}

/// Reads `dir/metrics.csv`, checking that every record has the header's columns.
pub fn metrics(dir: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
    let mut records = csv_records(&text).into_iter();
    let header = records.next().expect("a header").join(",");
    assert_eq!(
        header,
        "step,epoch,step_in_epoch,loss,val_loss,seq_per_s,workers,step_ms,compute_ms,shards,worker_ms,sum_ms,sum_wait_ms,update_ms,coord_ms,commit_lag_ms,idle_ms,peer_bytes,coord_bytes,unix_ms",
        "metrics.csv header"
    );
    records
        .map(|c| {
            assert_eq!(c.len(), 20, "a row with the header's 20 columns: {c:?}");
            Row {
                step: c[0].parse().expect("step"),
                epoch: c[1].parse().expect("epoch"),
                loss: c[3].parse().expect("loss"),
                val_loss: c[4].parse().ok(),
                workers: c[6].parse().expect("workers"),
                shards: c[9].to_string(),
            }
        })
        .collect()
}

/// Final parameters of a run directory's checkpoint.
pub fn params(dir: &Path) -> Vec<f32> {
    model::checkpoint::Checkpoint::load(dir)
        .expect("checkpoint")
        .params
}

/// Largest absolute difference.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Arguments of the small job most tests run: the seed model (dropout on) for 50 steps over
/// 2.5 epochs of 20 steps, so epoch boundaries, resets and validation all happen.
pub const JOB: &[&str] = &[
    "--sequences",
    "200",
    "--val-sequences",
    "40",
    "--batch-size",
    "10",
    "--epochs",
    "3",
    "--steps",
    "50",
    "--seed",
    "7",
    "--progress",
    "log",
];

/// Runs the in-process reference trainer on [`JOB`] plus `extra` in `dir/name`; returns its
/// final parameters.
pub fn reference(dir: &TempDir, name: &str, extra: &[&str]) -> Vec<f32> {
    let out = dir.join(name);
    let out_s = out.to_str().expect("utf-8 path");
    let mut args = vec!["train", "--spawn-workers", "0", "--out", out_s];
    args.extend_from_slice(JOB);
    args.extend_from_slice(extra);
    let mut p = Proc::coordinator(name, &args, &[], dir.path());
    p.success(Duration::from_secs(120));
    params(&out)
}

/// Trains a small model in this process into `out` (100 synthetic sequences without validation,
/// one epoch of 10 steps), with `extra` arguments; returns the finished process.
pub fn train_small(dir: &TempDir, name: &str, out: &Path, extra: &[&str]) -> Proc {
    let out_s = out.to_str().expect("utf-8 path");
    let mut args = vec![
        "train",
        "--spawn-workers",
        "0",
        "--out",
        out_s,
        "--sequences",
        "100",
        "--val-sequences",
        "0",
        "--epochs",
        "1",
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::coordinator(name, &args, &[], dir.path());
    p.success(Duration::from_secs(60));
    p
}

/// Runs `coordinator args` in `dir` to success (within two minutes).
pub fn coordinator_ok(dir: &TempDir, name: &str, args: &[&str]) -> Proc {
    let mut p = Proc::coordinator(name, args, &[], dir.path());
    p.success(Duration::from_secs(120));
    p
}

/// Runs `coordinator args` in `dir`, expects it to fail (within a minute), returns its log.
pub fn coordinator_fails(dir: &TempDir, name: &str, args: &[&str]) -> String {
    let mut p = Proc::coordinator(name, args, &[], dir.path());
    let st = p.wait(Duration::from_secs(60));
    let log = p.log();
    assert!(!st.success(), "{name} should fail: {log}");
    log
}

/// A worker computing on one CPU thread, named `name`, with `extra` arguments.
pub fn worker(name: &str, url: &str, extra: &[&str], dir: &TempDir) -> Proc {
    let mut args = vec![
        "--coordinator",
        url,
        "--device",
        "cpu",
        "--name",
        name,
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    Proc::worker(name, &args, &[], dir.path())
}

/// A coordinator serving [`JOB`] plus `extra` on a free loopback port into `dir/out`.
pub fn serve_job(name: &str, dir: &TempDir, out: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["train", "--listen", "127.0.0.1:0", "--out", out];
    args.extend_from_slice(JOB);
    args.extend_from_slice(extra);
    Proc::coordinator(name, &args, &[], dir.path())
}

/// Asserts that the run in `out` ended with parameters within 1e-4 of `want` and a step log
/// listing steps `0..steps` exactly once.
pub fn assert_equals_reference(out: &Path, want: &[f32], steps: u64, p: &Proc) {
    let d = max_diff(&params(out), want);
    p.check(
        d <= 1e-4,
        &format!("max parameter difference {d} from the reference"),
    );
    assert_step_log(&metrics(out), steps);
}

/// Waits until `dir/metrics.csv` holds at least `rows` steps.
pub fn wait_rows(dir: &Path, rows: usize, timeout: Duration, p: &Proc) {
    let deadline = Instant::now() + timeout;
    loop {
        let n = std::fs::read_to_string(dir.join("metrics.csv"))
            .map_or(0, |t| t.lines().count().saturating_sub(1));
        if n >= rows {
            return;
        }
        p.check(
            Instant::now() < deadline,
            &format!("timed out waiting for {rows} steps (have {n})"),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that the step log holds steps `0..total` exactly once each, in order.
pub fn assert_step_log(rows: &[Row], total: u64) {
    let steps: Vec<u64> = rows.iter().map(|r| r.step).collect();
    let want: Vec<u64> = (0..total).collect();
    assert_eq!(
        steps, want,
        "every step committed exactly once, none skipped"
    );
}
