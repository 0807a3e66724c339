//! Training throughput of carry, in sequences per second, for the seed configuration (B=10, H=8)
//! and a larger one (B=64, H=64): the in-process trainer on every engine and device available,
//! and the distributed path (coordinator plus 1 and 2 local worker processes over gRPC).
//!
//! `cargo run --release -p coordinator --bin bench -- --json-out bench.json`; `bench/compare.py`
//! runs it beside PyTorch and Keras and prints the ratios.
//!
//! The distributed runs also print where their steps went (medians per step from the run's
//! `metrics.csv`: the slowest shard's compute, summing among the workers and the wait in it,
//! the update, the coordinator's handling, and the bytes moved), and every configuration ends
//! with the ratios the project tracks: 2 workers against the in-process trainer and against 1
//! worker. `--reps N` repeats the measurements N times, interleaved, and reports medians, which
//! is what to compare on a shared or noisy machine; a ratio is the median of the repetitions'
//! own ratios (each repetition runs the engines one after the other, so a slow spell of the
//! machine cancels out of it).
//!
//! `--only calibrate --batch B --hidden H` (not in the default set) times the fused CPU engine on
//! one thread at that size and prints the milliseconds one slot costs per step: the figure
//! `scripts/simulate.sh` gives the coordinator's `--simulate-ms-per-slot` (which the workers obey).
//!
//! `--only ragged` (not in the default set) times the fused CPU engine's `train_step`
//! alone on a ragged batch (random valid lengths) against the same shape with every step valid,
//! at the seed model with B=64, T=96, in interleaved repetitions, and prints one line with both
//! throughputs in valid steps per second and their ratio.
//!
//! `--only series` (not in the default set) trains one epoch of ragged series (lengths drawn from
//! 100 to 2200 steps) and one of equal-length series with the same total steps through the
//! in-process trainer (slot scheduling, padding and masking included), seed model, B=64, T=96,
//! in interleaved repetitions, and prints both throughputs in valid steps per second and their
//! ratio.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use data::rng::Rng;
use data::windows::{SyntheticSpec, synthetic};
use model::config::{ModelConfig, ResetPolicy, TrainSpec, ValState};
use model::device::{Compute, DeviceChoice, make_engine, resolve};
use model::dropout::DropoutKey;
use model::engine::cpu::CpuEngine;
use model::engine::{Batch, Engine, EngineKind, Loss};
use model::params::init_params;
use model::state::SlotStates;
use model::trainer::Trainer;

/// Measures training throughput.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Configurations: seed, large.
    #[arg(long, value_delimiter = ',', default_value = "seed,large")]
    configs: Vec<String>,
    /// What to measure: any of fused-cpu, burn-cpu, fused-wgpu, burn-wgpu, dist-1, dist-2,
    /// ragged (fused CPU engine steps on a ragged batch versus a full one) and series (training
    /// epochs on ragged versus equal-length series); the last two are not in the default.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fused-cpu,burn-cpu,fused-wgpu,burn-wgpu,dist-1,dist-2"
    )]
    only: Vec<String>,
    /// Seconds to spend per measurement after warm-up (at least 3 timed steps are taken).
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Device for the wgpu engines: wgpu, vulkan, metal, dx12.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Wgpu)]
    wgpu_device: DeviceChoice,
    /// CPU threads of the in-process fused engine (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Repeat every measurement this many times, interleaved, and report the medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Batch size for `--only calibrate`.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Hidden size for `--only calibrate`.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Write the results here as JSON.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Sequences per second and timed steps, or why nothing was measured.
type Measured = Result<(f64, u64), String>;

/// One repetition of one engine: sequences per second, steps timed, and for the distributed
/// runs where their steps went.
#[derive(Debug, Clone, Copy)]
struct Rep {
    rate: f64,
    steps: u64,
    breakdown: Option<Breakdown>,
}

