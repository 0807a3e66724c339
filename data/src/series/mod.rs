//! Many real series of any length: built from a long-format [`Table`], scaled, split in time, and
//! scheduled over the stateful slots ([`schedule`]).
//!
//! Series `i` with `r` rows gives `r - 1` steps: the input at step `s` is the input columns of
//! row `s`, the target the target columns of row `s + 1`. With `--val-steps K`, the last `K` steps
//! of every series are held out for validation, which continues each series from its state at the
//! end of its training part.
//!
//! What the model sees at each step (inputs, covariates, calendar features, observed flags) and
//! how missing cells are filled is [`features`]. A missing target is masked: it adds nothing to
//! the loss or the gradients ([`SeriesData::observed`]).

pub mod features;
pub mod schedule;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::table::Table;
pub use features::{Calendar, Features, Fill, InputLayout};

/// What a missing value cell (an empty CSV cell, NaN, a Parquet null) of a table does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MissingPolicy {
    /// A missing target is masked out of the loss and the metrics; a missing input is filled
    /// (see [`features`]).
    #[default]
    Mask,
    /// An error naming the file, the row and the column.
    Error,
}

impl std::fmt::Display for MissingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mask => "mask",
            Self::Error => "error",
        })
    }
}

/// How values are scaled before the model sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Each series by its own mean and standard deviation per column.
    #[default]
    Series,
    /// Every series by the mean and standard deviation of all series per column.
    Global,
    /// As given.
    None,
}

impl std::fmt::Display for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Series => "series",
            Self::Global => "global",
            Self::None => "none",
        })
    }
}

/// How a table becomes training series (saved in the checkpoint, so `forecast` and `evaluate`
/// read new data the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSpec {
    /// Column naming the series (`None`: the whole file is one series).
    pub id_column: Option<String>,
    /// Column ordering the rows of a series (`None`: file order).
    pub time_column: Option<String>,
    /// Input columns, in model input order.
    pub input_columns: Vec<String>,
    /// Target columns (the target at step `t` is their value at step `t + 1`).
    pub target_columns: Vec<String>,
    /// Scaling.
    pub scale: Scale,
    /// Steps held out at the end of every series for validation.
    pub val_steps: usize,
    /// Take series longest first, shuffled (seeded, per epoch) among series of as many chunks;
    /// otherwise in file order.
    pub shuffle: bool,
    /// Steps per chunk (`--timesteps`).
    pub timesteps: usize,
    /// What a missing value cell does.
    #[serde(default)]
    pub missing: MissingPolicy,
    /// Whether the model has one observed-flag input per input column and covariate: set when a
    /// model is trained with missing values masked on a table with a missing input or covariate
    /// cell ([`SeriesSpec::fit_observed_flags`]).
    #[serde(default)]
    pub observed_flags: bool,
    /// Columns known up to the step's time: inputs, neither predicted nor fed back.
    #[serde(default)]
    pub past_covariates: Vec<String>,
    /// Columns known ahead: the model sees their value at the time it predicts, and a forecast
    /// needs them for the horizon's rows.
    #[serde(default)]
    pub future_covariates: Vec<String>,
    /// Calendar features of the time column.
    #[serde(default)]
    pub calendar: Vec<Calendar>,
}

impl Default for SeriesSpec {
    fn default() -> Self {
        Self {
            id_column: None,
            time_column: None,
            input_columns: Vec::new(),
            target_columns: Vec::new(),
            scale: Scale::default(),
            val_steps: 0,
            shuffle: true,
            timesteps: 96,
            missing: MissingPolicy::default(),
            observed_flags: false,
            past_covariates: Vec::new(),
            future_covariates: Vec::new(),
            calendar: Vec::new(),
        }
    }
}

impl SeriesSpec {
    /// The value columns to read: inputs, targets not among them, then the covariates.
    pub fn columns(&self) -> Vec<String> {
        let mut cols = self.input_columns.clone();
        for c in self
            .target_columns
            .iter()
            .chain(&self.past_covariates)
            .chain(&self.future_covariates)
        {
            if !cols.contains(c) {
                cols.push(c.clone());
            }
        }
        cols
    }

