//! `coordinator forecast` and `coordinator evaluate`: models trained on series data, applied to
//! series in a table.
//!
//! Both warm each series' state over its history (from zero, every step) and roll out `H` steps,
//! feeding each prediction back as the next input; values are scaled with the statistics stored in
//! the checkpoint (series the model has not seen are scaled by their own history) and written in
//! the user's units. `evaluate` holds out the last `H` steps of every series and scores the
//! forecast of them against persistence and seasonal-naive baselines.

use std::path::PathBuf;

use clap::Args;
use data::series::{Features, Scale, Scaler, SeriesSpec, Stat, column_indices};
use data::table::{Table, format_time};
use model::checkpoint::Checkpoint;
use model::device::{DeviceChoice, make_engine, resolve};
use model::engine::{Engine, EngineKind, Quantiles};

use crate::error::CoordError;
use crate::report::{PlotSeries, forecast_svg};
use crate::scores::{Scores, SeriesForecast, score};

/// Series at most in one engine call.
const GROUP: usize = 256;
/// Series drawn in `forecast.svg`.
const PLOTTED: usize = 6;
/// History steps drawn before the forecast.
const PLOT_HISTORY: usize = 200;

/// Which columns of the table are read; each defaults to what the model was trained with.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ColumnArgs {
    /// Column naming each series [default: the model's].
    #[arg(long, env = "CARRY_ID_COLUMN")]
    pub id_column: Option<String>,
    /// Column ordering each series' rows [default: the model's].
    #[arg(long, env = "CARRY_TIME_COLUMN")]
    pub time_column: Option<String>,
    /// Input columns, comma-separated [default: the model's].
    #[arg(long, env = "CARRY_INPUT_COLUMNS", value_delimiter = ',')]
    pub input_columns: Option<Vec<String>>,
    /// Target columns [default: the model's].
    #[arg(long, env = "CARRY_TARGET_COLUMNS", value_delimiter = ',')]
    pub target_columns: Option<Vec<String>>,
    /// What a missing value cell in the history does: mask (filled with the last observation,
    /// flagged when the model has observed flags; missing truths are left out of the scores) or
    /// error [default: mask].
    #[arg(long, env = "CARRY_MISSING", value_enum)]
    pub missing: Option<data::series::MissingPolicy>,
}

/// The model and the table `forecast` and `evaluate` apply it to.
#[derive(Debug, Clone, Args)]
pub(crate) struct SeriesModelArgs {
    /// A checkpoint (file or run directory) of a model trained on series data.
    #[arg(long, env = "CARRY_MODEL")]
    pub model: PathBuf,
    /// The series: .csv, .csv.gz, .parquet or a ragged .npz.
    #[arg(long, env = "CARRY_DATA")]
    pub data: PathBuf,
    /// Columns.
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// Device.
    #[arg(long, env = "CARRY_DEVICE", value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Engine.
    #[arg(long, env = "CARRY_ENGINE", value_enum, default_value_t = EngineKind::Fused)]
    pub engine: EngineKind,
}

/// Options of `coordinator forecast`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ForecastArgs {
    /// Model, data, columns, device.
    #[command(flatten)]
    pub from: SeriesModelArgs,
    /// Steps to forecast.
    #[arg(long)]
    pub horizon: usize,
    /// Output CSV (long format: id, time, one column per target); a plot of a few series is
    /// written beside it with the extension .svg.
    #[arg(long, env = "CARRY_FORECAST_OUT")]
    pub out: PathBuf,
}

