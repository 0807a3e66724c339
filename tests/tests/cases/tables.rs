//! Real tables through the real programs: missing values (masked targets, filled and flagged
//! inputs) in training, distributed training, forecast and evaluate.

use std::path::Path;

use carry_it::{TempDir, max_diff, metrics, params};

use super::series::{LENS, s, series_args, write_csv};

/// A small seeded generator for the tests' choices.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Blanks `frac` of the value cells of the CSV at `path` (seeded), never in a series' first
/// three rows (every series keeps observed targets to learn from). Returns the 1-based line and
/// the column of the first blanked cell in file order.
fn blank_cells(path: &Path, frac: f64, seed: u64) -> (usize, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    let header = lines[0].clone();
    let mut seen = std::collections::HashMap::new();
    let mut eligible = Vec::new();
    let mut cells = 0;
    for (li, row) in lines.iter().enumerate().skip(1) {
        let k = seen.entry(row[0].clone()).or_insert(0usize);
        *k += 1;
        for c in 2..row.len() {
            cells += 1;
            if *k > 3 {
                eligible.push((li, c));
            }
        }
    }
    let want = (cells as f64 * frac).round() as usize;
    assert!(eligible.len() >= want, "enough cells to blank");
    let mut rng = Lcg(seed);
    for i in 0..want {
        let j = i + (rng.next() as usize) % (eligible.len() - i);
        eligible.swap(i, j);
    }
    let mut chosen = eligible[..want].to_vec();
    chosen.sort();
    for &(li, c) in &chosen {
        lines[li][c].clear();
    }
    let out: String = lines.iter().map(|r| r.join(",") + "\n").collect();
    std::fs::write(path, out).unwrap();
    let (li, c) = chosen[0];
    (li + 1, header[c].clone())
}