    /// Checks that no column has two roles among inputs, past and future covariates, and that
    /// no target is a covariate; the error is the field (a flag name with `_`) and a message
    /// naming the flags and the column.
    pub fn check_roles(&self) -> Result<(), (&'static str, String)> {
        let roles: [(&'static str, &[String]); 4] = [
            ("input_columns", &self.input_columns),
            ("target_columns", &self.target_columns),
            ("past_covariates", &self.past_covariates),
            ("future_covariates", &self.future_covariates),
        ];
        for (i, (a, ca)) in roles.iter().enumerate() {
            for (k, c) in ca.iter().enumerate() {
                if ca[..k].contains(c) {
                    return Err((
                        *a,
                        format!("--{}: column {c:?} is listed twice", a.replace('_', "-")),
                    ));
                }
            }
            for (b, cb) in &roles[i + 1..] {
                // a target may be an input (it is fed back), nothing else may share a column
                if *a == "input_columns" && *b == "target_columns" {
                    continue;
                }
                if let Some(c) = ca.iter().find(|c| cb.contains(c)) {
                    return Err((
                        *b,
                        format!(
                            "column {c:?} is given both in --{} and in --{}; a column has one role",
                            a.replace('_', "-"),
                            b.replace('_', "-")
                        ),
                    ));
                }
            }
        }
        for (k, c) in self.calendar.iter().enumerate() {
            if self.calendar[..k].contains(c) {
                return Err(("calendar", format!("--calendar: {c} is listed twice")));
            }
        }
        Ok(())
    }

    /// Decides [`SeriesSpec::observed_flags`] for a model trained on `table`: flags when missing
    /// values are masked and an input or covariate cell of the table is missing.
    pub fn fit_observed_flags(&mut self, table: &Table) -> Result<(), DataError> {
        let mut cols = column_indices(table, &self.input_columns)?;
        cols.extend(column_indices(table, &self.past_covariates)?);
        cols.extend(column_indices(table, &self.future_covariates)?);
        let w = table.columns.len();
        self.observed_flags = self.missing == MissingPolicy::Mask
            && table
                .values
                .chunks_exact(w)
                .any(|row| cols.iter().any(|&c| row[c].is_nan()));
        Ok(())
    }

    /// Whether targets are the inputs (what an autoregressive forecast needs).
    pub fn targets_are_inputs(&self) -> bool {
        self.input_columns == self.target_columns
    }
}

/// Mean and standard deviation of one column.
pub type Stat = [f64; 2];

/// Scaling statistics per column: global, and per series id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// The kind.
    pub kind: Scale,
    /// Column names the statistics are in order of.
    pub columns: Vec<String>,
    /// Statistics over all series.
    pub global: Vec<Stat>,
    /// Statistics per series id.
    pub series: BTreeMap<String, Vec<Stat>>,
}

/// A standard deviation below this scales by 1 (a constant column).
const MIN_STD: f64 = 1e-8;

/// Mean and standard deviation of the observed (non-NaN) values.
fn stats(rows: impl Iterator<Item = f64> + Clone) -> Stat {
    let rows = rows.filter(|v| !v.is_nan());
    let (mut n, mut sum) = (0usize, 0.0f64);
    for v in rows.clone() {
        n += 1;
        sum += v;
    }
    if n == 0 {
        return [0.0, 1.0];
    }
    let mean = sum / n as f64;
    let var = rows.map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    let sd = var.sqrt();
    [mean, if sd < MIN_STD { 1.0 } else { sd }]
}

impl Scaler {
    /// Fits statistics on the first `fit_rows[i]` rows of every series of `table`; missing
    /// (`NaN`) values are left out.
    pub fn fit(kind: Scale, table: &Table, fit_rows: &[usize]) -> Self {
        let k = table.columns.len();
        let col = |c: usize, rows: &[(usize, usize)]| {
            let vals = rows
                .iter()
                .flat_map(move |&(a, b)| (a..b).map(move |r| f64::from(table.values[r * k + c])));
            stats(vals)
        };
        let ranges: Vec<(usize, usize)> = (0..table.ids.len())
            .map(|i| (table.offsets[i], table.offsets[i] + fit_rows[i]))
            .collect();
        let global = (0..k).map(|c| col(c, &ranges)).collect();
        let series = if kind == Scale::Series {
            table
                .ids
                .iter()
                .zip(&ranges)
                .map(|(id, r)| (id.clone(), (0..k).map(|c| col(c, &[*r])).collect()))
                .collect()
        } else {
            BTreeMap::new()
        };
        Self {
            kind,
            columns: table.columns.clone(),
            global,
            series,
        }
    }

