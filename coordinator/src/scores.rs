//! Scores of H-step forecasts of many series against their held-out actual values, side by side
//! with two baselines computed from the same history: persistence (the last value repeated) and,
//! when a season `m > 1` is given, seasonal naive (the last season repeated). Pure functions: no
//! model, no I/O.
//!
//! # Definitions
//! For one column of one series, with errors `e_j = F_j - A_j` over the horizon `j = 1..h`:
//! - MAE: `mean |e_j|`.
//! - RMSE: `sqrt(mean e_j^2)`.
//! - sMAPE, in percent: `200/h * sum |F_j - A_j| / (|A_j| + |F_j|)`; a term with
//!   `|A_j| + |F_j| = 0` counts 0.
//! - MASE: MAE divided by the in-sample mean absolute seasonal difference of the history,
//!   `mean_{t >= m} |y_t - y_{t-m}|` (m = the season, 1 when none). Undefined (`None`, `null` in
//!   JSON, `-` in the table) when that scale is 0 or the history is shorter than `m + 1`.
//!
//! A series with k target columns gets each metric per column, then the mean over its columns;
//! MASE is the mean over the columns where it is defined, undefined when it is defined in none.
//! The scale depends on the history only, so the model and the baselines are scored on the same
//! columns.
//!
//! Over all series ("overall"), following M4 practice:
//! - MAE and sMAPE: the mean over all points of all series and columns;
//! - RMSE: the root of the mean squared error pooled over all points of all series and columns;
//! - MASE: the mean of the per-series MASE over the series where it is defined.
//!
//! Every series has the same horizon and columns, so the pooled MAE equals the mean of the
//! per-series MAE (without missing values).
//!
//! # Missing values
//! A missing actual value (`NaN`) is left out: each metric counts the observed points only, and a
//! column (or series) without any is left out of the means (its metrics are undefined, `-` in
//! the table and `null` in JSON). The baselines are computed from the history with each missing
//! value replaced by the last observed one (the first observed one before it), and MASE's scale
//! uses the pairs of history values that are both observed. Seasonal naive needs at least `m` history rows; a series with fewer has no
//! seasonal naive scores, and the overall seasonal naive scores cover the other series only.

use std::fmt::Write as _;

use model::ModelError;
use serde::Serialize;

/// One series to score. Every array is row-major with one column per target, in user units.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesForecast {
    /// The series id, shown in the table and the JSON.
    pub id: String,
    /// `[n_hist, k]`: the values before the holdout, oldest first; `n_hist >= 1`; `NaN` where
    /// missing, with at least one observed value per column.
    pub history: Vec<f64>,
    /// `[h, k]`: the held-out values; `NaN` where missing.
    pub actual: Vec<f64>,
    /// `[h, k]`: the model's forecast of them.
    pub forecast: Vec<f64>,
}

/// The error metrics of one method on one series, or overall.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// Mean absolute error.
    pub mae: f64,
    /// Root mean squared error.
    pub rmse: f64,
    /// Symmetric mean absolute percentage error, in percent (0 to 200).
    pub smape: f64,
    /// Mean absolute scaled error; `None` where undefined (see the module docs).
    pub mase: Option<f64>,
}

/// The metrics of the model and of the baselines.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MethodScores {
    /// The model's forecast.
    pub model: Metrics,
    /// The last history value repeated.
    pub persistence: Metrics,
    /// The last season of the history repeated; `None` without a season `m > 1`, or (per series)
    /// with fewer than `m` history rows, or (overall) when no series has them.
    pub seasonal_naive: Option<Metrics>,
}

/// The scores of one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesScores {
    /// The series id.
    pub id: String,
    /// Its metrics, per method.
    #[serde(flatten)]
    pub scores: MethodScores,
}

/// The scores of a set of forecasts: overall, then per series. Serializes to
/// `{"horizon", "season", "columns", "overall": {"model": {"mae", "rmse", "smape", "mase"},
/// "persistence", "seasonal_naive"}, "series": [{"id", "model", ...}]}`, `null` where undefined
/// or absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    /// The forecast horizon h.
    pub horizon: usize,
    /// The season m as given (`None`: none, MASE uses m = 1).
    pub season: Option<usize>,
    /// The target columns.
    pub columns: Vec<String>,
    /// Over all series (see the module docs for how each metric is pooled).
    pub overall: MethodScores,
    /// Per series, in input order.
    pub series: Vec<SeriesScores>,
    /// A quantile forecast's scores (its point forecast, above, is its middle level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantiles: Option<QuantileScores>,
}