/// One engine's label, note and repetitions.
type EngineReps = (&'static str, String, Vec<Result<Rep, String>>);

impl Rep {
    fn plain((rate, steps): (f64, u64)) -> Self {
        Self {
            rate,
            steps,
            breakdown: None,
        }
    }
}

struct Config {
    name: &'static str,
    batch: usize,
    hidden: usize,
}

const CONFIGS: [Config; 2] = [
    Config {
        name: "seed",
        batch: 10,
        hidden: 8,
    },
    Config {
        name: "large",
        batch: 64,
        hidden: 64,
    },
];

fn spec(c: &Config) -> TrainSpec {
    TrainSpec {
        model: ModelConfig {
            hidden: c.hidden,
            ..ModelConfig::seed()
        },
        adam: Default::default(),
        batch_size: c.batch,
        epochs: 1000,
        max_steps: None,
        seed: 1,
        reset: ResetPolicy::Epoch,
        val_state: ValState::Carry,
        clip_norm: None,
        compat: Default::default(),
        ..Default::default()
    }
}

/// In-process: warm up, then time whole training steps (gather, compute, Adam, state carry).
fn in_process(
    c: &Config,
    kind: EngineKind,
    compute: &Compute,
    seconds: f64,
    threads: usize,
) -> Measured {
    let data = synthetic(&SyntheticSpec {
        sequences: c.batch * 200,
        val_sequences: 0,
        ..SyntheticSpec::new(c.batch, 1)
    });
    let mut trainer = Trainer::new(spec(c), Arc::new(data)).map_err(|e| e.to_string())?;
    let mut engine =
        make_engine(kind, compute, &trainer.spec().model, threads).map_err(|e| e.to_string())?;
    let warm = Instant::now();
    for _ in 0..3 {
        trainer
            .step_local(engine.as_mut())
            .map_err(|e| e.to_string())?;
    }
    let warm_step = warm.elapsed().as_secs_f64() / 3.0;
    let target = ((seconds / warm_step.max(1e-6)) as u64).clamp(3, 100_000);
    let t0 = Instant::now();
    for _ in 0..target {
        trainer
            .step_local(engine.as_mut())
            .map_err(|e| e.to_string())?;
    }
    Ok((
        (c.batch as u64 * target) as f64 / t0.elapsed().as_secs_f64(),
        target,
    ))
}

/// A ragged batch against the same shape with every step valid.
struct Ragged {
    /// Valid steps per second of the full and of the ragged batch.
    full: f64,
    ragged: f64,
    /// Mean valid steps per row of the ragged batch.
    mean_valid: f64,
    reps: usize,
    steps_per_rep: u64,
}

/// The fused CPU engine's `train_step` alone (seed model, B=64, T=96, dropout on): a batch whose
/// rows have random valid lengths in `1..=T` against the same batch with every step valid,
/// timed in `REPS` interleaved repetitions; throughputs in valid steps per second, each the
/// median over the repetitions.
fn ragged(seconds: f64, threads: usize) -> Result<Ragged, String> {
    const REPS: usize = 5;
    let cfg = ModelConfig::seed();
    let (n, t) = (64usize, 96usize);
    let mut rng = Rng::new(7, "bench-ragged");
    let mut normal = |len: usize, scale: f64| -> Vec<f32> {
        (0..len).map(|_| (rng.normal() * scale) as f32).collect()
    };
    let x = normal(n * t * cfg.input, 1.0);
    let y = normal(n * t * cfg.output, 0.5);
    let len = cfg.layers * n * cfg.hidden;
    let init = SlotStates::from_flat(
        cfg.layers,
        n,
        cfg.hidden,
        normal(len, 0.5),
        normal(len, 0.5),
    )
    .map_err(|e| e.to_string())?;
    let mut rng = Rng::new(8, "bench-ragged-lengths");
    let valid: Vec<u32> = (0..n)
        .map(|_| 1 + (rng.uniform() * t as f64).min(t as f64 - 1.0) as u32)
        .collect();
    let params = init_params(&cfg, 1);
    let slots: Vec<u64> = (0..n as u64).collect();
    let full_b = Batch {
        n,
        t,
        x: &x,
        y: &y,
        slots: &slots,
        dropout: Some(DropoutKey {
            seed: 1,
            epoch: 0,
            step: 0,
        }),
        valid: None,
        observed: None,
        loss: Loss::Mse,
    };
    let ragged_b = Batch {
        valid: Some(&valid),
        ..full_b
    };
    let mut engine = CpuEngine::new(&cfg, threads);
    let mut time = |b: &Batch<'_>, steps: u64| -> Result<f64, String> {
        let t0 = Instant::now();
        for _ in 0..steps {
            engine
                .train_step(&params, b, &init, false)
                .map_err(|e| e.to_string())?;
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    time(&full_b, 3)?;
    time(&ragged_b, 3)?;
    let warm = time(&full_b, 5)? / 5.0;
    let steps = ((seconds / (2 * REPS) as f64 / warm.max(1e-6)) as u64).clamp(3, 1_000_000);
    let full_steps = (n * t) as f64 * steps as f64;
    let ragged_steps = valid.iter().map(|&l| f64::from(l)).sum::<f64>() * steps as f64;
    let (mut full, mut rag) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        full.push(full_steps / time(&full_b, steps)?);
        rag.push(ragged_steps / time(&ragged_b, steps)?);
    }
    Ok(Ragged {
        full: median(full),
        ragged: median(rag),
        mean_valid: valid.iter().map(|&l| f64::from(l)).sum::<f64>() / n as f64,
        reps: REPS,
        steps_per_rep: steps,
    })
}

/// A table of series with the given numbers of rows (two value columns, smooth and noisy).
fn series_table(lens: &[usize]) -> data::table::Table {
    let mut rng = Rng::new(9, "bench-series");
    let (mut offsets, mut values, mut times, mut ids) =
        (vec![0], Vec::new(), Vec::new(), Vec::new());
    for (i, &n) in lens.iter().enumerate() {
        ids.push(format!("s{i}"));
        let w = rng.range(0.05, 0.3);
        for r in 0..n {
            times.push(r as f64);
            values.push(((w * r as f64).sin() + 0.1 * rng.normal()) as f32);
            values.push(((w * 0.5 * r as f64).cos() + 0.1 * rng.normal()) as f32);
        }
        offsets.push(offsets[i] + n);
    }
    data::table::Table {
        source: "bench".into(),
        ids,
        offsets,
        time_kind: data::table::TimeKind::Index,
        times,
        columns: vec!["a".into(), "b".into()],
        values,
    }
}

/// Valid steps per second of one training epoch on ragged series and on equal-length series
/// with the same total steps (seed model, B=64, T=96), medians of interleaved repetitions.
fn series(threads: usize, hidden: usize) -> Result<(f64, f64, usize), String> {
    const REPS: usize = 3;
    const SERIES: usize = 128;
    const LEN: usize = 1152; // 12 chunks of 96
    let mut rng = Rng::new(10, "bench-series-lengths");
    let mut lens: Vec<usize> = (0..SERIES)
        .map(|_| rng.range(100.0, 2200.0) as usize)
        .collect();
    // rescale to the same total steps as the equal-length set
    let total: usize = lens.iter().sum();
    let want = SERIES * LEN;
    for l in &mut lens {
        *l = (*l * want / total).max(2);
    }
    let diff = want as i64 - lens.iter().sum::<usize>() as i64;
    lens[0] = (lens[0] as i64 + diff) as usize;
    let make = |lens: &[usize]| -> Result<(Trainer, usize), String> {
        let spec = data::series::SeriesSpec {
            id_column: None,
            time_column: None,
            input_columns: vec!["a".into(), "b".into()],
            target_columns: vec!["a".into(), "b".into()],
            scale: data::series::Scale::Series,
            val_steps: 0,
            shuffle: true,
            timesteps: 96,
            ..Default::default()
        };
        // each series has one more row than steps
        let rows: Vec<usize> = lens.iter().map(|l| l + 1).collect();
        let d = data::series::SeriesData::new(&series_table(&rows), &spec, None)
            .map_err(|e| e.to_string())?;
        let steps = d.train_steps.iter().sum();
        let mut train = TrainSpec {
            batch_size: 64,
            epochs: 1,
            series: Some(spec),
            ..TrainSpec::default()
        };
        train.model.hidden = hidden;
        let t = Trainer::new(train, Arc::new(d)).map_err(|e| e.to_string())?;
        Ok((t, steps))
    };
    let equal = vec![LEN; SERIES];
    let cfg = ModelConfig {
        hidden,
        ..ModelConfig::seed()
    };
    let mut engine = CpuEngine::new(&cfg, threads);
    let mut epoch = |lens: &[usize]| -> Result<f64, String> {
        let (mut t, steps) = make(lens)?;
        let t0 = Instant::now();
        while t
            .step_local(&mut engine)
            .map_err(|e| e.to_string())?
            .is_some()
        {}
        Ok(steps as f64 / t0.elapsed().as_secs_f64())
    };
    epoch(&equal)?;
    let (mut eq, mut rag) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        eq.push(epoch(&equal)?);
        rag.push(epoch(&lens)?);
    }
    Ok((median(eq), median(rag), SERIES * LEN))
}