    /// Adds statistics for series of `table` this scaler has not seen, from all their observed
    /// values.
    pub fn extend(&mut self, table: &Table) {
        if self.kind != Scale::Series {
            return;
        }
        let k = table.columns.len();
        for (i, id) in table.ids.iter().enumerate() {
            if self.series.contains_key(id) {
                continue;
            }
            let (a, b) = (table.offsets[i], table.offsets[i + 1]);
            let st = self
                .columns
                .iter()
                .map(|name| match table.columns.iter().position(|c| c == name) {
                    Some(c) => stats((a..b).map(|r| f64::from(table.values[r * k + c]))),
                    None => [0.0, 1.0],
                })
                .collect();
            self.series.insert(id.clone(), st);
        }
    }

    /// `(mean, std)` of column `name` for series `id`.
    pub fn stat(&self, id: &str, name: &str) -> Stat {
        let Some(c) = self.columns.iter().position(|n| n == name) else {
            return [0.0, 1.0];
        };
        match self.kind {
            Scale::None => [0.0, 1.0],
            Scale::Global => self.global[c],
            Scale::Series => self.series.get(id).map_or(self.global[c], |s| s[c]),
        }
    }

    /// Scaled value (`NaN` stays `NaN`).
    pub fn apply(s: Stat, v: f32) -> f32 {
        ((f64::from(v) - s[0]) / s[1]) as f32
    }

    /// Value in the user's units.
    pub fn invert(s: Stat, v: f32) -> f64 {
        f64::from(v) * s[1] + s[0]
    }
}

/// Training series: scaled inputs and next-step targets, laid out series after series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    /// Where it came from, for messages.
    pub name: String,
    /// Series ids.
    pub ids: Vec<String>,
    /// Input features (see [`features`] for their layout).
    pub fi: usize,
    /// Target features.
    pub fo: usize,
    /// Series `i` has steps `starts[i]..starts[i + 1]`.
    pub starts: Vec<usize>,
    /// Scaled inputs `[steps, fi]`, missing cells filled.
    pub x: Vec<f32>,
    /// Scaled targets `[steps, fo]`; 0 where missing.
    pub y: Vec<f32>,
    /// Whether each target of `y` was observed (`[steps, fo]`); `None` when every one was.
    pub observed: Option<Vec<bool>>,
    /// Observed targets before each step, all series together (`[steps + 1]`), for the divisor
    /// of a step's loss; empty when every target was observed.
    observed_before: Vec<u64>,
    /// Training steps of each series (the rest is validation).
    pub train_steps: Vec<usize>,
    /// Scaling statistics (fitted on the training part).
    pub scaler: Scaler,
    /// The settings it was built with.
    pub spec: SeriesSpec,
}

/// Reads the table at `path` the way `spec` says; empty column lists in `spec` are filled in (the
/// inputs: every value column that is not a covariate; the targets: the inputs). Returns the
/// table and the full spec. With [`MissingPolicy::Mask`] missing value cells are `NaN`.
pub fn read(
    path: &std::path::Path,
    spec: &SeriesSpec,
    max_bytes: Option<u64>,
) -> Result<(Table, SeriesSpec), DataError> {
    let mut spec = spec.clone();
    let columns = if spec.input_columns.is_empty() {
        Vec::new()
    } else {
        spec.columns()
    };
    let table = crate::table::read_table(
        path,
        &crate::table::TableSpec {
            id_column: spec.id_column.clone(),
            time_column: spec.time_column.clone(),
            columns,
            missing: match spec.missing {
                MissingPolicy::Mask => crate::table::Missing::Keep,
                MissingPolicy::Error => crate::table::Missing::Error,
            },
        },
        max_bytes,
    )?;
    if spec.input_columns.is_empty() {
        spec.input_columns = table
            .columns
            .iter()
            .filter(|c| !spec.past_covariates.contains(c) && !spec.future_covariates.contains(c))
            .cloned()
            .collect();
    }
    if spec.target_columns.is_empty() {
        spec.target_columns = spec.input_columns.clone();
    }
    Ok((table, spec))
}