/// The scores of a quantile forecast against the actual values: the pinball loss of its levels
/// and how often the interval between its lowest and highest level held the actual value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantileScores {
    /// The levels.
    pub levels: Vec<f32>,
    /// The nominal coverage of the interval, highest level less lowest (0.8 for 0.1 to 0.9).
    pub interval: f64,
    /// Over all observed points of all series and columns.
    pub overall: QuantileMetrics,
    /// Per series, in input order.
    pub series: Vec<SeriesQuantileMetrics>,
}

/// The quantile metrics of a set of points.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QuantileMetrics {
    /// The pinball loss, in the table's units, averaged over the points and the levels: for
    /// level `q`, `q (A - F)` where the actual value is above the forecast, else
    /// `(1 - q) (F - A)`. NaN (`null`) without observed points.
    pub pinball: f64,
    /// The fraction of observed points within `[lowest level, highest level]`.
    pub coverage: f64,
    /// Observed points.
    pub points: usize,
}

/// The quantile metrics of one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesQuantileMetrics {
    /// The series id.
    pub id: String,
    /// Its metrics.
    #[serde(flatten)]
    pub metrics: QuantileMetrics,
}

/// The quantile scores of `forecasts` (per series `[h, k, levels]`: each target's levels side by
/// side, ascending) against the actual values of `series` (whose `forecast` is not used);
/// missing actual values are left out.
pub fn score_quantiles(
    series: &[SeriesForecast],
    forecasts: &[Vec<f64>],
    levels: &[f32],
) -> QuantileScores {
    let per = levels.len();
    let metrics = |loss: f64, inside: usize, points: usize| QuantileMetrics {
        pinball: loss / (points * per) as f64,
        coverage: inside as f64 / points as f64,
        points,
    };
    let (mut loss, mut inside, mut points) = (0.0, 0usize, 0usize);
    let mut rows = Vec::with_capacity(series.len());
    for (s, fc) in series.iter().zip(forecasts) {
        let (mut sl, mut si, mut sp) = (0.0, 0usize, 0usize);
        for (&a, f) in s.actual.iter().zip(fc.chunks(per)) {
            if a.is_nan() {
                continue;
            }
            sp += 1;
            for (&q, &v) in levels.iter().zip(f) {
                let q = f64::from(q);
                sl += if a > v {
                    q * (a - v)
                } else {
                    (1.0 - q) * (v - a)
                };
            }
            if f[0] <= a && a <= f[per - 1] {
                si += 1;
            }
        }
        rows.push(SeriesQuantileMetrics {
            id: s.id.clone(),
            metrics: metrics(sl, si, sp),
        });
        (loss, inside, points) = (loss + sl, inside + si, points + sp);
    }
    QuantileScores {
        levels: levels.to_vec(),
        interval: f64::from(levels[per - 1] - levels[0]),
        overall: metrics(loss, inside, points),
        series: rows,
    }
}

/// Scores `series`, each with `columns.len()` target columns and `horizon` forecast steps,
/// against persistence and (with `season` `m > 1`) seasonal naive. Errors name the series and
/// the array of a wrong length or a non-finite value.
pub fn score(
    series: &[SeriesForecast],
    columns: &[String],
    horizon: usize,
    season: Option<usize>,
) -> Result<Scores, ModelError> {
    let k = columns.len();
    let config = |field: &str, msg: String| ModelError::Config {
        field: field.into(),
        msg,
    };
    if k == 0 {
        return Err(config("columns", "expected at least one, got none".into()));
    }
    if horizon == 0 {
        return Err(config("horizon", "expected at least 1, got 0".into()));
    }
    if season == Some(0) {
        return Err(config("season", "expected at least 1, got 0".into()));
    }
    if series.is_empty() {
        return Err(config("series", "expected at least one, got none".into()));
    }
    let m = season.unwrap_or(1);
    let seasonal = m > 1;

    let mut pooled = [Pooled::default(); 3];
    let mut rows = Vec::with_capacity(series.len());
    for s in series {
        check(s, k, horizon)?;
        let n = s.history.len() / k;
        let scale: Vec<Option<f64>> = (0..k).map(|c| mase_scale(&s.history, k, c, m)).collect();
        let filled = filled(&s.history, k);
        let persistence = persistence(&filled, k, horizon);
        let naive = (seasonal && n >= m).then(|| seasonal_naive(&filled, k, m, horizon));
        let mut eval = |i: usize, pred: &[f64]| {
            let (metrics, sums) = series_metrics(&s.actual, pred, k, &scale);
            pooled[i].add(&sums, metrics.mase);
            metrics
        };
        let scores = MethodScores {
            model: eval(0, &s.forecast),
            persistence: eval(1, &persistence),
            seasonal_naive: naive.map(|p| eval(2, &p)),
        };
        rows.push(SeriesScores {
            id: s.id.clone(),
            scores,
        });
    }
    Ok(Scores {
        horizon,
        season,
        columns: columns.to_vec(),
        overall: MethodScores {
            model: pooled[0].metrics(),
            persistence: pooled[1].metrics(),
            seasonal_naive: (pooled[2].sums.points > 0).then(|| pooled[2].metrics()),
        },
        series: rows,
        quantiles: None,
    })
}

