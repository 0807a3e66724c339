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

/// Daily sales of `series` shops over `days` days, driven by a promotion flag known ahead (sales
/// jump by 40% on promotion days), plus a visitors column known only up to each day. With
/// `future` extra days, those rows have the promotion and an empty sales and visitors cell
/// (the days to forecast).
fn write_promo_csv(path: &Path, series: usize, days: usize, future: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let mut text = String::from("shop,date,sales,promo,visitors\n");
    for i in 0..series {
        let level = 50.0 + 10.0 * i as f64;
        for d in 0..days + future {
            let promo = u8::from(rng.next() % 10 < 3);
            let noise = (rng.next() % 1000) as f64 / 1000.0 - 0.5;
            let sales = level * (1.0 + 0.4 * f64::from(promo)) + 2.0 * noise;
            let date = civil(d as i64);
            if d < days {
                let visitors = sales / 3.0 + noise;
                text.push_str(&format!("s{i},{date},{sales:.2},{promo},{visitors:.2}\n"));
            } else {
                text.push_str(&format!("s{i},{date},,{promo},\n"));
            }
        }
    }
    std::fs::write(path, text).unwrap();
}

/// `YYYY-MM-DD` of day `d` after 2023-01-01.
fn civil(d: i64) -> String {
    let z = d + 19_358 + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{day:02}")
}

#[test]
fn a_future_covariate_that_drives_the_target_improves_the_forecast() {
    let dir = TempDir::new("tables-covariates");
    let data = dir.join("promo.csv");
    write_promo_csv(&data, 6, 90, 0, 3);
    assert_eq!(civil(0), "2023-01-01");
    assert_eq!(civil(59), "2023-03-01");
    let train = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut args = vec![
            "train",
            "--data",
            s(&data),
            "--id-column",
            "shop",
            "--time-column",
            "date",
            "--input-columns",
            "sales",
            "--target-columns",
            "sales",
            "--val-steps",
            "10",
            "--timesteps",
            "30",
            "--hidden",
            "16",
            "--epochs",
            "80",
            "--seed",
            "3",
            "--spawn-workers",
            "0",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        carry_it::coordinator_ok(&dir, name, &args);
        out
    };
    let mae = |name: &str, model: &Path| {
        let json = dir.join(&format!("{name}.json"));
        carry_it::coordinator_ok(
            &dir,
            name,
            &[
                "evaluate",
                "--model",
                s(model),
                "--data",
                s(&data),
                "--holdout",
                "10",
                "--json-out",
                s(&json),
            ],
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        v["overall"]["model"]["mae"].as_f64().unwrap()
    };
    let without = train("without", &[]);
    let with = train("with", &["--future-covariates", "promo"]);
    let ck = model::checkpoint::Checkpoint::load(&with).unwrap();
    assert_eq!(
        ck.spec.series.as_ref().unwrap().future_covariates,
        ["promo"],
        "the checkpoint records the covariate"
    );
    assert_eq!(ck.spec.model.input, 2);
    let (a, b) = (mae("eval-without", &without), mae("eval-with", &with));
    eprintln!("held-out MAE: {b:.3} with the future covariate, {a:.3} without");
    assert!(
        b < 0.6 * a,
        "knowing the promotions ahead: MAE {b} with the covariate against {a} without"
    );

    // forecast: the table gives the promotions of the days to forecast
    let future = dir.join("future.csv");
    write_promo_csv(&future, 6, 90, 5, 3);
    let fc = dir.join("forecast.csv");
    carry_it::coordinator_ok(
        &dir,
        "forecast",
        &[
            "forecast",
            "--model",
            s(&with),
            "--data",
            s(&future),
            "--horizon",
            "5",
            "--out",
            s(&fc),
        ],
    );
    let text = std::fs::read_to_string(&fc).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 6 * 5, "{text}");
    let table = std::fs::read_to_string(&future).unwrap();
    let promo: std::collections::HashMap<(String, String), bool> = table
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            ((f[0].to_string(), f[1].to_string()), f[3] == "1")
        })
        .collect();
    // on promotion days the forecast is higher than the shop's other forecast days
    let mut lifts = Vec::new();
    for shop in 0..6 {
        let rows: Vec<(bool, f64)> = lines[1..]
            .iter()
            .filter(|l| l.starts_with(&format!("s{shop},")))
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (
                    promo[&(f[0].to_string(), f[1].to_string())],
                    f[2].parse().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            rows.len(),
            5,
            "the forecast days are the table's future rows"
        );
        let mean = |p: bool| {
            let v: Vec<f64> = rows.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        if let (Some(on), Some(off)) = (mean(true), mean(false)) {
            lifts.push(on / off);
        }
    }
    assert!(
        !lifts.is_empty() && lifts.iter().all(|&l| l > 1.15),
        "{lifts:?}"
    );
    // a horizon past the rows the table gives is refused, naming the series and the times
    let e = carry_it::coordinator_fails(
        &dir,
        "forecast-short",
        &[
            "forecast",
            "--model",
            s(&with),
            "--data",
            s(&future),
            "--horizon",
            "7",
            "--out",
            s(&fc),
        ],
    );
    assert!(
        e.contains("series \"s0\"")
            && e.contains("\"promo\"")
            && e.contains(&civil(95))
            && e.contains(&civil(96))
            && e.contains("rows for 5 of them"),
        "{e}"
    );

    // past covariates and calendar features: trained, recorded, forecast over the horizon
    let all = train(
        "all",
        &[
            "--future-covariates",
            "promo",
            "--past-covariates",
            "visitors",
            "--calendar",
            "dow,month",
        ],
    );
    let ck = model::checkpoint::Checkpoint::load(&all).unwrap();
    assert_eq!(ck.spec.model.input, 1 + 1 + 1 + 4);
    carry_it::coordinator_ok(
        &dir,
        "forecast-all",
        &[
            "forecast",
            "--model",
            s(&all),
            "--data",
            s(&future),
            "--horizon",
            "5",
            "--out",
            s(&fc),
        ],
    );
    let text = std::fs::read_to_string(&fc).unwrap();
    for l in text.lines().skip(1) {
        let v: f64 = l.split(',').nth(2).unwrap().parse().unwrap();
        assert!(v.is_finite() && v > 0.0, "{l}");
    }
}