/// The time `k` steps after the last of `times` (seconds since the epoch for dates), continuing
/// the series' spacing: whole calendar months when the last two dates or date-times fall on the
/// same day of the month and time of day (monthly, quarterly and yearly series keep their day),
/// else the last interval; one unit, one day or one hour when the series has a single row.
pub fn next_time(kind: crate::table::TimeKind, times: &[f64], k: usize) -> f64 {
    use crate::table::{TimeKind, civil_from_days, days_from_civil};
    const DAY: f64 = 86_400.0;
    let last = times[times.len() - 1];
    if times.len() < 2 {
        let step = match kind {
            TimeKind::Date => DAY,
            TimeKind::DateTime => 3_600.0,
            TimeKind::Index | TimeKind::Number => 1.0,
        };
        return last + step * k as f64;
    }
    let prev = times[times.len() - 2];
    if matches!(kind, TimeKind::Date | TimeKind::DateTime) {
        let split = |t: f64| {
            let days = (t / DAY).floor();
            (civil_from_days(days as i64), t - days * DAY)
        };
        let (((y0, m0, d0), s0), ((y1, m1, d1), s1)) = (split(prev), split(last));
        let months = (y1 - y0) * 12 + i64::from(m1) - i64::from(m0);
        if d0 == d1 && s0 == s1 && (1..=12).contains(&months) && d1 <= 28 {
            let m = i64::from(m1) - 1 + months * k as i64;
            let (y, m) = (y1 + m.div_euclid(12), m.rem_euclid(12) as u32 + 1);
            return days_from_civil(y, m, d1) as f64 * DAY + s1;
        }
    }
    last + (last - prev) * k as f64
}

/// Column indices of `names` in `table`, or an error naming the missing one.
pub fn column_indices(table: &Table, names: &[String]) -> Result<Vec<usize>, DataError> {
    names
        .iter()
        .map(|n| {
            table
                .columns
                .iter()
                .position(|c| c == n)
                .ok_or_else(|| DataError::Invalid {
                    source_name: table.source.clone(),
                    msg: format!(
                        "expected a column `{n}`, the file has {}",
                        table.columns.join(", ")
                    ),
                })
        })
        .collect()
}

/// Scaled values of `cols` for rows `a..b` of series `id`.
pub fn scaled_rows(
    table: &Table,
    scaler: &Scaler,
    id: &str,
    cols: &[usize],
    rows: std::ops::Range<usize>,
    out: &mut Vec<f32>,
) {
    let k = table.columns.len();
    let st: Vec<Stat> = cols
        .iter()
        .map(|&c| scaler.stat(id, &table.columns[c]))
        .collect();
    for r in rows {
        for (j, &c) in cols.iter().enumerate() {
            out.push(Scaler::apply(st[j], table.values[r * k + c]));
        }
    }
}