/// Checks the lengths and finiteness of one series' arrays.
fn check(s: &SeriesForecast, k: usize, h: usize) -> Result<(), ModelError> {
    let what = |field: &str| format!("series `{}` {field}", s.id);
    if s.history.is_empty() || !s.history.len().is_multiple_of(k) {
        return Err(ModelError::Shape {
            what: what("history"),
            expected: format!("(n_hist >= 1, {k}) (a multiple of {k} values)"),
            got: format!("{} values", s.history.len()),
        });
    }
    for (field, v) in [("actual", &s.actual), ("forecast", &s.forecast)] {
        if v.len() != h * k {
            return Err(ModelError::Shape {
                what: what(field),
                expected: format!("({h}, {k}) ({} values)", h * k),
                got: format!("{} values", v.len()),
            });
        }
    }
    for c in 0..k {
        if s.history.iter().skip(c).step_by(k).all(|v| v.is_nan()) {
            return Err(ModelError::Shape {
                what: what("history"),
                expected: format!("at least one observed value in column {c}"),
                got: "only missing values".into(),
            });
        }
    }
    for (field, v, missing_ok) in [
        ("history", &s.history, true),
        ("actual", &s.actual, true),
        ("forecast", &s.forecast, false),
    ] {
        if let Some((index, &value)) = v
            .iter()
            .enumerate()
            .find(|(_, x)| !(x.is_finite() || missing_ok && x.is_nan()))
        {
            return Err(ModelError::NonFinite {
                what: what(field),
                index,
                value: value as f32,
            });
        }
    }
    Ok(())
}

/// The MASE scale of column `c` of `history` (`[n, k]`): the mean absolute difference at lag
/// `m` over the pairs both observed; `None` when it is 0 or there is no such pair.
fn mase_scale(history: &[f64], k: usize, c: usize, m: usize) -> Option<f64> {
    let n = history.len() / k;
    let (mut sum, mut pairs) = (0.0, 0usize);
    for t in m..n {
        let d = (history[t * k + c] - history[(t - m) * k + c]).abs();
        if !d.is_nan() {
            sum += d;
            pairs += 1;
        }
    }
    let scale = sum / pairs as f64;
    (pairs > 0 && scale > 0.0).then_some(scale)
}

/// `history` (`[n, k]`) with each missing value replaced by the last observed one of its column
/// (the first observed one before that).
fn filled(history: &[f64], k: usize) -> Vec<f64> {
    let mut out = history.to_vec();
    for c in 0..k {
        let first = history
            .iter()
            .skip(c)
            .step_by(k)
            .copied()
            .find(|v| !v.is_nan())
            .unwrap_or(0.0);
        let mut last = first;
        for v in out.iter_mut().skip(c).step_by(k) {
            if v.is_nan() {
                *v = last;
            } else {
                last = *v;
            }
        }
    }
    out
}

/// Persistence, `[h, k]`: the last history row repeated.
fn persistence(history: &[f64], k: usize, h: usize) -> Vec<f64> {
    let last = &history[history.len() - k..];
    last.repeat(h)
}

/// Seasonal naive, `[h, k]`: `y_{T+j} = y_{T+j-m*ceil(j/m)}` for `j = 1..h`, `T` the last
/// history row. Needs at least `m` history rows.
fn seasonal_naive(history: &[f64], k: usize, m: usize, h: usize) -> Vec<f64> {
    let n = history.len() / k;
    let mut out = Vec::with_capacity(h * k);
    for j in 1..=h {
        let row = n - 1 + j - m * j.div_ceil(m);
        out.extend_from_slice(&history[row * k..(row + 1) * k]);
    }
    out
}