/// Where a distributed run's steps went: medians per step over its steady steps.
#[derive(Debug, Clone, Copy)]
struct Breakdown {
    compute_ms: f64,
    sum_ms: f64,
    sum_wait_ms: f64,
    update_ms: f64,
    coordinator_ms: f64,
    peer_bytes: f64,
    coordinator_bytes: f64,
}

impl Breakdown {
    /// Medians of the named `metrics.csv` columns over `rows` (each a line's fields).
    fn of(header: &[&str], rows: &[Vec<&str>]) -> Self {
        // NaN where the column is absent or empty, so a missing figure shows as such.
        let column = |name: &str| -> f64 {
            let Some(i) = header.iter().position(|h| *h == name) else {
                return f64::NAN;
            };
            let v: Vec<f64> = rows.iter().filter_map(|r| r.get(i)?.parse().ok()).collect();
            if v.is_empty() { f64::NAN } else { median(v) }
        };
        Self {
            compute_ms: column("compute_ms"),
            sum_ms: column("sum_ms"),
            sum_wait_ms: column("sum_wait_ms"),
            update_ms: column("update_ms"),
            coordinator_ms: column("coord_ms"),
            peer_bytes: column("peer_bytes"),
            coordinator_bytes: column("coord_bytes"),
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"compute_ms\": {:.3}, \"sum_ms\": {:.3}, \"sum_wait_ms\": {:.3}, \"update_ms\": {:.3}, \"coordinator_ms\": {:.3}, \"peer_bytes\": {:.0}, \"coordinator_bytes\": {:.0}}}",
            self.compute_ms,
            self.sum_ms,
            self.sum_wait_ms,
            self.update_ms,
            self.coordinator_ms,
            self.peer_bytes,
            self.coordinator_bytes
        )
    }
}