#[test]
fn a_table_with_a_tenth_of_its_cells_missing_trains_forecasts_and_evaluates() {
    let dir = TempDir::new("tables-missing");
    let data = dir.join("stores.csv");
    write_csv(&data, &LENS, 5);
    let (line, column) = blank_cells(&data, 0.10, 9);
    let text = std::fs::read_to_string(&data).unwrap();
    let blanks = text
        .lines()
        .skip(1)
        .flat_map(|l| l.split(',').skip(2))
        .filter(|c| c.is_empty())
        .count();
    let cells = (text.lines().count() - 1) * 2;
    assert_eq!(
        blanks,
        (cells as f64 * 0.1).round() as usize,
        "a tenth of the cells"
    );

    // in process (the reference), then with 2 workers: the same parameters
    let reference = dir.join("ref");
    let mut args = series_args(s(&data), s(&reference));
    args.extend(["--spawn-workers", "0", "--epochs", "2"]);
    let p = carry_it::coordinator_ok(&dir, "missing-ref", &args);
    let log = p.log();
    assert!(
        log.contains("observed_flags=true") && log.contains("missing=mask"),
        "the run says how it treats the gaps: {log}"
    );
    let rows = metrics(&reference);
    assert!(
        rows.iter().all(|r| r.loss.is_finite()) && rows.iter().any(|r| r.val_loss.is_some()),
        "finite losses and a validation loss on the held-out steps"
    );
    let ck = model::checkpoint::Checkpoint::load(&reference).unwrap();
    let series = ck.spec.series.as_ref().unwrap();
    assert!(series.observed_flags, "the checkpoint records the flags");
    assert_eq!(
        ck.spec.model.input, 4,
        "two columns and their observed flags"
    );
    let want = params(&reference);
    let out = dir.join("w2");
    let mut args = series_args(s(&data), s(&out));
    args.extend([
        "--spawn-workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--epochs",
        "2",
    ]);
    let p = carry_it::coordinator_ok(&dir, "missing-w2", &args);
    let d = max_diff(&params(&out), &want);
    p.check(d <= 1e-5, &format!("2 workers: max difference {d}"));
    assert_eq!(metrics(&out).len(), rows.len(), "same steps");

    // forecast: every series, every step, finite, in the table's units
    let fc = dir.join("forecast.csv");
    carry_it::coordinator_ok(
        &dir,
        "missing-forecast",
        &[
            "forecast",
            "--model",
            s(&reference),
            "--data",
            s(&data),
            "--horizon",
            "4",
            "--out",
            s(&fc),
        ],
    );
    let text = std::fs::read_to_string(&fc).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + LENS.len() * 4, "{text}");
    for l in &lines[1..] {
        let v: Vec<f64> = l.split(',').skip(2).map(|x| x.parse().unwrap()).collect();
        assert!(v.len() == 2 && v.iter().all(|x| x.is_finite()), "{l}");
    }

    // evaluate: missing truths are left out of the scores
    let json = dir.join("scores.json");
    carry_it::coordinator_ok(
        &dir,
        "missing-evaluate",
        &[
            "evaluate",
            "--model",
            s(&reference),
            "--data",
            s(&data),
            "--holdout",
            "3",
            "--json-out",
            s(&json),
        ],
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for m in ["model", "persistence"] {
        assert!(v["overall"][m]["mae"].as_f64().unwrap().is_finite(), "{m}");
    }

    // --missing error refuses the first gap, naming its line and column
    let e = carry_it::coordinator_fails(
        &dir,
        "missing-error",
        &[
            "train",
            "--data",
            s(&data),
            "--id-column",
            "store",
            "--time-column",
            "date",
            "--missing",
            "error",
            "--spawn-workers",
            "0",
            "--out",
            s(&dir.join("err")),
        ],
    );
    assert!(
        e.contains(&format!("(line {line})"))
            && e.contains(&format!("column \"{column}\""))
            && e.contains("empty cell"),
        "expected line {line}, column {column}: {e}"
    );
    let e = carry_it::coordinator_fails(
        &dir,
        "missing-error-forecast",
        &[
            "forecast",
            "--model",
            s(&reference),
            "--data",
            s(&data),
            "--horizon",
            "2",
            "--missing",
            "error",
            "--out",
            s(&fc),
        ],
    );
    assert!(
        e.contains("missing value") && e.contains("series \"st-") && e.contains("column \""),
        "{e}"
    );
}

#[test]
fn series_data_takes_forecasting_defaults_and_says_so() {
    let dir = TempDir::new("tables-defaults");
    let data = dir.join("stores.csv");
    write_csv(&data, &LENS, 4);
    let out = dir.join("run");
    let cols = ["--id-column", "store", "--time-column", "date"];
    let mut args = vec!["train", "--data", s(&data)];
    args.extend(cols);
    args.extend(["--steps", "3", "--spawn-workers", "0", "--out", s(&out)]);
    let p = carry_it::coordinator_ok(&dir, "defaults", &args);
    let log = p.log();
    for want in [
        "--batch-size 7 (the 7 series, at most 64)",
        "--epochs 300",
        "--hidden 32",
        "--lr 0.005",
        "--loss huber",
        "--dropout 0",
    ] {
        assert!(log.contains(want), "the run logs `{want}`: {log}");
    }
    let ck = model::checkpoint::Checkpoint::load(&out).unwrap();
    assert_eq!(
        (
            ck.spec.batch_size,
            ck.spec.model.dropout,
            ck.spec.model.hidden
        ),
        (7, 0.0, 32)
    );
    // a flag given wins and is not listed; the dry run shows what is left to the defaults
    let mut args = vec!["train", "--data", s(&data)];
    args.extend(cols);
    args.extend(["--batch-size", "3", "--dropout", "0.1", "--dry-run"]);
    let p = carry_it::coordinator_ok(&dir, "defaults-dry", &args);
    let log = p.log();
    assert!(
        log.contains("batch_size: false")
            && log.contains("epochs: true")
            && log.contains("dropout: 0.1"),
        "{log}"
    );
}
