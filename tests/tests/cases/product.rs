//! What a user touches: metrics.csv and the plot, configuration precedence and errors, the health
//! service, Prometheus metrics, predict (chunked, with explicit state) and export/import.

use std::io::{Read, Write};
use std::time::Duration;

use carry_it::{Proc, TempDir, metrics};
use data::npy::{read_npz, write_npy, write_npz};

#[test]
fn metrics_plot_health_and_prometheus() {
    let dir = TempDir::new("product");
    let out = dir.join("run");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let health = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut c = Proc::coordinator(
        "coordinator",
        &[
            "train",
            "--listen",
            "127.0.0.1:0",
            "--out",
            out.to_str().unwrap(),
            "--sequences",
            "60",
            "--val-sequences",
            "20",
            "--epochs",
            "2",
            "--spawn-workers",
            "1",
            "--metrics-listen",
            &metrics_addr,
            "--health-listen",
            &health.to_string(),
            "--worker-args",
            "--throttle-ms 40",
            "--progress",
            "log",
        ],
        &[],
        dir.path(),
    );
    let addr = c.ready();
    // health on both the main and the plaintext health port
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for a in [addr.clone(), health.to_string()] {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{a}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
            let r = h
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "carry.v1.Coordinator".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                r.status(),
                tonic_health::pb::health_check_response::ServingStatus::Serving,
                "{a}"
            );
        }
    });
    carry_it::wait_rows(&out, 2, Duration::from_secs(60), &c);
    let mut body = String::new();
    let mut s = std::net::TcpStream::connect(&metrics_addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.contains("carry_steps_total") && body.contains("carry_loss"),
        "{body}"
    );
    c.success(Duration::from_secs(60));
    let rows = metrics(&out);
    assert_eq!(rows.len(), 12, "6 steps per epoch, 2 epochs");
    let val: Vec<u64> = rows
        .iter()
        .filter(|r| r.val_loss.is_some())
        .map(|r| r.step)
        .collect();
    assert_eq!(val, vec![5, 11], "validation at each epoch end");
    assert!(rows.iter().all(|r| r.loss.is_finite() && r.workers == 1));
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "an SVG with the loss curve"
    );
    let log = c.log();
    assert!(log.contains("DONE steps=12"));
    // without a terminal: plain periodic progress lines, no colour escape codes
    assert!(log.contains("progress epoch="), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in a log file: {log}");
    // the spawned worker's output comes through the coordinator's log, named
    assert!(
        log.contains("[local-0] ") && log.contains("registered"),
        "{log}"
    );
}

fn dry_run(dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut full = vec!["train", "--dry-run"];
    full.extend_from_slice(args);
    let mut p = Proc::coordinator("dry-run", &full, env, dir.path());
    let ok = p.wait(Duration::from_secs(30)).success();
    (ok, p.log())
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let dir = TempDir::new("config");
    let toml = dir.join("job.toml");
    std::fs::write(&toml, "hidden = 32\nlayers = 3\nbatch_size = 5\n").unwrap();
    let t = toml.to_str().unwrap();
    let (ok, log) = dry_run(
        &dir,
        &["--config", t, "--hidden", "24"],
        &[("CARRY_HIDDEN", "16"), ("CARRY_LAYERS", "4")],
    );
    assert!(ok, "{log}");
    assert!(log.contains("hidden: 24"), "flag wins: {log}");
    assert!(log.contains("layers: 4"), "env beats file: {log}");
    assert!(log.contains("batch_size: 5"), "file beats default: {log}");
    assert!(log.contains("epochs: 10"), "default: {log}");
    let (ok, log) = dry_run(&dir, &["--config", t], &[("CARRY_HIDDEN", "16")]);
    assert!(ok && log.contains("hidden: 16"), "env beats file: {log}");
    // errors name the field
    let (ok, log) = dry_run(&dir, &["--batch-size", "0"], &[]);
    assert!(!ok && log.contains("batch_size"), "{log}");
    let (ok, log) = dry_run(&dir, &[], &[("CARRY_DROPOUT", "1.5")]);
    assert!(
        !ok && log.contains("dropout") && log.contains("1.5"),
        "{log}"
    );
    std::fs::write(&toml, "hiden = 3\n").unwrap();
    let (ok, log) = dry_run(&dir, &["--config", t], &[]);
    assert!(
        !ok && log.contains("hiden") && log.contains("job.toml"),
        "{log}"
    );
}

