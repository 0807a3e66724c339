//! Many series of any length from a table, through the real programs: distributed runs equal the
//! in-process reference on ragged data, forecast and evaluate, early stopping, malformed files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use carry_it::{TempDir, max_diff, metrics, params};

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A long-format CSV of `lens.len()` series (ids `st-<i>`, daily dates, two value columns),
/// rows interleaved by date as exports list them.
pub(crate) fn write_csv(path: &Path, lens: &[usize], seed: u64) {
    let mut rows = Vec::new();
    for (i, &n) in lens.iter().enumerate() {
        let start = (i * 3) as i64;
        let (a, w) = (
            1.0 + i as f64 * 0.37,
            0.2 + 0.05 * ((i as u64 + seed) % 7) as f64,
        );
        for r in 0..n {
            let day = start + r as i64;
            let x = a * (w * r as f64).sin() + 0.01 * r as f64;
            let y = (w * 0.5 * r as f64).cos() * 10.0 + a;
            rows.push((day, format!("st-{i}"), x, y));
        }
    }
    rows.sort_by(|p, q| (p.0, &p.1).cmp(&(q.0, &q.1)));
    let mut text = String::from("store,date,demand,price\n");
    for (day, id, x, y) in rows {
        // 2024-01-01 plus `day` days (January and February only)
        let (m, d) = if day < 31 {
            (1, day + 1)
        } else {
            (2, day - 30)
        };
        writeln!(text, "{id},2024-{m:02}-{d:02},{x:.4},{y:.4}").unwrap();
    }
    std::fs::write(path, text).unwrap();
}

/// Ragged lengths: some shorter than one chunk, some many chunks.
pub(crate) const LENS: [usize; 7] = [23, 6, 41, 12, 9, 30, 17];

pub(crate) fn series_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--id-column",
        "store",
        "--time-column",
        "date",
        "--timesteps",
        "8",
        "--batch-size",
        "3",
        "--val-steps",
        "3",
        "--hidden",
        "6",
        "--dropout",
        "0.1",
        "--seed",
        "11",
        "--progress",
        "log",
        "--out",
        out,
    ]
}

#[test]
fn ragged_series_with_1_2_3_workers_equal_the_in_process_reference() {
    let dir = TempDir::new("series-dist");
    let data = dir.join("stores.csv");
    write_csv(&data, &LENS, 1);
    let reference = dir.join("ref");
    let mut args = series_args(s(&data), s(&reference));
    args.extend(["--spawn-workers", "0", "--epochs", "2"]);
    let p = carry_it::coordinator_ok(&dir, "series-ref", &args);
    let want = params(&reference);
    let rows = metrics(&reference);
    assert!(
        rows.iter().any(|r| r.val_loss.is_some()),
        "validation on the held-out steps: {}",
        p.log()
    );
    for k in ["1", "2", "3"] {
        let out = dir.join(&format!("w{k}"));
        let mut args = series_args(s(&data), s(&out));
        args.extend([
            "--spawn-workers",
            k,
            "--listen",
            "127.0.0.1:0",
            "--epochs",
            "2",
        ]);
        let p = carry_it::coordinator_ok(&dir, &format!("series-w{k}"), &args);
        let d = max_diff(&params(&out), &want);
        p.check(d <= 1e-5, &format!("{k} workers: max difference {d}"));
        let got = metrics(&out);
        assert_eq!(got.len(), rows.len(), "{k} workers: same steps");
    }
}