/// Options of `coordinator evaluate`.
#[derive(Debug, Clone, Args)]
pub(crate) struct EvaluateArgs {
    /// Model, data, columns, device.
    #[command(flatten)]
    pub from: SeriesModelArgs,
    /// Steps held out at the end of every series and forecast from the rest.
    #[arg(long)]
    pub holdout: usize,
    /// Season length m of the seasonal-naive baseline and of MASE's scale [default: 1, no
    /// seasonal baseline].
    #[arg(long)]
    pub season: Option<usize>,
    /// Also write the scores as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// A model and the table it is applied to.
struct Loaded {
    ck: Checkpoint,
    spec: SeriesSpec,
    table: Table,
    scaler: Scaler,
    features: Features,
    targets: Vec<usize>,
    engine: Box<dyn Engine>,
}

fn config_err(field: &str, msg: String) -> CoordError {
    CoordError::Config {
        field: field.into(),
        msg,
    }
}

fn data_err(table: &Table, msg: String) -> CoordError {
    CoordError::Data(data::DataError::Invalid {
        source_name: table.source.clone(),
        msg,
    })
}

fn load(a: &SeriesModelArgs) -> Result<Loaded, CoordError> {
    let (model_path, data, cols) = (&a.model, &a.data, &a.columns);
    let ck = Checkpoint::load(model_path)?;
    let Some(mut spec) = ck.spec.series.clone() else {
        return Err(config_err(
            "model",
            format!(
                "{} was trained on windows ({}); forecast and evaluate need a model trained on series data (--data FILE.csv, .csv.gz, .parquet or a ragged .npz)",
                model_path.display(),
                ck.data_name
            ),
        ));
    };
    if let Some(c) = &cols.id_column {
        spec.id_column = Some(c.clone());
    }
    if let Some(c) = &cols.time_column {
        spec.time_column = Some(c.clone());
    }
    if let Some(c) = &cols.input_columns {
        spec.input_columns = c.clone();
    }
    if let Some(c) = &cols.target_columns {
        spec.target_columns = c.clone();
    }
    let policy = cols.missing.unwrap_or_default();
    let m = &ck.spec.model;
    let targets = m.output / ck.spec.outputs_per_target();
    if spec.input_columns.len() != spec.target_columns.len() || spec.target_columns.len() != targets
    {
        return Err(config_err(
            "input_columns",
            format!(
                "the model gives {targets} targets, fed back as its first {targets} inputs; got input columns {:?} and target columns {:?}",
                spec.input_columns, spec.target_columns
            ),
        ));
    }
    if !spec.targets_are_inputs() {
        return Err(config_err(
            "target_columns",
            format!(
                "a forecast feeds each prediction back as the next input, so the targets must be the inputs; got inputs {:?} and targets {:?}",
                spec.input_columns, spec.target_columns
            ),
        ));
    }
    // Missing cells are read as NaN whatever the policy: the rows after a series' last observed
    // target are the horizon's, whose targets are empty; `--missing error` then refuses a
    // missing cell in the history.
    let mut read_spec = spec.clone();
    read_spec.missing = data::series::MissingPolicy::Mask;
    let (table, _) = data::series::read(data, &read_spec, None)?;
    spec.missing = policy;
    let features = Features::new(&table, &spec)?;
    if features.width() != m.input {
        return Err(config_err(
            "model",
            format!(
                "the model takes {} inputs per step; the table's columns make {} (inputs {:?}, past covariates {:?}, future covariates {:?}, calendar {:?}, observed flags {})",
                m.input,
                features.width(),
                spec.input_columns,
                spec.past_covariates,
                spec.future_covariates,
                spec.calendar.iter().map(|c| c.name()).collect::<Vec<_>>(),
                spec.observed_flags
            ),
        ));
    }
    let mut scaler = ck.scaler.clone().unwrap_or_else(|| Scaler {
        kind: Scale::None,
        columns: table.columns.clone(),
        global: vec![[0.0, 1.0]; table.columns.len()],
        series: Default::default(),
    });
    scaler.extend(&table);
    let targets = column_indices(&table, &spec.target_columns)?;
    let compute = resolve(a.device)?;
    let engine = make_engine(a.engine, &compute, m, 1)?;
    Ok(Loaded {
        ck,
        spec,
        table,
        scaler,
        features,
        targets,
        engine,
    })
}

impl Loaded {
    /// Rows of series `i` up to its last observed target (the rest are the horizon's rows).
    fn history_rows(&self, i: usize) -> Result<usize, CoordError> {
        let t = &self.table;
        let w = t.columns.len();
        let a = t.offsets[i];
        (0..self.rows(i))
            .rev()
            .find(|&r| {
                self.targets
                    .iter()
                    .any(|&c| !t.values[(a + r) * w + c].is_nan())
            })
            .map(|r| r + 1)
            .ok_or_else(|| {
                data_err(
                    t,
                    format!(
                        "series {:?} has no observed value of its target columns {:?}; there is nothing to forecast from",
                        t.ids[i], self.spec.target_columns
                    ),
                )
            })
    }