impl SeriesData {
    /// Builds training series from `table` per `spec`; statistics are fitted on the training
    /// part unless `scaler` is given. A series too short to learn from, or without an observed
    /// value of a target column in its training part, is an error that names it.
    pub fn new(
        table: &Table,
        spec: &SeriesSpec,
        scaler: Option<Scaler>,
    ) -> Result<Self, DataError> {
        let invalid = |msg: String| DataError::Invalid {
            source_name: table.source.clone(),
            msg,
        };
        spec.check_roles().map_err(|(_, msg)| invalid(msg))?;
        let features = Features::new(table, spec)?;
        let tcols = column_indices(table, &spec.target_columns)?;
        if spec.input_columns.is_empty() || tcols.is_empty() {
            return Err(invalid(
                "expected at least one input and one target column, got none".into(),
            ));
        }
        let k = spec.val_steps;
        let w = table.columns.len();
        let mut train_steps = Vec::with_capacity(table.ids.len());
        for (i, id) in table.ids.iter().enumerate() {
            let (a, b) = (table.offsets[i], table.offsets[i + 1]);
            let rows = b - a;
            if rows < k + 2 {
                return Err(invalid(format!(
                    "series {id:?} has {rows} rows; at least {} are needed to learn from it (one input and its next-step target{})",
                    k + 2,
                    if k > 0 {
                        format!(", plus the {k} steps --val-steps holds out")
                    } else {
                        String::new()
                    }
                )));
            }
            let train = rows - 1 - k;
            for &c in &tcols {
                // the targets of the training steps are rows 1..=train
                let seen = (a + 1..a + 1 + train)
                    .filter(|r| !table.values[r * w + c].is_nan())
                    .count();
                if seen == 0 {
                    return Err(invalid(format!(
                        "series {id:?}: target column {:?} has no observed value among the {train} targets of its training part; at least one is needed to learn from it",
                        table.columns[c]
                    )));
                }
            }
            train_steps.push(train);
        }
        let scaler = match scaler {
            Some(s) => s,
            None => {
                let fit: Vec<usize> = train_steps.iter().map(|s| s + 1).collect();
                Scaler::fit(spec.scale, table, &fit)
            }
        };
        let (mut x, mut y, mut starts) = (Vec::new(), Vec::new(), vec![0]);
        let mut observed = Vec::new();
        for (i, id) in table.ids.iter().enumerate() {
            let (a, b) = (table.offsets[i], table.offsets[i + 1]);
            let mut fill = features.fill();
            features.push_table_steps(table, &scaler, i, 0..b - a - 1, &mut fill, &mut x);
            let st: Vec<Stat> = tcols
                .iter()
                .map(|&c| scaler.stat(id, &table.columns[c]))
                .collect();
            for r in a + 1..b {
                for (&c, &s) in tcols.iter().zip(&st) {
                    let v = table.values[r * w + c];
                    observed.push(!v.is_nan());
                    y.push(if v.is_nan() { 0.0 } else { Scaler::apply(s, v) });
                }
            }
            starts.push(starts[i] + (b - a - 1));
        }
        let fo = tcols.len();
        let (observed, observed_before) = if observed.iter().all(|&o| o) {
            (None, Vec::new())
        } else {
            let mut before = Vec::with_capacity(observed.len() / fo + 1);
            before.push(0u64);
            for step in observed.chunks_exact(fo) {
                let seen = step.iter().filter(|&&o| o).count() as u64;
                before.push(before[before.len() - 1] + seen);
            }
            (Some(observed), before)
        };
        Ok(Self {
            name: table.source.clone(),
            ids: table.ids.clone(),
            fi: features.width(),
            fo,
            starts,
            x,
            y,
            observed,
            observed_before,
            train_steps,
            scaler,
            spec: spec.clone(),
        })
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no series.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Chunks of `t` steps in each series' training part.
    pub fn chunks(&self, t: usize) -> Vec<u64> {
        self.train_steps
            .iter()
            .map(|s| s.div_ceil(t) as u64)
            .collect()
    }

    /// Inputs `[steps, fi]` of series `i`, all steps.
    pub fn x_of(&self, i: usize) -> &[f32] {
        &self.x[self.starts[i] * self.fi..self.starts[i + 1] * self.fi]
    }

    /// Targets `[steps, fo]` of series `i`, all steps.
    pub fn y_of(&self, i: usize) -> &[f32] {
        &self.y[self.starts[i] * self.fo..self.starts[i + 1] * self.fo]
    }

    /// Whether each target of series `i` was observed (`[steps, fo]`), `None` when every target
    /// of every series was.
    pub fn observed_of(&self, i: usize) -> Option<&[bool]> {
        self.observed
            .as_ref()
            .map(|o| &o[self.starts[i] * self.fo..self.starts[i + 1] * self.fo])
    }

    /// Observed targets of steps `steps` of series `i`.
    pub fn observed_in(&self, i: usize, steps: std::ops::Range<usize>) -> usize {
        if self.observed_before.is_empty() {
            return steps.len() * self.fo;
        }
        let (a, b) = (self.starts[i] + steps.start, self.starts[i] + steps.end);
        (self.observed_before[b] - self.observed_before[a]) as usize
    }

    /// A digest of the series, their split and scaling: resuming on other data is refused with it.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"series");
        for id in &self.ids {
            h.update((id.len() as u64).to_le_bytes());
            h.update(id.as_bytes());
        }
        for v in self.starts.iter().chain(&self.train_steps) {
            h.update((*v as u64).to_le_bytes());
        }
        for v in self.x.iter().chain(&self.y) {
            h.update(v.to_le_bytes());
        }
        if let Some(o) = &self.observed {
            h.update(b"observed");
            h.update(o.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>());
        }
        let digest = h.finalize();
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}