#[test]
fn serve_forecasts_with_the_covariates_a_request_gives() {
    use super::serving::{TOKEN, http, serve};
    use serde_json::{Value, json};
    let dir = TempDir::new("tables-serve");
    let data = dir.join("promo.csv");
    write_promo_csv(&data, 3, 40, 0, 8);
    let out = dir.join("run");
    carry_it::coordinator_ok(
        &dir,
        "train",
        &[
            "train",
            "--data",
            s(&data),
            "--id-column",
            "shop",
            "--time-column",
            "date",
            "--input-columns",
            "sales",
            "--future-covariates",
            "promo",
            "--calendar",
            "dow",
            "--timesteps",
            "10",
            "--hidden",
            "8",
            "--epochs",
            "3",
            "--spawn-workers",
            "0",
            "--out",
            s(&out),
        ],
    );
    let (_p, grpc, addr) = serve(&dir, "serve", s(&out), &[]);
    // a step's inputs: sales, the next day's promotion, sin and cos of its weekday
    let history = json!([
        [0.1, 1.0, 0.0, 1.0],
        [0.3, 0.0, 0.78, 0.62],
        [-0.2, 0.0, 0.97, -0.22]
    ]);
    for id in ["a", "b"] {
        let (st, _) = http(
            &addr,
            "POST",
            &format!("/v1/streams/{id}/predict"),
            Some(json!({ "x": history })),
            Some(TOKEN),
        );
        assert_eq!(st, 200);
    }
    let future = json!([[1.0, 0.43, -0.9], [0.0, -0.43, -0.9]]);
    let forecast = |f: Value| {
        http(
            &addr,
            "POST",
            "/v1/streams/a/forecast",
            Some(json!({"horizon": 3, "future": f})),
            Some(TOKEN),
        )
    };
    let (st, body) = forecast(future.clone());
    assert_eq!(st, 200, "{body}");
    let y: Vec<f64> = body["y"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_f64().unwrap())
        .collect();
    assert_eq!(y.len(), 3);
    // the same steps by hand on stream b: the prediction fed back, the covariates given
    let mut last = y[0];
    for (k, row) in future.as_array().unwrap().iter().enumerate() {
        let mut x = vec![json!(last)];
        x.extend(row.as_array().unwrap().iter().cloned());
        let (st, b) = http(
            &addr,
            "POST",
            "/v1/streams/b/predict",
            Some(json!({ "x": [x] })),
            Some(TOKEN),
        );
        assert_eq!(st, 200, "{b}");
        last = b["y"][0][0].as_f64().unwrap();
        assert!(
            (last - y[k + 1]).abs() < 1e-5,
            "step {}: {last} vs {}",
            k + 1,
            y[k + 1]
        );
    }
    // gRPC answers the same, the covariates in a tensor
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let g = rt.block_on(async {
        let mut c = super::serving::client(&grpc).await;
        let r = c
            .forecast(proto::pb::ForecastRequest {
                stream_id: "a".into(),
                horizon: 3,
                future: Some(proto::convert::tensor(
                    &[2, 3],
                    &[1.0, 0.43, -0.9, 0.0, -0.43, -0.9],
                )),
            })
            .await
            .unwrap()
            .into_inner();
        proto::convert::decode_any(r.y.as_ref(), "y").unwrap().0
    });
    for (a, b) in g.iter().zip(&y) {
        assert!((f64::from(*a) - b).abs() < 1e-5, "gRPC {g:?} vs HTTP {y:?}");
    }
    // other promotions, another forecast; the first step, computed already, stays
    let (_, other) = forecast(json!([[0.0, 0.43, -0.9], [1.0, -0.43, -0.9]]));
    let z: Vec<f64> = other["y"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_f64().unwrap())
        .collect();
    assert_eq!(z[0], y[0]);
    assert!(
        (z[1] - y[1]).abs() > 1e-6,
        "the covariate reaches the forecast"
    );
    // no covariates, or the wrong shape: a clear 400
    let (st, e) = http(
        &addr,
        "POST",
        "/v1/streams/a/forecast",
        Some(json!({"horizon": 3})),
        Some(TOKEN),
    );
    assert_eq!(st, 400);
    let e = e["error"].as_str().unwrap().to_string();
    assert!(e.contains("future") && e.contains("(2, 3)"), "{e}");
    let (st, e) = forecast(json!([[1.0, 0.4]]));
    assert_eq!(st, 400);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("expected shape (2, 3)"),
        "{e}"
    );
}