/// Sums over the points of a series (all its columns) that the overall metrics pool.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    points: usize,
    abs: f64,
    sq: f64,
    /// Sum of the sMAPE terms `2 |F - A| / (|A| + |F|)`.
    smape: f64,
}

/// The overall metrics of one method, gathered series by series.
#[derive(Debug, Clone, Copy, Default)]
struct Pooled {
    sums: Sums,
    mase_sum: f64,
    mase_series: usize,
}

impl Pooled {
    fn add(&mut self, s: &Sums, mase: Option<f64>) {
        self.sums.points += s.points;
        self.sums.abs += s.abs;
        self.sums.sq += s.sq;
        self.sums.smape += s.smape;
        if let Some(v) = mase {
            self.mase_sum += v;
            self.mase_series += 1;
        }
    }

    /// The overall metrics; NaN when no series was added.
    fn metrics(&self) -> Metrics {
        let n = self.sums.points as f64;
        Metrics {
            mae: self.sums.abs / n,
            rmse: (self.sums.sq / n).sqrt(),
            smape: 100.0 * self.sums.smape / n,
            mase: (self.mase_series > 0).then(|| self.mase_sum / self.mase_series as f64),
        }
    }
}

/// The metrics of `pred` against `actual` (both `[h, k]`), per column then averaged over the
/// columns, and the sums to pool.
fn series_metrics(
    actual: &[f64],
    pred: &[f64],
    k: usize,
    scale: &[Option<f64>],
) -> (Metrics, Sums) {
    let h = actual.len() / k;
    let mut total = Sums::default();
    let (mut mae, mut rmse, mut smape) = (0.0, 0.0, 0.0);
    let (mut mase_sum, mut mase_cols) = (0.0, 0usize);
    let mut cols = 0usize;
    for c in 0..k {
        let mut col = Sums::default();
        for j in 0..h {
            let (a, f) = (actual[j * k + c], pred[j * k + c]);
            if a.is_nan() {
                continue;
            }
            let e = (f - a).abs();
            let denom = a.abs() + f.abs();
            col.points += 1;
            col.abs += e;
            col.sq += e * e;
            if denom > 0.0 {
                col.smape += 2.0 * e / denom;
            }
        }
        if col.points == 0 {
            continue;
        }
        cols += 1;
        let points = col.points as f64;
        let col_mae = col.abs / points;
        mae += col_mae;
        rmse += (col.sq / points).sqrt();
        smape += 100.0 * col.smape / points;
        if let Some(s) = scale[c] {
            mase_sum += col_mae / s;
            mase_cols += 1;
        }
        total.points += col.points;
        total.abs += col.abs;
        total.sq += col.sq;
        total.smape += col.smape;
    }
    // NaN (undefined) when no column has an observed value
    let kf = cols as f64;
    let metrics = Metrics {
        mae: mae / kf,
        rmse: rmse / kf,
        smape: smape / kf,
        mase: (mase_cols > 0).then(|| mase_sum / mase_cols as f64),
    };
    (metrics, total)
}

/// A table cell: about four significant digits, scientific outside `[0.001, 1e6)`.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if v.is_nan() {
        "-".into()
    } else if v == 0.0 {
        "0".into()
    } else if !v.is_finite() || !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else {
        let decimals = (3 - a.log10().floor() as i32).clamp(0, 4) as usize;
        format!("{v:.decimals$}")
    }
}

/// The four cells of one method; `-` where undefined or absent.
fn cells(m: Option<&Metrics>) -> [String; 4] {
    match m {
        Some(m) => [
            fmt_num(m.mae),
            fmt_num(m.rmse),
            fmt_num(m.smape),
            m.mase.map_or_else(|| "-".into(), fmt_num),
        ],
        None => std::array::from_fn(|_| "-".into()),
    }
}