#[test]
fn predict_chunk_by_chunk_and_export_import() {
    let dir = TempDir::new("predict");
    let out = dir.join("run");
    let c = carry_it::train_small(&dir, "train", &out, &[]);
    let log = c.log();
    assert!(log.contains("DONE steps=10 loss=0."), "{log}");
    assert!(log.contains("val_loss=none"), "no validation data: {log}");
    // 3 sequences of 192 steps, also cut into two chunks of 96
    let (n, t) = (3usize, 192usize);
    let x: Vec<f32> = (0..n * t * 2).map(|i| ((i as f32) * 0.37).sin()).collect();
    let mut first = Vec::new();
    let mut second = Vec::new();
    for s in 0..n {
        let seq = &x[s * t * 2..(s + 1) * t * 2];
        first.extend_from_slice(&seq[..96 * 2]);
        second.extend_from_slice(&seq[96 * 2..]);
    }
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    write_npy(&dir.join("x.npy"), &[n, t, 2], &x).unwrap();
    write_npy(&dir.join("x1.npy"), &[n * 96 * 2], &first).unwrap(); // flat: reshaped as (-1, 96, 2)
    write_npy(&dir.join("x2.npy"), &[n, 96, 2], &second).unwrap();
    let run = |name: &str, args: &[&str]| {
        let mut full = vec!["predict", "--model"];
        full.extend_from_slice(args);
        let mut pr = Proc::coordinator(name, &full, &[], dir.path());
        pr.success(Duration::from_secs(60));
    };
    let model = out.to_str().unwrap().to_string();
    run(
        "whole",
        &[&model, "--inputs", &p("x.npy"), "--out", &p("whole.npz")],
    );
    run(
        "chunk1",
        &[&model, "--inputs", &p("x1.npy"), "--out", &p("c1.npz")],
    );
    run(
        "chunk2",
        &[
            &model,
            "--inputs",
            &p("x2.npy"),
            "--initial-state",
            &p("c1.npz"),
            "--out",
            &p("c2.npz"),
        ],
    );
    let whole = read_npz(&dir.join("whole.npz")).unwrap();
    let c1 = read_npz(&dir.join("c1.npz")).unwrap();
    let c2 = read_npz(&dir.join("c2.npz")).unwrap();
    assert_eq!(whole["y"].shape, vec![3, 192, 2]);
    assert_eq!(whole["h"].shape, vec![2, 3, 8], "[layers, N, H]");
    assert_eq!(c1["y"].shape, vec![3, 96, 2]);
    let d = whole["h"]
        .data
        .iter()
        .zip(&c2["h"].data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        d < 1e-5,
        "chunked prediction carries the state: final h differs by {d}"
    );
    for s in 0..n {
        let tail = &whole["y"].data[(s * t + 96) * 2..(s + 1) * t * 2];
        let chunk = &c2["y"].data[s * 96 * 2..(s + 1) * 96 * 2];
        let d = tail
            .iter()
            .zip(chunk)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-5, "sequence {s}: second chunk differs by {d}");
    }
    // a wrong-shaped state is a clear error
    write_npz(
        &dir.join("bad.npz"),
        &[("h", &[2, 3, 2], &[0.0; 12]), ("c", &[2, 3, 8], &[0.0; 48])],
    )
    .unwrap();
    let mut bad = Proc::coordinator(
        "bad-state",
        &[
            "predict",
            "--model",
            &model,
            "--inputs",
            &p("x2.npy"),
            "--initial-state",
            &p("bad.npz"),
            "--out",
            &p("bad-out.npz"),
        ],
        &[],
        dir.path(),
    );
    let status = bad.wait(Duration::from_secs(30));
    bad.check(
        !status.success() && bad.log().contains("h: expected (2, 3, 8), got (2, 3, 2)"),
        "shape error",
    );
    // export, then predict from the exported (imported) weights: the same predictions
    let mut e = Proc::coordinator(
        "export",
        &["export", "--model", &model, "--out", &p("m.safetensors")],
        &[],
        dir.path(),
    );
    e.success(Duration::from_secs(30));
    run(
        "imported",
        &[
            &p("m.safetensors"),
            "--inputs",
            &p("x.npy"),
            "--out",
            &p("imported.npz"),
        ],
    );
    let imp = read_npz(&dir.join("imported.npz")).unwrap();
    assert_eq!(imp["y"].data, whole["y"].data, "import is lossless");
}