#[test]
fn forecast_and_evaluate_in_the_users_units() {
    let dir = TempDir::new("series-forecast");
    let data = dir.join("stores.csv");
    write_csv(&data, &LENS, 2);
    let out = dir.join("run");
    let mut args = series_args(s(&data), s(&out));
    args.extend(["--spawn-workers", "0", "--epochs", "2"]);
    carry_it::coordinator_ok(&dir, "series-train", &args);

    let fc = dir.join("forecast.csv");
    carry_it::coordinator_ok(
        &dir,
        "series-forecast",
        &[
            "forecast",
            "--model",
            s(&out),
            "--data",
            s(&data),
            "--horizon",
            "5",
            "--out",
            s(&fc),
        ],
    );
    let text = std::fs::read_to_string(&fc).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "store,date,demand,price");
    assert_eq!(lines.len(), 1 + LENS.len() * 5, "{text}");
    // st-1 has 6 rows from 2024-01-04: its forecast starts the next day
    let st1: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("st-1,"))
        .collect();
    assert!(st1[0].starts_with("st-1,2024-01-10,"), "{}", st1[0]);
    assert!(st1[4].starts_with("st-1,2024-01-14,"), "{}", st1[4]);
    for l in &lines[1..] {
        let v: Vec<f64> = l.split(',').skip(2).map(|x| x.parse().unwrap()).collect();
        assert!(v.iter().all(|x| x.is_finite()), "{l}");
    }
    let svg = std::fs::read_to_string(dir.join("forecast.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("st-0"), "plot");

    let json = dir.join("scores.json");
    let p = carry_it::coordinator_ok(
        &dir,
        "series-evaluate",
        &[
            "evaluate",
            "--model",
            s(&out),
            "--data",
            s(&data),
            "--holdout",
            "4",
            "--season",
            "2",
            "--json-out",
            s(&json),
        ],
    );
    let log = p.log();
    assert!(
        log.contains("MASE") && log.contains("persistence") && log.contains("st-6"),
        "{log}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["horizon"], 4);
    assert_eq!(v["series"].as_array().unwrap().len(), LENS.len());
    for m in ["model", "persistence", "seasonal_naive"] {
        assert!(v["overall"][m]["mae"].as_f64().unwrap().is_finite(), "{m}");
    }
    // persistence by hand for st-1 (rows 0..2 history, last 4 held out), first column
    let table = std::fs::read_to_string(&data).unwrap();
    let st1: Vec<Vec<f64>> = table
        .lines()
        .filter(|l| l.starts_with("st-1,"))
        .map(|l| l.split(',').skip(2).map(|x| x.parse().unwrap()).collect())
        .collect();
    let last = &st1[1];
    let mae: f64 = (2..6)
        .flat_map(|r| (0..2).map(move |c| (r, c)))
        .map(|(r, c)| (st1[r][c] - last[c]).abs())
        .sum::<f64>()
        / 8.0;
    let row = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "st-1")
        .unwrap();
    let got = row["persistence"]["mae"].as_f64().unwrap();
    assert!((got - mae).abs() < 1e-6, "{got} vs {mae}");

    let e = carry_it::coordinator_fails(
        &dir,
        "series-holdout",
        &[
            "evaluate",
            "--model",
            s(&out),
            "--data",
            s(&data),
            "--holdout",
            "6",
        ],
    );
    assert!(e.contains("\"st-1\"") && e.contains("6 rows"), "{e}");
}

#[test]
fn early_stopping_keeps_the_best_epochs_weights() {
    let dir = TempDir::new("series-early");
    let data = dir.join("stores.csv");
    write_csv(&data, &LENS, 3);
    let out = dir.join("run");
    let mut args = series_args(s(&data), s(&out));
    args.extend([
        "--spawn-workers",
        "0",
        "--epochs",
        "40",
        "--lr",
        "0.05",
        "--patience",
        "2",
        "--shuffle-series",
        "false",
    ]);
    let p = carry_it::coordinator_ok(&dir, "series-early", &args);
    let log = p.log();
    assert!(log.contains("early stopping"), "{log}");
    let rows = metrics(&out);
    let vals: Vec<(u64, f64)> = rows
        .iter()
        .filter_map(|r| r.val_loss.map(|v| (r.epoch, v)))
        .collect();
    let (best_epoch, best) = vals
        .iter()
        .copied()
        .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    assert!(vals.len() < 40, "stopped before the last epoch: {vals:?}");
    assert_eq!(
        vals.iter().filter(|v| v.0 > best_epoch).count(),
        2,
        "the in-process run stops exactly --patience epochs after the best: {vals:?}"
    );
    let ck = model::checkpoint::Checkpoint::load(&out.join("best.safetensors")).unwrap();
    assert_eq!(
        (ck.cursor.epoch, ck.cursor.step),
        (best_epoch + 1, 0),
        "best.safetensors is the end of epoch {best_epoch} (val {best})"
    );
    let last = params(&out);
    assert!(max_diff(&ck.params, &last) > 0.0, "best and last differ");
}

fn bad_csv(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn malformed_tables_are_refused_with_file_row_and_column() {
    let dir = TempDir::new("series-bad");
    let out = dir.join("run");
    let cases = [
        (
            "unsorted.csv",
            "store,date,v\na,2024-01-02,1\na,2024-01-01,2\na,2024-01-03,3\n",
            vec!["unsorted.csv", "\"a\"", "2024-01-01", "line 3"],
        ),
        (
            "text.csv",
            "store,date,v\na,2024-01-01,1\na,2024-01-02,lots\na,2024-01-03,3\n",
            vec!["text.csv", "\"v\"", "lots", "line 3"],
        ),
        (
            "sparse.csv",
            "store,date,v\na,2024-01-01,1\na,2024-01-02,NaN\na,2024-01-03,\n",
            vec!["sparse.csv", "series \"a\"", "\"v\"", "no observed value"],
        ),
        (
            "short.csv",
            "store,date,v\na,2024-01-01,1\na,2024-01-02,2\na,2024-01-03,3\nb,2024-01-01,1\n",
            vec!["short.csv", "\"b\"", "1 rows"],
        ),
    ];
    for (name, text, want) in cases {
        let p = bad_csv(&dir, name, text);
        let e = carry_it::coordinator_fails(
            &dir,
            name,
            &[
                "train",
                "--data",
                s(&p),
                "--id-column",
                "store",
                "--time-column",
                "date",
                "--spawn-workers",
                "0",
                "--out",
                s(&out),
            ],
        );
        for w in want {
            assert!(e.contains(w), "{name}: expected `{w}` in: {e}");
        }
    }
    let p = bad_csv(
        &dir,
        "ok.csv",
        "store,date,v\na,2024-01-01,1\na,2024-01-02,2\n",
    );
    let e = carry_it::coordinator_fails(
        &dir,
        "missing-column",
        &[
            "train",
            "--data",
            s(&p),
            "--id-column",
            "shop",
            "--spawn-workers",
            "0",
            "--out",
            s(&out),
        ],
    );
    assert!(e.contains("shop") && e.contains("store"), "{e}");
    let e = carry_it::coordinator_fails(
        &dir,
        "initial-state",
        &[
            "train",
            "--data",
            s(&p),
            "--initial-state",
            s(&p),
            "--spawn-workers",
            "0",
            "--out",
            s(&out),
        ],
    );
    assert!(e.contains("initial_state") && e.contains("series"), "{e}");
}

#[test]
fn csv_parquet_and_ragged_npz_train_the_same_model() {
    let dir = TempDir::new("series-formats");
    let ws = carry_it::workspace();
    let csv = ws.join("examples/stores.csv");
    let parquet = ws.join("tests/fixtures/series/stores.parquet");
    let npz = ws.join("tests/fixtures/series/stores.npz");
    let train = |name: &str, data: &Path, cols: &[&str]| {
        let out = dir.join(name);
        let mut args = vec![
            "train",
            "--data",
            s(data),
            "--timesteps",
            "16",
            "--batch-size",
            "6",
            "--steps",
            "8",
            "--hidden",
            "6",
            "--seed",
            "4",
            "--spawn-workers",
            "0",
            "--progress",
            "log",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(cols);
        carry_it::coordinator_ok(&dir, name, &args);
        params(&out)
    };
    let by_name = ["--id-column", "shop", "--time-column", "date"];
    let a = train("csv", &csv, &by_name);
    let b = train("parquet", &parquet, &by_name);
    assert_eq!(
        a, b,
        "the same table from CSV and Parquet trains the same model"
    );
    let c = train("npz", &npz, &[]);
    let d = max_diff(&a, &c);
    assert!(
        d < 1e-6,
        "the ragged .npz of the same series: difference {d}"
    );
}