impl Scores {
    /// An aligned text table: a line saying what was scored, then one row for the overall
    /// scores and one per series, with MAE, RMSE, sMAPE (%) and MASE for the model, persistence
    /// and (with a season) seasonal naive; `-` where undefined.
    pub fn table(&self) -> String {
        let seasonal = self.season.is_some_and(|m| m > 1);
        let mut groups = vec!["model", "persistence"];
        if seasonal {
            groups.push("seasonal naive");
        }
        let row = |s: &MethodScores| {
            let mut out = vec![cells(Some(&s.model)), cells(Some(&s.persistence))];
            if seasonal {
                out.push(cells(s.seasonal_naive.as_ref()));
            }
            out
        };
        let body: Vec<(&str, Vec<[String; 4]>)> = std::iter::once(("overall", row(&self.overall)))
            .chain(self.series.iter().map(|s| (s.id.as_str(), row(&s.scores))))
            .collect();
        let heads = ["MAE", "RMSE", "sMAPE%", "MASE"];
        let id_w = body
            .iter()
            .map(|(id, _)| id.chars().count())
            .chain([6])
            .max()
            .unwrap_or(6);
        let cell_w = body
            .iter()
            .flat_map(|(_, r)| r.iter().flatten().map(String::len))
            .chain(heads.iter().map(|h| h.len()))
            .max()
            .unwrap_or(4);
        // a group is four cells, each preceded by a space, then a space before the bar
        let group_w = 4 * (cell_w + 1) + 1;

        let mut t = String::new();
        let season = match self.season {
            Some(m) => format!("season {m}"),
            None => "no season".into(),
        };
        let _ = writeln!(
            t,
            "horizon {}, {season}, {} series, columns: {} (each metric per column, averaged over the columns)",
            self.horizon,
            self.series.len(),
            self.columns.join(", ")
        );
        let _ = write!(t, "{:id_w$} |", "");
        for g in &groups {
            let _ = write!(t, " {g:<w$}|", w = group_w - 1);
        }
        t.push('\n');
        let _ = write!(t, "{:id_w$} |", "series");
        for _ in &groups {
            for h in heads {
                let _ = write!(t, " {h:>cell_w$}");
            }
            t.push_str(" |");
        }
        t.push('\n');
        let _ = write!(t, "{}-+", "-".repeat(id_w));
        for _ in &groups {
            let _ = write!(t, "{}+", "-".repeat(group_w));
        }
        t.push('\n');
        for (id, r) in &body {
            let pad = id_w - id.chars().count();
            let _ = write!(t, "{id}{:pad$} |", "");
            for g in r {
                for c in g {
                    let _ = write!(t, " {c:>cell_w$}");
                }
                t.push_str(" |");
            }
            t.push('\n');
        }
        t.push_str(
            "overall: MAE and sMAPE over all points, RMSE the root of the pooled squared error, \
             MASE the mean over series; - undefined (MASE: flat or short history",
        );
        t.push_str(if seasonal {
            "; seasonal naive: fewer history rows than the season)\n"
        } else {
            ")\n"
        });
        if let Some(q) = &self.quantiles {
            let levels: Vec<String> = q.levels.iter().map(|v| v.to_string()).collect();
            let _ = writeln!(
                t,
                "quantiles {} (the model's point forecast above is its middle level): pinball loss {}, the {}% interval held {:.1}% of {} values",
                levels.join(", "),
                fmt_num(q.overall.pinball),
                (1000.0 * q.interval).round() / 10.0,
                100.0 * q.overall.coverage,
                q.overall.points
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    fn close(got: f64, want: f64, what: &str) {
        assert!(
            (got - want).abs() <= EPS,
            "{what}: expected {want}, got {got}"
        );
    }

    fn check_metrics(got: &Metrics, want: [f64; 3], mase: Option<f64>, what: &str) {
        close(got.mae, want[0], &format!("{what} MAE"));
        close(got.rmse, want[1], &format!("{what} RMSE"));
        close(got.smape, want[2], &format!("{what} sMAPE"));
        match (got.mase, mase) {
            (Some(g), Some(w)) => close(g, w, &format!("{what} MASE")),
            (g, w) => assert_eq!(g, w, "{what} MASE"),
        }
    }

    fn series(id: &str, history: &[f64], actual: &[f64], forecast: &[f64]) -> SeriesForecast {
        SeriesForecast {
            id: id.into(),
            history: history.to_vec(),
            actual: actual.to_vec(),
            forecast: forecast.to_vec(),
        }
    }

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn missing_truths_are_left_out_and_baselines_carry_over_gaps() {
        let nan = f64::NAN;
        // history 1, 2, -, 4, - : persistence carries 4; lag-1 pairs (1,2) only: scale 1
        // actual 5, -, 7 against forecast 5, 100, 8: errors 0 and 1 (the middle is missing)
        let s = [series(
            "a",
            &[1., 2., nan, 4., nan],
            &[5., nan, 7.],
            &[5., 100., 8.],
        )];
        let r = score(&s, &cols(&["y"]), 3, None).unwrap();
        let row = &r.series[0].scores;
        let model = [0.5, 0.5f64.sqrt(), 50.0 * 2.0 / 15.0];
        check_metrics(&row.model, model, Some(0.5), "model");
        let pers = [2.0, 5.0f64.sqrt(), 50.0 * (2.0 / 9.0 + 6.0 / 11.0)];
        check_metrics(&row.persistence, pers, Some(2.0), "persistence");
        // a series without any observed truth has no metrics and leaves the pooled ones alone
        let both = [
            s[0].clone(),
            series("b", &[1., 2.], &[nan, nan, nan], &[1., 1., 1.]),
        ];
        let r = score(&both, &cols(&["y"]), 3, None).unwrap();
        assert!(r.series[1].scores.model.mae.is_nan());
        assert_eq!(r.series[1].scores.model.mase, None);
        check_metrics(&r.overall.model, model, Some(0.5), "overall");
        assert!(r.table().contains("b"), "{}", r.table());
        // a history without any observed value, or a non-finite forecast, is an error
        let e = score(
            &[series("c", &[nan, nan], &[1., 1., 1.], &[1., 1., 1.])],
            &cols(&["y"]),
            3,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`c` history") && e.contains("observed"), "{e}");
        let e = score(
            &[series("d", &[1., 2.], &[1., 1., 1.], &[1., nan, 1.])],
            &cols(&["y"]),
            3,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`d` forecast"), "{e}");
    }

    #[test]
    fn quantile_forecasts_score_their_pinball_loss_and_coverage() {
        let nan = f64::NAN;
        // levels 0.1, 0.9; actual 5 inside [4, 6], 9 above [7, 8], missing, 0 inside [0, 1]
        let s = [series(
            "a",
            &[1.0],
            &[5.0, 9.0, nan, 0.0],
            &[5.0, 7.5, 3.0, 0.5],
        )];
        let fc = vec![vec![4.0, 6.0, 7.0, 8.0, 2.0, 4.0, 0.0, 1.0]];
        let q = score_quantiles(&s, &fc, &[0.1, 0.9]);
        // pinball: (0.1*1 + 0.1*1) + (0.1*2 + 0.9*1) + (0.9*0 + 0.1*1) over 3 points x 2 levels
        let want = (0.2 + 1.1 + 0.1) / 6.0;
        assert!((q.overall.pinball - want).abs() < 1e-6, "{:?}", q.overall);
        assert!((q.overall.coverage - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(q.overall.points, 3);
        assert!((q.interval - 0.8).abs() < 1e-6);
        assert_eq!(q.series[0].metrics, q.overall);
        let mut r = score(&s, &cols(&["y"]), 4, None).unwrap();
        r.quantiles = Some(q);
        let table = r.table();
        assert!(
            table.contains("quantiles 0.1, 0.9")
                && table.contains("80% interval held 66.7% of 3 values"),
            "{table}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["quantiles"]["series"][0]["id"], "a");
        assert!(json["quantiles"]["overall"]["coverage"].as_f64().is_some());
    }

    #[test]
    fn one_series_without_a_season() {
        // errors 0, 1; persistence [4, 4] errs 1, 2; lag-1 scale 1
        let s = [series("a", &[1., 2., 3., 4.], &[5., 6.], &[5., 7.])];
        let r = score(&s, &cols(&["y"]), 2, None).unwrap();
        let row = &r.series[0].scores;
        let model = [0.5, 0.5f64.sqrt(), 50.0 * 2.0 / 13.0];
        check_metrics(&row.model, model, Some(0.5), "model");
        let pers = [1.5, 2.5f64.sqrt(), 50.0 * (2.0 / 9.0 + 4.0 / 10.0)];
        check_metrics(&row.persistence, pers, Some(1.5), "persistence");
        assert_eq!(row.seasonal_naive, None);
        // one series: overall is the same
        assert_eq!(r.overall, *row);
    }

    #[test]
    fn one_series_with_season_two() {
        // lag-2 scale: |3-1|, |4-2| -> 2; seasonal naive [3, 4] errs 2, 2
        let s = [series("a", &[1., 2., 3., 4.], &[5., 6.], &[5., 7.])];
        let r = score(&s, &cols(&["y"]), 2, Some(2)).unwrap();
        let row = &r.series[0].scores;
        check_metrics(
            &row.model,
            [0.5, 0.5f64.sqrt(), 100.0 / 13.0],
            Some(0.25),
            "model",
        );
        check_metrics(
            &row.persistence,
            [1.5, 2.5f64.sqrt(), 50.0 * (2.0 / 9.0 + 0.4)],
            Some(0.75),
            "persistence",
        );
        let naive = row.seasonal_naive.expect("seasonal naive with m = 2");
        check_metrics(&naive, [2.0, 2.0, 45.0], Some(1.0), "seasonal naive");
    }

    #[test]
    fn seasonal_naive_repeats_the_last_season() {
        // m = 2, h = 5: rows n-2, n-1, n-2, n-1, n-2
        let h = [1., 10., 2., 20., 3., 30., 4., 40.];
        assert_eq!(
            seasonal_naive(&h, 2, 2, 5),
            [3., 30., 4., 40., 3., 30., 4., 40., 3., 30.]
        );
        // m = 3 with exactly m rows
        assert_eq!(seasonal_naive(&[7., 8., 9.], 1, 3, 4), [7., 8., 9., 7.]);
        assert_eq!(persistence(&h, 2, 2), [4., 40., 4., 40.]);
    }

    #[test]
    fn two_columns_are_scored_per_column_then_averaged() {
        // column a as above; column b: history 0, 2, 4, 6 (scale 2), actual 8, 10, forecast 9, 10
        let s = [series(
            "ab",
            &[1., 0., 2., 2., 3., 4., 4., 6.],
            &[5., 8., 6., 10.],
            &[5., 9., 7., 10.],
        )];
        let r = score(&s, &cols(&["a", "b"]), 2, None).unwrap();
        let row = &r.series[0].scores;
        let smape = (100.0 / 13.0 + 100.0 / 17.0) / 2.0;
        check_metrics(
            &row.model,
            [0.5, 0.5f64.sqrt(), smape],
            Some(0.375),
            "model",
        );
        // persistence [4, 6]: column a errs 1, 2; column b errs 2, 4
        let pers = [
            (1.5 + 3.0) / 2.0,
            (2.5f64.sqrt() + 10.0f64.sqrt()) / 2.0,
            (50.0 * (2.0 / 9.0 + 0.4) + 50.0 * (4.0 / 14.0 + 8.0 / 16.0)) / 2.0,
        ];
        check_metrics(
            &row.persistence,
            pers,
            Some((1.5 + 1.5) / 2.0),
            "persistence",
        );
    }

    #[test]
    fn overall_pools_points_and_averages_mase_over_series_where_defined() {
        // b: flat history (scale 0: no MASE), actual 0, 0 and forecast 0, 3 (a 0/0 sMAPE term)
        let s = [
            series("a", &[1., 2., 3., 4.], &[5., 6.], &[5., 7.]),
            series("b", &[0., 0., 0., 0.], &[0., 0.], &[0., 3.]),
        ];
        let r = score(&s, &cols(&["y"]), 2, None).unwrap();
        let b = &r.series[1].scores;
        check_metrics(&b.model, [1.5, 4.5f64.sqrt(), 100.0], None, "b model");
        check_metrics(&b.persistence, [0.0, 0.0, 0.0], None, "b persistence");
        // model errors 0, 1, 0, 3: pooled, not the mean of the series' RMSE
        let model = [1.0, 2.5f64.sqrt(), 25.0 * (2.0 / 13.0 + 2.0)];
        check_metrics(&r.overall.model, model, Some(0.5), "overall model");
        let pers = [0.75, 1.25f64.sqrt(), 25.0 * (2.0 / 9.0 + 0.4)];
        check_metrics(
            &r.overall.persistence,
            pers,
            Some(1.5),
            "overall persistence",
        );
        assert_eq!(r.overall.seasonal_naive, None);
    }

    #[test]
    fn short_histories_leave_mase_and_seasonal_naive_undefined() {
        // m = 2: "a" has 2 rows (seasonal naive yes, MASE no), "b" 1 row (neither)
        let s = [
            series("a", &[1., 2.], &[3., 4.], &[3., 4.]),
            series("b", &[5.], &[6., 7.], &[6., 8.]),
        ];
        let r = score(&s, &cols(&["y"]), 2, Some(2)).unwrap();
        let (a, b) = (&r.series[0].scores, &r.series[1].scores);
        assert_eq!(a.model.mase, None);
        let naive = a.seasonal_naive.expect("2 rows are enough for m = 2");
        check_metrics(
            &naive,
            [2.0, 2.0, 50.0 * (4.0 / 4.0 + 4.0 / 6.0)],
            None,
            "a naive",
        );
        assert_eq!(b.seasonal_naive, None);
        // overall seasonal naive covers "a" only; no MASE anywhere
        assert_eq!(r.overall.seasonal_naive, a.seasonal_naive);
        assert_eq!(r.overall.model.mase, None);
        // m = 1 needs 2 rows for a scale
        let r = score(&s[1..], &cols(&["y"]), 2, None).unwrap();
        assert_eq!(r.series[0].scores.model.mase, None);
    }

    #[test]
    fn bad_inputs_name_the_series_and_the_array() {
        let y = cols(&["y"]);
        let e = score(&[series("s7", &[1., 2.], &[3.], &[3., 4.])], &y, 2, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "series `s7` actual: expected (2, 1) (2 values), got 1 values"
        );
        let e = score(
            &[series("s7", &[1., 2., 3.], &[3., 4.], &[3., 4.])],
            &cols(&["a", "b"]),
            1,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("series `s7` history"), "{e}");
        let e = score(&[series("s7", &[1.], &[3.], &[f64::NAN])], &y, 1, None).unwrap_err();
        assert!(e.to_string().starts_with("series `s7` forecast"), "{e}");
        let e = score(&[series("s7", &[1.], &[3.], &[3.])], &y, 1, Some(0)).unwrap_err();
        assert!(e.to_string().contains("season"), "{e}");
    }

    #[test]
    fn json_has_the_documented_shape_with_nulls() {
        let s = [
            series("a", &[1., 2., 3., 4.], &[5., 6.], &[5., 7.]),
            series("b", &[5.], &[6., 7.], &[6., 8.]),
        ];
        let r = score(&s, &cols(&["y"]), 2, Some(2)).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["horizon"], 2);
        assert_eq!(v["season"], 2);
        assert_eq!(v["columns"], serde_json::json!(["y"]));
        assert_eq!(v["overall"]["model"]["mae"], 0.5);
        assert_eq!(v["overall"]["seasonal_naive"]["mase"], 1.0);
        assert_eq!(v["series"][0]["id"], "a");
        assert_eq!(v["series"][0]["model"]["mase"], 0.25);
        assert_eq!(v["series"][1]["model"]["mase"], serde_json::Value::Null);
        assert_eq!(v["series"][1]["seasonal_naive"], serde_json::Value::Null);
        let keys: Vec<&String> = v["series"][1].as_object().unwrap().keys().collect();
        assert_eq!(
            keys.len(),
            4,
            "id, model, persistence, seasonal_naive: {keys:?}"
        );
        let r = score(&s, &cols(&["y"]), 2, None).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["season"], serde_json::Value::Null);
        assert_eq!(v["overall"]["seasonal_naive"], serde_json::Value::Null);
    }

    #[test]
    fn the_table_is_aligned_with_overall_first() {
        let s = [
            series("a", &[1., 2., 3., 4.], &[5., 6.], &[5., 7.]),
            series("a-much-longer-id", &[5.], &[6., 7.], &[6., 8.]),
        ];
        let t = score(&s, &cols(&["y"]), 2, Some(2)).unwrap().table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].contains("model") && lines[1].contains("seasonal naive"),
            "{t}"
        );
        assert!(lines[4].starts_with("overall "), "{t}");
        assert!(lines[5].starts_with("a "), "{t}");
        assert!(lines[6].starts_with("a-much-longer-id "), "{t}");
        // every row of the grid puts its bars at the same places
        let bars = |l: &str| -> Vec<usize> { l.match_indices('|').map(|(i, _)| i).collect() };
        for l in &lines[1..7] {
            if !l.starts_with('-') {
                assert_eq!(bars(l), bars(lines[2]), "{t}");
            }
            assert_eq!(l.len(), lines[2].len(), "{t}");
        }
        // model MAE 0.5, MASE 0.25 for "a"; "-" for its undefined cells in the other row
        assert!(
            lines[5].contains("0.5000") && lines[5].contains("0.2500"),
            "{t}"
        );
        assert!(lines[6].contains(" - "), "{t}");
        // without a season there is no seasonal naive group
        let t = score(&s, &cols(&["y"]), 2, None).unwrap().table();
        assert!(!t.contains("seasonal naive"), "{t}");
    }

    #[test]
    fn numbers_keep_about_four_significant_digits() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(0.5), "0.5000");
        assert_eq!(fmt_num(123.456), "123.5");
        assert_eq!(fmt_num(12345.6), "12346");
        assert_eq!(fmt_num(0.012345), "0.0123");
        assert_eq!(fmt_num(2.5e-5), "2.500e-5");
        assert_eq!(fmt_num(3.0e7), "3.000e7");
    }
}