#[test]
fn bad_data_files_are_clear_errors() {
    let dir = TempDir::new("bad-data");
    let f = dir.join("bad.npz");
    write_npz(
        &f,
        &[("x", &[1000], &[0.0; 1000]), ("y", &[1000], &[0.0; 1000])],
    )
    .unwrap();
    let mut c = Proc::coordinator(
        "bad",
        &[
            "train",
            "--spawn-workers",
            "0",
            "--data",
            f.to_str().unwrap(),
            "--out",
            dir.join("o").to_str().unwrap(),
        ],
        &[],
        dir.path(),
    );
    let status = c.wait(Duration::from_secs(30));
    c.check(!status.success(), "refused");
    c.check(
        c.log().contains("96*2 = 192") && c.log().contains("(1000,)"),
        "names expected and given sizes",
    );
}

#[test]
fn a_missing_device_is_a_clear_error() {
    let dir = TempDir::new("device");
    for device in ["dx12", "metal"] {
        let mut w = Proc::worker(
            device,
            &["--coordinator", "http://127.0.0.1:9", "--device", device],
            &[],
            dir.path(),
        );
        let status = w.wait(Duration::from_secs(60));
        w.check(!status.success(), "a missing device is an error");
        w.check(
            w.log()
                .contains(&format!("device `{device}` is not available")),
            "names the device",
        );
        w.check(!w.log().contains("panicked"), "no panic");
    }
}

#[test]
fn spawned_workers_that_die_fail_the_job_instead_of_hanging_it() {
    let dir = TempDir::new("spawn-fail");
    let out = dir.join("run");
    let mut c = Proc::coordinator(
        "coordinator",
        &[
            "train",
            "--listen",
            "127.0.0.1:0",
            "--spawn-workers",
            "2",
            "--worker-args",
            "--no-such-flag",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
        dir.path(),
    );
    let status = c.wait(Duration::from_secs(60));
    c.check(!status.success(), "the job fails");
    c.check(c.log().contains("every spawned worker exited"), "says why");
}

#[test]
fn resuming_on_other_data_is_refused() {
    let dir = TempDir::new("other-data");
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    let mut a = Proc::coordinator(
        "first",
        &[
            "train",
            "--spawn-workers",
            "0",
            "--out",
            o,
            "--sequences",
            "100",
            "--epochs",
            "1",
        ],
        &[],
        dir.path(),
    );
    a.success(Duration::from_secs(60));
    let mut b = Proc::coordinator(
        "resume",
        &[
            "train",
            "--spawn-workers",
            "0",
            "--out",
            o,
            "--resume",
            o,
            "--sequences",
            "120",
            "--epochs",
            "2",
        ],
        &[],
        dir.path(),
    );
    let status = b.wait(Duration::from_secs(60));
    b.check(
        !status.success() && b.log().contains("trained on other data"),
        "refused, saying why",
    );
    // the same data resumes and extends the run
    let mut c = Proc::coordinator(
        "extend",
        &[
            "train",
            "--spawn-workers",
            "0",
            "--out",
            o,
            "--resume",
            o,
            "--sequences",
            "100",
            "--epochs",
            "2",
        ],
        &[],
        dir.path(),
    );
    c.success(Duration::from_secs(60));
    carry_it::assert_step_log(&metrics(&out), 20);
}
