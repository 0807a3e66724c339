//! Training throughput of carry, in sequences per second, for the seed configuration (B=10, H=8)
//! and a larger one (B=64, H=64): the in-process trainer on every engine and device available,
//! and the distributed path (coordinator plus 1 and 2 local worker processes over gRPC).
//!
//! `cargo run --release -p coordinator --bin bench -- --json-out bench.json`; `bench/compare.sh`
//! runs it beside PyTorch and Keras and prints the ratios.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use model::config::{ModelConfig, ResetPolicy, TrainSpec, ValState};
use model::data::{SyntheticSpec, synthetic};
use model::device::{Compute, DeviceChoice, make_engine, resolve};
use model::engine::EngineKind;
use model::trainer::Trainer;

/// Measures training throughput.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Configurations: seed, large.
    #[arg(long, value_delimiter = ',', default_value = "seed,large")]
    configs: Vec<String>,
    /// What to measure: any of fused-cpu, burn-cpu, fused-wgpu, burn-wgpu, dist-1, dist-2.
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
    /// Write the results here as JSON.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Sequences per second and timed steps, or why nothing was measured.
type Measured = Result<(f64, u64), String>;

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

/// Distributed: the real coordinator with K spawned workers; throughput from the step log,
/// skipping the first steps (connection set-up).
fn distributed(c: &Config, workers: usize, seconds: f64) -> Measured {
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
    let ms: Vec<f64> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(7)?.parse().ok())
        .collect();
    let _ = std::fs::remove_dir_all(&out);
    let steady = &ms[ms.len().min(10)..];
    let total: f64 = steady.iter().sum::<f64>() / 1e3;
    Ok((
        steady.len() as f64 * c.batch as f64 / total.max(1e-9),
        steady.len() as u64,
    ))
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
        let mut runs: Vec<(&str, String, Measured)> = Vec::new();
        if wanted("fused-cpu") {
            let threads = if args.threads == 0 {
                cores
            } else {
                args.threads
            };
            runs.push((
                "carry-fused-cpu",
                format!("{threads} threads"),
                in_process(c, EngineKind::Fused, &Compute::Cpu, args.seconds, threads),
            ));
        }
        if wanted("burn-cpu") {
            runs.push((
                "carry-burn-flex",
                "Burn stock Lstm on Flex".into(),
                in_process(c, EngineKind::Burn, &Compute::Cpu, args.seconds, 0),
            ));
        }
        for (key, kind, label) in [
            ("fused-wgpu", EngineKind::Fused, "carry-fused-wgpu"),
            ("burn-wgpu", EngineKind::Burn, "carry-burn-wgpu"),
        ] {
            if wanted(key) {
                let r = match &gpu {
                    Some(g) => in_process(c, kind, g, args.seconds, 0),
                    None => Err("no wgpu adapter".into()),
                };
                runs.push((label, gpu_name.clone(), r));
            }
        }
        for (key, k, label) in [("dist-1", 1, "carry-dist-1"), ("dist-2", 2, "carry-dist-2")] {
            if wanted(key) {
                runs.push((
                    label,
                    format!("coordinator + {k} worker processes, gRPC"),
                    distributed(c, k, args.seconds),
                ));
            }
        }
        for (engine, note, r) in runs {
            match r {
                Ok((rate, steps)) => {
                    eprintln!("{engine:<22} {:<6} {rate:>12.1} {steps:>8}  {note}", c.name);
                    results.push(format!(
                        "{{\"engine\": \"{engine}\", \"config\": \"{}\", \"batch\": {}, \"hidden\": {}, \"seq_per_s\": {rate:.2}, \"steps\": {steps}, \"note\": \"{note}\"}}",
                        c.name, c.batch, c.hidden
                    ));
                }
                Err(e) => {
                    eprintln!(
                        "{engine:<22} {:<6} {:>12} {:>8}  skipped: {e}",
                        c.name, "-", "-"
                    );
                    results.push(format!(
                        "{{\"engine\": \"{engine}\", \"config\": \"{}\", \"skipped\": \"{}\"}}",
                        c.name,
                        e.replace('"', "'")
                    ));
                }
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