/// Distributed: the real coordinator with K spawned workers; throughput from the step log,
/// skipping the first steps (connection set-up).
fn distributed(c: &Config, workers: usize, seconds: f64) -> Result<(f64, u64, Breakdown), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let coordinator = exe.with_file_name(format!("coordinator{}", std::env::consts::EXE_SUFFIX));
    if !coordinator.is_file() {
        return Err(format!(
            "{} not built (cargo build --release)",
            coordinator.display()
        ));
    }
    // estimate the step count from a short in-process run
    let (rate, _) = in_process(c, EngineKind::Fused, &Compute::Cpu, 0.5, 0)?;
    let steps = ((seconds * rate / c.batch as f64) as u64).clamp(20, 20_000) + 10;
    let out = std::env::temp_dir().join(format!(
        "carry-bench-{}-{}-{workers}",
        std::process::id(),
        c.name
    ));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(&coordinator)
        .args([
            "train",
            "--listen",
            "127.0.0.1:0",
            "--spawn-workers",
            &workers.to_string(),
            "--progress",
            "off",
        ])
        .args([
            "--batch-size",
            &c.batch.to_string(),
            "--hidden",
            &c.hidden.to_string(),
        ])
        .args([
            "--sequences",
            &(c.batch * 200).to_string(),
            "--val-sequences",
            "0",
            "--epochs",
            "1000",
        ])
        .args([
            "--steps",
            &steps.to_string(),
            "--checkpoint-every",
            "1000000",
            "--seed",
            "1",
        ])
        .arg("--out")
        .arg(&out)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("coordinator exited with {status}"));
    }
    let text = std::fs::read_to_string(out.join("metrics.csv")).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&out);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let step_ms = header
        .iter()
        .position(|h| *h == "step_ms")
        .ok_or("metrics.csv has no step_ms column")?;
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let steady = &rows[rows.len().min(10)..];
    let total: f64 = steady
        .iter()
        .filter_map(|r| r.get(step_ms)?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e3;
    Ok((
        steady.len() as f64 * c.batch as f64 / total.max(1e-9),
        steady.len() as u64,
        Breakdown::of(&header, steady),
    ))
}