    /// The times of the `horizon` steps after the first `hist` rows of series `i`: the table's
    /// rows after them while there are, then continuing the last interval.
    fn horizon_times(&self, i: usize, hist: usize, horizon: usize) -> Vec<f64> {
        let t = &self.table;
        let times = &t.times[t.offsets[i]..t.offsets[i + 1]];
        let have = times.len().min(hist + horizon);
        let mut out: Vec<f64> = times[hist..have].to_vec();
        let known = &times[..have];
        for k in 1..=hist + horizon - have {
            out.push(data::series::next_time(t.time_kind, known, k));
        }
        out
    }

    /// Checks that the history of series `i` (its first `hist` rows) has no missing cell under
    /// `--missing error`, and that the table gives the future covariates of every horizon row.
    fn check_rows(&self, i: usize, hist: usize, horizon: usize) -> Result<(), CoordError> {
        let t = &self.table;
        let w = t.columns.len();
        let a = t.offsets[i];
        let id = &t.ids[i];
        let when = |r: usize| format_time(t.time_kind, t.times[a + r]);
        if self.spec.missing == data::series::MissingPolicy::Error {
            let mut cols: Vec<usize> = self.features.now_columns().to_vec();
            cols.extend(self.features.next_columns());
            for r in 0..hist {
                for &c in &cols {
                    if t.values[(a + r) * w + c].is_nan() {
                        return Err(data_err(
                            t,
                            format!(
                                "series {id:?}, time {}, column {:?}: expected a number, found a missing value (`--missing mask` forecasts through missing values)",
                                when(r),
                                t.columns[c]
                            ),
                        ));
                    }
                }
            }
        }
        let next = self.features.next_columns();
        if next.is_empty() {
            return Ok(());
        }
        let have = self.rows(i) - hist;
        if have < horizon {
            let times = self.horizon_times(i, hist, horizon);
            let missing: Vec<String> = times[have..]
                .iter()
                .map(|&v| format_time(t.time_kind, v))
                .collect();
            return Err(data_err(
                t,
                format!(
                    "series {id:?}: the future covariates {:?} are needed for the {horizon} forecast times, and the table has rows for {have} of them; missing {} (add rows with the covariates and empty targets after the series' last observation)",
                    self.spec.future_covariates,
                    shorten(&missing)
                ),
            ));
        }
        for r in hist..hist + horizon {
            for &c in next {
                if t.values[(a + r) * w + c].is_nan() {
                    return Err(data_err(
                        t,
                        format!(
                            "series {id:?}, time {}: future covariate {:?} is missing; a forecast needs it at every forecast time",
                            when(r),
                            t.columns[c]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Forecasts `horizon` steps after the first `hist[i]` rows of every series, in user units
    /// (`[horizon, targets]` per series).
    fn forecast(&mut self, hist: &[usize], horizon: usize) -> Result<Vec<Vec<f64>>, CoordError> {
        let t = &self.table;
        let n = t.ids.len();
        for (i, &h) in hist.iter().enumerate() {
            self.check_rows(i, h, horizon)?;
        }
        let w = t.columns.len();
        let f = &self.features;
        let (now_cols, next_cols) = (f.now_columns(), f.next_columns());
        let k = self.targets.len();
        let mut scaled = Vec::with_capacity(n);
        let mut fills = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut next_stats = Vec::with_capacity(n);
        for (i, id) in t.ids.iter().enumerate() {
            let a = t.offsets[i];
            let h = hist[i];
            let mut fill = f.fill();
            let mut v = Vec::new();
            f.push_table_steps(t, &self.scaler, i, 0..h - 1, &mut fill, &mut v);
            // the history's last step reads the first horizon row's covariates and time
            let stat = |c: usize| self.scaler.stat(id, &t.columns[c]);
            let now: Vec<f32> = now_cols
                .iter()
                .map(|&c| Scaler::apply(stat(c), t.values[(a + h - 1) * w + c]))
                .collect();
            let sx: Vec<Stat> = next_cols.iter().map(|&c| stat(c)).collect();
            let ht = self.horizon_times(i, h, horizon);
            let next: Vec<f32> = next_cols
                .iter()
                .zip(&sx)
                .map(|(&c, &st)| Scaler::apply(st, t.values[(a + h) * w + c]))
                .collect();
            f.push_step(&mut fill, &now, &next, ht[0], &mut v);
            scaled.push(v);
            fills.push(fill);
            times.push(ht);
            next_stats.push(sx);
        }
        let rows: Vec<&[f32]> = scaled.iter().map(|v| v.as_slice()).collect();
        let n_past = now_cols.len() - k;
        let per = self.per();
        let mid = self.levels().map_or(0, |q| q.middle());
        let mut now = Vec::new();
        let mut next = Vec::new();
        let out = model::packed::rollout_with(
            self.engine.as_mut(),
            &self.ck.spec.model,
            &self.ck.params,
            &rows,
            horizon,
            GROUP,
            &mut |r, step, pred, x| {
                // the targets are fed back (a quantile model's middle level, its levels sorted
                // per target first); past covariates are unknown over the horizon (carried
                // forward, flagged as not observed); future covariates come from the table
                now.clear();
                for j in 0..k {
                    let mut levels = pred[j * per..(j + 1) * per].to_vec();
                    levels.sort_by(f32::total_cmp);
                    now.push(levels[mid]);
                }
                now.extend(std::iter::repeat_n(f32::NAN, n_past));
                next.clear();
                let row = t.offsets[r] + hist[r] + step;
                next.extend(
                    next_cols
                        .iter()
                        .zip(&next_stats[r])
                        .map(|(&c, &st)| Scaler::apply(st, t.values[row * w + c])),
                );
                f.push_step(&mut fills[r], &now, &next, times[r][step], x);
            },
        )?;
        // quantiles do not cross: each step's levels of a target are sorted
        Ok(out
            .iter()
            .zip(&t.ids)
            .map(|(fc, id)| {
                let mut v: Vec<f64> = fc
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| {
                        let name = &t.columns[self.targets[(j / per) % k]];
                        Scaler::invert(self.scaler.stat(id, name), v)
                    })
                    .collect();
                for levels in v.chunks_mut(per) {
                    levels.sort_by(f64::total_cmp);
                }
                v
            })
            .collect())
    }

    /// Outputs per target: one per quantile level (1 for a point forecast).
    fn per(&self) -> usize {
        self.ck.spec.outputs_per_target()
    }

    /// The quantile levels of a quantile model.
    fn levels(&self) -> Option<Quantiles> {
        Quantiles::new(&self.ck.spec.quantiles).ok()
    }

    /// The point forecast (`[horizon, targets]`) of a forecast (`[horizon, targets * per]`): the
    /// middle level of a quantile forecast.
    fn point(&self, fc: &[f64]) -> Vec<f64> {
        let (per, mid) = (self.per(), self.levels().map_or(0, |q| q.middle()));
        fc.chunks(per).map(|levels| levels[mid]).collect()
    }

    /// Values of the target columns of rows `range` of series `i`, in user units (`NaN` where
    /// missing).
    fn targets_of(&self, i: usize, range: std::ops::Range<usize>) -> Vec<f64> {
        let t = &self.table;
        let w = t.columns.len();
        let a = t.offsets[i];
        range
            .flat_map(|r| {
                self.targets
                    .iter()
                    .map(move |&c| f64::from(t.values[(a + r) * w + c]))
            })
            .collect()
    }

    fn rows(&self, i: usize) -> usize {
        self.table.offsets[i + 1] - self.table.offsets[i]
    }
}

/// At most a few items of `list`, for a message.
fn shorten(list: &[String]) -> String {
    const SHOWN: usize = 5;
    if list.len() <= SHOWN {
        list.join(", ")
    } else {
        format!("{}, ... ({} in all)", list[..SHOWN].join(", "), list.len())
    }
}

/// What `forecast` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForecastSummary {
    /// Series forecast.
    pub series: usize,
    /// The plot.
    pub svg: PathBuf,
}

/// Runs `forecast`.
pub(crate) fn forecast(a: &ForecastArgs) -> Result<ForecastSummary, CoordError> {
    if a.horizon == 0 {
        return Err(config_err(
            "horizon",
            "expected at least 1 step, got 0".into(),
        ));
    }
    let mut l = load(&a.from)?;
    let hist: Vec<usize> = (0..l.table.ids.len())
        .map(|i| l.history_rows(i))
        .collect::<Result<_, _>>()?;
    let fc = l.forecast(&hist, a.horizon)?;
    let t = &l.table;
    let k = l.targets.len();
    let per = l.per();
    let levels = l.levels();
    let id_name = l.spec.id_column.clone().unwrap_or_else(|| "id".into());
    let time_name = l.spec.time_column.clone().unwrap_or_else(|| "step".into());
    let mut csv = String::new();
    // one column per target, or per target and quantile level (`sales_q0.1`)
    let values: Vec<String> = l
        .spec
        .target_columns
        .iter()
        .flat_map(|c| match &levels {
            Some(q) => q.levels().iter().map(|v| format!("{c}_q{v}")).collect(),
            None => vec![c.clone()],
        })
        .collect();
    let header: Vec<String> = [id_name, time_name]
        .into_iter()
        .chain(values)
        .map(|s| crate::report::csv::field(&s))
        .collect();
    csv.push_str(&header.join(","));
    csv.push('\n');
    let mut plots = Vec::new();
    for (i, id) in t.ids.iter().enumerate() {
        let times = &t.times[t.offsets[i]..t.offsets[i] + hist[i]];
        let ft = l.horizon_times(i, hist[i], a.horizon);
        for (s, &time) in ft.iter().enumerate() {
            let mut row = vec![
                crate::report::csv::field(id),
                format_time(t.time_kind, time),
            ];
            row.extend(
                fc[i][s * k * per..(s + 1) * k * per]
                    .iter()
                    .map(|v| format!("{v}")),
            );
            csv.push_str(&row.join(","));
            csv.push('\n');
        }
        if plots.len() < PLOTTED {
            let n = hist[i];
            let from = n.saturating_sub(PLOT_HISTORY);
            let history = l.targets_of(i, from..n);
            // the first target: its middle level, and its outermost levels as the band
            let first = |level: usize| fc[i].iter().skip(level).step_by(k * per).copied();
            plots.push(PlotSeries {
                id: id.clone(),
                column: l.spec.target_columns[0].clone(),
                history_t: times[from..].to_vec(),
                history: history.iter().step_by(k).copied().collect(),
                forecast_t: ft,
                forecast: l.point(&fc[i]).iter().step_by(k).copied().collect(),
                actual: None,
                band: levels.map(|q| {
                    let lv = q.levels();
                    (
                        first(0).collect(),
                        first(per - 1).collect(),
                        format!("{}%-{}%", lv[0] * 100.0, lv[per - 1] * 100.0),
                    )
                }),
            });
        }
    }
    runtime::fs::write_atomic(&a.out, csv.as_bytes())
        .map_err(|e| CoordError::io(format!("writing {}", a.out.display()), e.source))?;
    let svg = a.out.with_extension("svg");
    let kind = t.time_kind;
    forecast_svg(
        &svg,
        &format!("forecast of {} steps", a.horizon),
        &plots,
        &|v| format_time(kind, v),
    )
    .map_err(|e| {
        CoordError::io(
            format!("writing {}", svg.display()),
            std::io::Error::other(e),
        )
    })?;
    Ok(ForecastSummary {
        series: t.ids.len(),
        svg,
    })
}

/// Runs `evaluate`: the scores of the model and the baselines.
pub(crate) fn evaluate(a: &EvaluateArgs) -> Result<Scores, CoordError> {
    if a.holdout == 0 {
        return Err(config_err(
            "holdout",
            "expected at least 1 step, got 0".into(),
        ));
    }
    let mut l = load(&a.from)?;
    let h = a.holdout;
    let mut hist = Vec::with_capacity(l.table.ids.len());
    for (i, id) in l.table.ids.iter().enumerate() {
        let n = l.rows(i);
        if n <= h {
            return Err(CoordError::Model(model::ModelError::Data {
                source_name: l.table.source.clone(),
                msg: format!(
                    "series {id:?} has {n} rows; --holdout {h} needs at least {} (history to forecast from, then the {h} held out)",
                    h + 1
                ),
            }));
        }
        hist.push(n - h);
    }
    let fc = l.forecast(&hist, h)?;
    let series: Vec<SeriesForecast> = (0..l.table.ids.len())
        .map(|i| SeriesForecast {
            id: l.table.ids[i].clone(),
            history: l.targets_of(i, 0..hist[i]),
            actual: l.targets_of(i, hist[i]..hist[i] + h),
            forecast: l.point(&fc[i]),
        })
        .collect();
    let mut scores = score(&series, &l.spec.target_columns, h, a.season)?;
    if let Some(q) = l.levels() {
        scores.quantiles = Some(crate::scores::score_quantiles(&series, &fc, q.levels()));
    }
    if let Some(p) = &a.json_out {
        let json = serde_json::to_string_pretty(&scores).expect("scores serialize");
        runtime::fs::write_atomic(p, json.as_bytes())
            .map_err(|e| CoordError::io(format!("writing {}", p.display()), e.source))?;
    }
    Ok(scores)
}
