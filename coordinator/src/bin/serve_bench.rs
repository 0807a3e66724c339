//! Latency and throughput of `coordinator serve`: 1, 16 and 256 concurrent streams, each sending
//! one step per request over gRPC as fast as it gets answers, with dynamic batching on
//! (`--max-batch 256`) and off (`--max-batch 1`). Prints p50/p99 latency and requests per second,
//! and the ratio on/off at 256 streams.
//!
//! `cargo build --release --workspace --bins && target/release/serve_bench --help`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use proto::convert::tensor;
use proto::pb::{self, predictor_client::PredictorClient};

/// Measures `coordinator serve`.
#[derive(Debug, Parser)]
#[command(name = "serve_bench")]
struct Args {
    /// Model to serve (a run directory or checkpoint); trained here when absent.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// LSTM units of the model trained when --model is absent.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Concurrent streams to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    streams: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn coordinator() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("this executable");
    exe.with_file_name(format!("coordinator{}", std::env::consts::EXE_SUFFIX))
}

fn start(model: &std::path::Path, max_batch: usize) -> (Server, String) {
    use std::io::BufRead;
    let mut child = Command::new(coordinator())
        .args(["serve", "--listen", "127.0.0.1:0", "--max-batch"])
        .arg(max_batch.to_string())
        .arg("--model")
        .arg(model)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting coordinator serve");
    let out = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(out).lines();
    let addr = loop {
        let l = lines.next().expect("a READY line").expect("stdout");
        if let Some(a) = l.strip_prefix("READY ") {
            break a.trim().to_string();
        }
    };
    (Server(child), addr)
}

/// Latencies of every request of `streams` concurrent clients for `seconds`.
async fn measure(addr: &str, streams: usize, seconds: f64, features: usize) -> Vec<Duration> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let tasks: Vec<_> = (0..streams)
        .map(|s| {
            let mut c = PredictorClient::new(ch.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let x = vec![0.1f32 * (s % 7) as f32; features];
                while Instant::now() < until {
                    let t0 = Instant::now();
                    let r = c
                        .predict(pb::PredictRequest {
                            stream_id: format!("bench-{s}"),
                            x: Some(tensor(&[1, features], &x)),
                            cond: None,
                        })
                        .await;
                    if r.is_ok() {
                        lat.push(t0.elapsed());
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("carry-serve-bench-{}", std::process::id()));
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let out = dir.join("run");
            let ok = Command::new(coordinator())
                .args([
                    "train",
                    "--spawn-workers",
                    "0",
                    "--progress",
                    "off",
                    "--steps",
                    "2",
                ])
                .args(["--sequences", "20", "--val-sequences", "0", "--hidden"])
                .arg(args.hidden.to_string())
                .arg("--out")
                .arg(&out)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "training the benchmark model failed");
            out
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{:<9} {:>8} {:>10} {:>10} {:>12}",
        "batching", "streams", "p50 ms", "p99 ms", "requests/s"
    );
    let mut at_256 = [0.0f64; 2];
    for (i, (label, max_batch)) in [("on", 256usize), ("off", 1)].into_iter().enumerate() {
        let (_server, addr) = start(&model, max_batch);
        for &n in &args.streams {
            // warm up, then measure
            rt.block_on(measure(&addr, n, 0.3, 2));
            let mut lat = rt.block_on(measure(&addr, n, args.seconds, 2));
            lat.sort();
            let rps = lat.len() as f64 / args.seconds;
            if n == 256 {
                at_256[i] = rps;
            }
            println!(
                "{label:<9} {n:>8} {:>10.3} {:>10.3} {rps:>12.0}",
                pct(&lat, 0.5),
                pct(&lat, 0.99)
            );
        }
    }
    if at_256[1] > 0.0 {
        println!(
            "256 streams: batching on gives {:.1}x the throughput of batching off",
            at_256[0] / at_256[1]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