/// Milliseconds one slot costs per training step on one thread of the fused CPU engine at
/// `batch` x `hidden` (whole steps: compute, update, state carry; median of 3 timed steps).
fn calibrate(batch: usize, hidden: usize) -> Result<(f64, f64), String> {
    let c = Config {
        name: "calibrate",
        batch,
        hidden,
    };
    let data = synthetic(&SyntheticSpec {
        sequences: batch * 4,
        val_sequences: 0,
        ..SyntheticSpec::new(batch, 1)
    });
    let mut trainer = Trainer::new(spec(&c), Arc::new(data)).map_err(|e| e.to_string())?;
    let mut engine = make_engine(EngineKind::Fused, &Compute::Cpu, &trainer.spec().model, 1)
        .map_err(|e| e.to_string())?;
    trainer
        .step_local(engine.as_mut())
        .map_err(|e| e.to_string())?;
    let mut ms = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        trainer
            .step_local(engine.as_mut())
            .map_err(|e| e.to_string())?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let step = median(ms);
    Ok((step, step / batch as f64))
}

/// The median of `v` (the upper one of an even count); `v` must not be empty.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let wgpu_choice = args.wgpu_device;
    let wanted = |k: &str| args.only.iter().any(|o| o == k);
    let gpu = if wanted("fused-wgpu") || wanted("burn-wgpu") {
        resolve(wgpu_choice).ok()
    } else {
        None
    };
    let gpu_name = match &gpu {
        Some(Compute::Wgpu { adapter, .. }) => adapter.clone(),
        _ => "none".into(),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "{:<22} {:<6} {:>12} {:>8}  note",
        "engine", "config", "seq/s", "steps"
    );
    let mut results = Vec::new();
    for c in CONFIGS
        .iter()
        .filter(|c| args.configs.iter().any(|n| n == c.name))
    {
        // One entry per engine: its label, note and one measurement per repetition; the
        // repetitions are interleaved so that a slow spell of the machine hits every engine.
        let mut runs: Vec<EngineReps> = Vec::new();
        for rep in 0..args.reps {
            let mut at = 0;
            let mut record = |label: &'static str, note: String, r: Result<Rep, String>| {
                if rep == 0 {
                    runs.push((label, note, Vec::new()));
                }
                runs[at].2.push(r);
                at += 1;
            };
            if wanted("fused-cpu") {
                let threads = if args.threads == 0 {
                    cores
                } else {
                    args.threads
                };
                record(
                    "carry-fused-cpu",
                    format!("{threads} threads"),
                    in_process(c, EngineKind::Fused, &Compute::Cpu, args.seconds, threads)
                        .map(Rep::plain),
                );
            }
            if wanted("burn-cpu") {
                record(
                    "carry-burn-flex",
                    "Burn stock Lstm on Flex".into(),
                    in_process(c, EngineKind::Burn, &Compute::Cpu, args.seconds, 0).map(Rep::plain),
                );
            }
            for (key, kind, label) in [
                ("fused-wgpu", EngineKind::Fused, "carry-fused-wgpu"),
                ("burn-wgpu", EngineKind::Burn, "carry-burn-wgpu"),
            ] {
                if wanted(key) {
                    let r = match &gpu {
                        Some(g) => in_process(c, kind, g, args.seconds, 0).map(Rep::plain),
                        None => Err("no wgpu adapter".into()),
                    };
                    record(label, gpu_name.clone(), r);
                }
            }
            for (key, k, label) in [("dist-1", 1, "carry-dist-1"), ("dist-2", 2, "carry-dist-2")] {
                if wanted(key) {
                    record(
                        label,
                        format!("coordinator + {k} worker processes, gRPC"),
                        distributed(c, k, args.seconds).map(|(rate, steps, b)| Rep {
                            rate,
                            steps,
                            breakdown: Some(b),
                        }),
                    );
                }
            }
        }
        // each engine's rate in every repetition, in order (None where it failed)
        let mut rates: Vec<(&str, Vec<Option<f64>>)> = Vec::new();
        for (engine, note, reps) in runs {
            let mut ok: Vec<Rep> = Vec::new();
            let mut errors = Vec::new();
            let mut in_order = Vec::new();
            for r in reps {
                match r {
                    Ok(r) => {
                        in_order.push(Some(r.rate));
                        ok.push(r);
                    }
                    Err(e) => {
                        in_order.push(None);
                        errors.push(e);
                    }
                }
            }
            if ok.is_empty() {
                let e = errors.join("; ");
                eprintln!(
                    "{engine:<22} {:<6} {:>12} {:>8}  skipped: {e}",
                    c.name, "-", "-"
                );
                results.push(format!(
                    "{{\"engine\": \"{engine}\", \"config\": \"{}\", \"skipped\": \"{}\"}}",
                    c.name,
                    e.replace('"', "'")
                ));
                continue;
            }
            // The median repetition by rate stands for the engine (its breakdown included).
            ok.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            let all: Vec<String> = ok.iter().map(|r| format!("{:.1}", r.rate)).collect();
            let steps: u64 = ok.iter().map(|r| r.steps).sum();
            let mid = ok[ok.len() / 2];
            let rate = mid.rate;
            let reps_note = if ok.len() > 1 {
                format!(" (median of {}: {})", ok.len(), all.join(" "))
            } else {
                String::new()
            };
            eprintln!(
                "{engine:<22} {:<6} {rate:>12.1} {steps:>8}  {note}{reps_note}",
                c.name
            );
            let breakdown = match mid.breakdown {
                Some(b) => {
                    eprintln!(
                        "{:<22} {:<6} per step: compute {:.2} ms, sum {:.2} ms (waiting {:.2}), update {:.2} ms, coordinator {:.2} ms CPU; bytes: peer {:.0}, coordinator {:.0}",
                        "",
                        c.name,
                        b.compute_ms,
                        b.sum_ms,
                        b.sum_wait_ms,
                        b.update_ms,
                        b.coordinator_ms,
                        b.peer_bytes,
                        b.coordinator_bytes
                    );
                    format!(", \"breakdown\": {}", b.json())
                }
                None => String::new(),
            };
            rates.push((engine, in_order));
            results.push(format!(
                "{{\"engine\": \"{engine}\", \"config\": \"{}\", \"batch\": {}, \"hidden\": {}, \"seq_per_s\": {rate:.2}, \"steps\": {steps}, \"reps\": [{}], \"note\": \"{note}\"{breakdown}}}",
                c.name,
                c.batch,
                c.hidden,
                all.join(", ")
            ));
        }
        // A ratio is the median of the repetitions' ratios: the two engines of one repetition
        // ran minutes apart at most, so a slow spell of the machine cancels out of each ratio,
        // where a ratio of the two medians could pair a fast spell with a slow one.
        let rate = |e: &str| rates.iter().find(|(n, _)| *n == e).map(|(_, r)| r);
        for (num, den, what) in [
            ("carry-dist-2", "carry-fused-cpu", "2 workers / in process"),
            ("carry-dist-2", "carry-dist-1", "2 workers / 1 worker"),
            ("carry-dist-1", "carry-fused-cpu", "1 worker / in process"),
        ] {
            let (Some(n), Some(d)) = (rate(num), rate(den)) else {
                continue;
            };
            let mut each: Vec<f64> = n
                .iter()
                .zip(d)
                .filter_map(|(n, d)| Some((*n)? / (*d)?))
                .collect();
            if each.is_empty() {
                continue;
            }
            each.sort_by(f64::total_cmp);
            let ratio = each[each.len() / 2];
            let range = if each.len() > 1 {
                format!(
                    " (median of {} repetitions' ratios, {:.3} to {:.3})",
                    each.len(),
                    each[0],
                    each[each.len() - 1]
                )
            } else {
                String::new()
            };
            eprintln!(
                "{:<22} {:<6} {ratio:>12.3}           {what}{range}",
                "ratio", c.name
            );
            let all: Vec<String> = each.iter().map(|r| format!("{r:.4}")).collect();
            results.push(format!(
                "{{\"ratio\": \"{num}/{den}\", \"config\": \"{}\", \"value\": {ratio:.4}, \"reps\": [{}]}}",
                c.name,
                all.join(", ")
            ));
        }
    }
    if wanted("calibrate") {
        match calibrate(args.batch, args.hidden) {
            Ok((step, slot)) => {
                eprintln!(
                    "calibrate: fused CPU engine, 1 thread, B={} H={}: {step:.3} ms per step, {slot:.5} ms per slot",
                    args.batch, args.hidden
                );
                results.push(format!(
                    "{{\"engine\": \"calibrate\", \"batch\": {}, \"hidden\": {}, \"ms_per_step\": {step:.4}, \"ms_per_slot\": {slot:.6}}}",
                    args.batch, args.hidden
                ));
            }
            Err(e) => {
                eprintln!("calibrate: failed: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    if wanted("ragged") {
        let threads = if args.threads == 0 {
            cores
        } else {
            args.threads
        };
        match ragged(args.seconds, threads) {
            Ok(r) => {
                eprintln!(
                    "ragged vs full, fused CPU engine train_step, seed model B=64 T=96 ({threads} threads): \
                     full {:.0} valid steps/s, ragged (mean {:.1} of 96 valid) {:.0} valid steps/s, \
                     ratio {:.3} ({} interleaved reps x {} steps, medians)",
                    r.full,
                    r.mean_valid,
                    r.ragged,
                    r.ragged / r.full,
                    r.reps,
                    r.steps_per_rep
                );
                results.push(format!(
                    "{{\"engine\": \"carry-fused-cpu-ragged\", \"config\": \"seed\", \"batch\": 64, \"timesteps\": 96, \"full_valid_steps_per_s\": {:.1}, \"ragged_valid_steps_per_s\": {:.1}, \"mean_valid\": {:.2}, \"ratio\": {:.4}, \"note\": \"{threads} threads, train_step only\"}}",
                    r.full,
                    r.ragged,
                    r.mean_valid,
                    r.ragged / r.full
                ));
            }
            Err(e) => {
                eprintln!("ragged vs full: skipped: {e}");
                results.push(format!(
                    "{{\"engine\": \"carry-fused-cpu-ragged\", \"config\": \"seed\", \"skipped\": \"{}\"}}",
                    e.replace('"', "'")
                ));
            }
        }
    }
    if wanted("series") {
        let threads = if args.threads == 0 {
            cores
        } else {
            args.threads
        };
        for hidden in [8, 64] {
            match series(threads, hidden) {
                Ok((eq, rag, steps)) => {
                    eprintln!(
                        "ragged vs equal-length series, one training epoch of {steps} steps in 128 series, H={hidden} B=64 T=96 ({threads} threads): \
                         equal {eq:.0} valid steps/s, ragged {rag:.0} valid steps/s, ratio {:.3} (medians of 3 interleaved epochs)",
                        rag / eq
                    );
                    results.push(format!(
                        "{{\"engine\": \"carry-series-ragged\", \"hidden\": {hidden}, \"batch\": 64, \"timesteps\": 96, \"equal_valid_steps_per_s\": {eq:.1}, \"ragged_valid_steps_per_s\": {rag:.1}, \"ratio\": {:.4}}}",
                        rag / eq
                    ));
                }
                Err(e) => eprintln!("ragged vs equal series: skipped: {e}"),
            }
        }
    }
    let json = format!(
        "{{\"machine\": {{\"cores\": {cores}, \"wgpu_adapter\": \"{}\"}}, \"results\": [\n  {}\n]}}\n",
        gpu_name.replace('"', "'"),
        results.join(",\n  ")
    );
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(json.as_bytes());
    if let Some(p) = &args.json_out
        && let Err(e) = std::fs::write(p, &json)
    {
        eprintln!("writing {}: {e}", p.display());
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