/// `series` daily series of `days` days: a level and a weekly pattern of their own plus Gaussian
/// noise of standard deviation `sd` (seeded), so that each day's quantiles are known.
fn write_noisy_csv(path: &Path, series: usize, days: usize, sd: f64, seed: u64) {
    let mut rng = Lcg(seed);
    let mut uniform = || ((rng.next() % 1_000_000) as f64 + 0.5) / 1_000_000.0;
    let mut text = String::from("id,date,y\n");
    for i in 0..series {
        let level = 20.0 + 3.0 * i as f64;
        let amp = 2.0 + (i % 4) as f64;
        for d in 0..days {
            // Box-Muller
            let z = (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
            let week = (std::f64::consts::TAU * d as f64 / 7.0).sin();
            let y = level + amp * week + sd * z;
            text.push_str(&format!("n{i},{},{y:.4}\n", civil(d as i64)));
        }
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_quantile_models_80_percent_interval_covers_about_80_percent_of_held_out_values() {
    let dir = TempDir::new("tables-quantiles");
    let data = dir.join("noisy.csv");
    write_noisy_csv(&data, 16, 100, 1.5, 21);
    let out = dir.join("run");
    let args = |out: &Path, epochs: &'static str| {
        let mut a = vec![
            "train".to_string(),
            "--data".into(),
            s(&data).into(),
            "--id-column".into(),
            "id".into(),
            "--time-column".into(),
            "date".into(),
            "--quantiles".into(),
            "0.1,0.5,0.9".into(),
            "--val-steps".into(),
            "12".into(),
            "--timesteps".into(),
            "32".into(),
            "--hidden".into(),
            "16".into(),
            "--epochs".into(),
            epochs.into(),
            "--seed".into(),
            "5".into(),
            "--out".into(),
            s(out).into(),
        ];
        a.extend(["--spawn-workers".into(), "0".into()]);
        a
    };
    let a = args(&out, "150");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    carry_it::coordinator_ok(&dir, "train", &a);
    let ck = model::checkpoint::Checkpoint::load(&out).unwrap();
    assert_eq!(
        ck.spec.quantiles,
        [0.1, 0.5, 0.9],
        "the checkpoint records the levels"
    );
    assert_eq!(ck.spec.model.output, 3, "one output per level");

    let json = dir.join("scores.json");
    let p = carry_it::coordinator_ok(
        &dir,
        "evaluate",
        &[
            "evaluate",
            "--model",
            s(&out),
            "--data",
            s(&data),
            "--holdout",
            "12",
            "--json-out",
            s(&json),
        ],
    );
    assert!(p.log().contains("80% interval held"), "{}", p.log());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let q = &v["quantiles"]["overall"];
    let coverage = q["coverage"].as_f64().unwrap();
    eprintln!(
        "held-out coverage of the 10%-90% interval: {coverage:.3} of {} values, pinball {}",
        q["points"], q["pinball"]
    );
    assert_eq!(q["points"], 16 * 12);
    assert!(
        (0.7..=0.9).contains(&coverage),
        "the 80% interval covers {coverage} of the held-out values"
    );
    assert!(q["pinball"].as_f64().unwrap() > 0.0);

    // forecast: one column per level, never crossing, and the interval drawn
    let fc = dir.join("forecast.csv");
    carry_it::coordinator_ok(
        &dir,
        "forecast",
        &[
            "forecast",
            "--model",
            s(&out),
            "--data",
            s(&data),
            "--horizon",
            "6",
            "--out",
            s(&fc),
        ],
    );
    let text = std::fs::read_to_string(&fc).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,date,y_q0.1,y_q0.5,y_q0.9"));
    for l in lines {
        let v: Vec<f64> = l.split(',').skip(2).map(|x| x.parse().unwrap()).collect();
        assert!(v[0] <= v[1] && v[1] <= v[2], "quantiles do not cross: {l}");
    }
    let svg = std::fs::read_to_string(dir.join("forecast.svg")).unwrap();
    assert!(
        svg.contains("10%-90%") && svg.contains("<polygon"),
        "the interval is drawn"
    );

    // serve: a forecast feeds back the median and returns every level, sorted
    {
        use super::serving::{TOKEN, http, serve};
        use serde_json::json;
        let (_p, _grpc, addr) = serve(&dir, "serve", s(&out), &[]);
        let x = json!([[0.1], [0.4], [-0.3], [0.2]]);
        let (st, b) = http(
            &addr,
            "POST",
            "/v1/streams/n0/predict",
            Some(json!({ "x": x })),
            Some(TOKEN),
        );
        assert_eq!(st, 200, "{b}");
        let (st, b) = http(
            &addr,
            "POST",
            "/v1/streams/n0/forecast",
            Some(json!({"horizon": 5})),
            Some(TOKEN),
        );
        assert_eq!(st, 200, "{b}");
        let rows = b["y"].as_array().unwrap();
        assert_eq!(rows.len(), 5);
        for r in rows {
            let v: Vec<f64> = r
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert!(v.len() == 3 && v[0] <= v[1] && v[1] <= v[2], "{v:?}");
        }
    }

    // the levels travel to the workers: 2 workers equal the in-process run
    let (r, w) = (dir.join("q-ref"), dir.join("q-w2"));
    let a = args(&r, "2");
    carry_it::coordinator_ok(
        &dir,
        "q-ref",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut a = args(&w, "2");
    a.truncate(a.len() - 2);
    a.extend([
        "--spawn-workers".into(),
        "2".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ]);
    let p = carry_it::coordinator_ok(
        &dir,
        "q-w2",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let d = max_diff(&params(&w), &params(&r));
    p.check(d <= 1e-5, &format!("2 workers: max difference {d}"));
}
