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
use data::series::{Scale, Scaler, SeriesSpec, column_indices, scaled_rows};
use data::table::{Table, TimeKind, format_time};
use model::checkpoint::Checkpoint;
use model::device::{DeviceChoice, make_engine, resolve};
use model::engine::{Engine, EngineKind};

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
    inputs: Vec<usize>,
    targets: Vec<usize>,
    engine: Box<dyn Engine>,
}

fn config_err(field: &str, msg: String) -> CoordError {
    CoordError::Config {
        field: field.into(),
        msg,
    }
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
    let m = &ck.spec.model;
    if spec.input_columns.len() != m.input || spec.target_columns.len() != m.output {
        return Err(config_err(
            "input_columns",
            format!(
                "the model takes {} inputs and gives {} targets, got input columns {:?} and target columns {:?}",
                m.input, m.output, spec.input_columns, spec.target_columns
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
    let (table, spec) = data::series::read(data, &spec, None)?;
    let mut scaler = ck.scaler.clone().unwrap_or_else(|| Scaler {
        kind: Scale::None,
        columns: table.columns.clone(),
        global: vec![[0.0, 1.0]; table.columns.len()],
        series: Default::default(),
    });
    scaler.extend(&table);
    let inputs = column_indices(&table, &spec.input_columns)?;
    let targets = column_indices(&table, &spec.target_columns)?;
    let compute = resolve(a.device)?;
    let engine = make_engine(a.engine, &compute, m, 1)?;
    Ok(Loaded {
        ck,
        spec,
        table,
        scaler,
        inputs,
        targets,
        engine,
    })
}

impl Loaded {
    /// Forecasts `horizon` steps after the first `hist[i]` rows of every series, in user units
    /// (`[horizon, targets]` per series).
    fn forecast(&mut self, hist: &[usize], horizon: usize) -> Result<Vec<Vec<f64>>, CoordError> {
        let t = &self.table;
        let mut scaled = Vec::with_capacity(t.ids.len());
        for (i, id) in t.ids.iter().enumerate() {
            let a = t.offsets[i];
            let mut v = Vec::new();
            scaled_rows(t, &self.scaler, id, &self.inputs, a..a + hist[i], &mut v);
            scaled.push(v);
        }
        let rows: Vec<&[f32]> = scaled.iter().map(|v| v.as_slice()).collect();
        let out = model::packed::rollout(
            self.engine.as_mut(),
            &self.ck.spec.model,
            &self.ck.params,
            &rows,
            horizon,
            GROUP,
        )?;
        let k = self.targets.len();
        Ok(out
            .iter()
            .zip(&t.ids)
            .map(|(f, id)| {
                f.iter()
                    .enumerate()
                    .map(|(j, &v)| {
                        let name = &t.columns[self.targets[j % k]];
                        Scaler::invert(self.scaler.stat(id, name), v)
                    })
                    .collect()
            })
            .collect())
    }

    /// Values of the target columns of rows `range` of series `i`, in user units.
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

/// The time `k` steps after the last of `times`, continuing the series' spacing (the last
/// interval; one unit, one day or one hour when the series has a single row).
fn next_time(kind: TimeKind, times: &[f64], k: usize) -> f64 {
    let last = times[times.len() - 1];
    let step = if times.len() >= 2 {
        last - times[times.len() - 2]
    } else {
        match kind {
            TimeKind::Date => 86_400.0,
            TimeKind::DateTime => 3_600.0,
            TimeKind::Index | TimeKind::Number => 1.0,
        }
    };
    last + step * k as f64
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
    let hist: Vec<usize> = (0..l.table.ids.len()).map(|i| l.rows(i)).collect();
    let fc = l.forecast(&hist, a.horizon)?;
    let t = &l.table;
    let k = l.targets.len();
    let id_name = l.spec.id_column.clone().unwrap_or_else(|| "id".into());
    let time_name = l.spec.time_column.clone().unwrap_or_else(|| "step".into());
    let mut csv = String::new();
    let header: Vec<String> = [id_name, time_name]
        .into_iter()
        .chain(l.spec.target_columns.iter().cloned())
        .map(|s| crate::report::csv::field(&s))
        .collect();
    csv.push_str(&header.join(","));
    csv.push('\n');
    let mut plots = Vec::new();
    for (i, id) in t.ids.iter().enumerate() {
        let times = &t.times[t.offsets[i]..t.offsets[i + 1]];
        let mut ft = Vec::with_capacity(a.horizon);
        for s in 0..a.horizon {
            let time = next_time(t.time_kind, times, s + 1);
            ft.push(time);
            let mut row = vec![
                crate::report::csv::field(id),
                format_time(t.time_kind, time),
            ];
            row.extend(fc[i][s * k..(s + 1) * k].iter().map(|v| format!("{v}")));
            csv.push_str(&row.join(","));
            csv.push('\n');
        }
        if plots.len() < PLOTTED {
            let n = l.rows(i);
            let from = n.saturating_sub(PLOT_HISTORY);
            let history = l.targets_of(i, from..n);
            plots.push(PlotSeries {
                id: id.clone(),
                column: l.spec.target_columns[0].clone(),
                history_t: times[from..].to_vec(),
                history: history.iter().step_by(k).copied().collect(),
                forecast_t: ft,
                forecast: fc[i].iter().step_by(k).copied().collect(),
                actual: None,
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
            forecast: fc[i].clone(),
        })
        .collect();
    let scores = score(&series, &l.spec.target_columns, h, a.season)?;
    if let Some(p) = &a.json_out {
        let json = serde_json::to_string_pretty(&scores).expect("scores serialize");
        runtime::fs::write_atomic(p, json.as_bytes())
            .map_err(|e| CoordError::io(format!("writing {}", p.display()), e.source))?;
    }
    Ok(scores)
}
