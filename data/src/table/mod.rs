//! Long-format time-series tables: one row per (series, time), read from CSV (optionally
//! gzipped), Parquet or a ragged `.npz`, validated, grouped by series and time-checked.
//!
//! [`read_table`] picks the format by extension:
//! - `.csv`, `.csv.gz`: a header line, then one row per line; comma-separated, RFC 4180
//!   quoting, whitespace around fields ignored, blank lines skipped.
//! - `.parquet` (or `.pq`): top-level flat columns, read with the `parquet` crate (every
//!   encoding, data pages v1 and v2, nulls; uncompressed, snappy, gzip, zstd, lz4 or lz4_raw).
//!   A nested column (list, map, struct) named for a role, or another codec (brotli, lzo), is an
//!   error naming the column.
//! - `.npz`: the ragged form, arrays `x` `[rows, F]`, `lengths` `[S]` and optionally `y`
//!   `[rows, F_out]` (see `npz`).
//!
//! # Invariants of a [`Table`]
//! Rows are grouped by series in order of each series' first appearance in the file; within a
//! series rows keep their file order, and that order must have strictly increasing times (a
//! repeated time is a duplicate, a smaller one is unsorted: both are errors). Every value is a
//! finite `f32`, or `f32::NAN` for a missing value when [`TableSpec::missing`] is
//! [`Missing::Keep`] (with [`Missing::Error`] a missing value is an error).
//!
//! # Ids and times
//! Ids are text: a CSV cell as written (so `01` and `1` are two series), a Parquet string, or
//! the decimal form of a Parquet integer. A CSV (or Parquet string) time column is a number
//! column if its first cell is a number, else a date column (`YYYY-MM-DD`), which becomes a
//! date-time column at its first cell with a time of day; a date-time without offset is taken
//! as UTC, and so are Parquet timestamps not marked as UTC-adjusted. Parquet date, timestamp and
//! int96 columns need no parsing.
//!
//! # Which columns are read
//! [`TableSpec::columns`] lists the value columns in the order wanted. When it is empty, the
//! value columns are all numeric columns except the id and time columns, in file order:
//! - CSV: each column whose header name is not empty and whose cell in the first data row is
//!   numeric, empty, or spells NaN/infinity (so that such a cell is reported, not silently
//!   taken for a text column); a pandas index written without a name has an empty header name
//!   and is skipped.
//! - Parquet: each top-level int32/int64/float/double column without a date, time, timestamp or
//!   decimal annotation, except pandas' `__index_level_N__` columns.
//! - npz: `x0..x{F-1}`, then `y0..y{F_out-1}`.
//!
//! # Errors
//! Every malformed input is a [`DataError::Invalid`] naming the file, then the row (CSV:
//! `data row N (line L)`, 1-based, the header being line 1; Parquet and npz: `data row N`), the
//! column, and what was expected vs found.
//!
//! # Layout
//! - `time`: date and date-time parsing, [`format_time`].
//! - `csv`, `parquet` (the `parquet` crate's footer and column readers), `npz`: the readers;
//!   each produces the rows in file order, and this module groups and checks them.

use std::collections::HashMap;
use std::path::Path;

use crate::error::DataError;

mod csv;
mod npz;
mod parquet;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_parquet;
mod time;

pub use time::format_time;
pub(crate) use time::{civil_from_days, days_from_civil};

/// How the table's columns are chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSpec {
    /// The column naming each row's series; `None`: the whole file is one series.
    pub id_column: Option<String>,
    /// The column holding each row's time; `None`: [`TimeKind::Index`].
    pub time_column: Option<String>,
    /// The value columns to read, in this order; empty: every numeric column except the id and
    /// time columns, in file order (see the module docs for what counts as numeric).
    pub columns: Vec<String>,
    /// What a missing value cell (an empty CSV cell, NaN, a Parquet null) becomes.
    pub missing: Missing,
}

/// What a missing value in a value column becomes. Ids and times are never missing: an empty
/// id or time is an error whatever the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Missing {
    /// An error naming the file, the row and the column (`--missing error`).
    #[default]
    Error,
    /// `f32::NAN` in [`Table::values`], for the series layer to mask out of the loss and fill
    /// (`--missing mask`). An infinity is still an error.
    Keep,
}

/// What the time column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    /// No time column: the row's position within its series (0, 1, ...).
    Index,
    /// A number, integer or float, kept as is.
    Number,
    /// A date `YYYY-MM-DD`, as seconds since the Unix epoch (midnight UTC).
    Date,
    /// An ISO 8601 date-time, as seconds since the Unix epoch (UTC; an offset is applied,
    /// a time without offset is taken as UTC).
    DateTime,
}

/// A validated long-format table, rows grouped by series.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The file path, for messages.
    pub source: String,
    /// One id per series, in order of first appearance in the file.
    pub ids: Vec<String>,
    /// Series `i` has rows `offsets[i]..offsets[i + 1]`; `offsets.len() == ids.len() + 1`.
    pub offsets: Vec<usize>,
    /// What [`Table::times`] holds.
    pub time_kind: TimeKind,
    /// Per row: the number as is, dates and date-times as seconds since the Unix epoch, the
    /// position within the series for [`TimeKind::Index`].
    pub times: Vec<f64>,
    /// Names of the value columns, in [`Table::values`] order.
    pub columns: Vec<String>,
    /// `[rows, columns.len()]` row-major; rows grouped by series (in [`Table::ids`] order),
    /// time-sorted within a series.
    pub values: Vec<f32>,
}

impl Table {
    /// Number of rows, all series together.
    pub fn rows(&self) -> usize {
        self.times.len()
    }

    /// Number of series.
    pub fn num_series(&self) -> usize {
        self.ids.len()
    }

    /// The times and the row-major values (`[len, columns.len()]`) of series `i`.
    ///
    /// # Panics
    /// If `i >= self.num_series()`.
    pub fn series(&self, i: usize) -> (&[f64], &[f32]) {
        let (a, b) = (self.offsets[i], self.offsets[i + 1]);
        let f = self.columns.len();
        (&self.times[a..b], &self.values[a * f..b * f])
    }

    /// Index of value column `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

/// Reads the table at `path`, the format chosen by extension (`.csv`, `.csv.gz`, `.parquet` or
/// `.pq`, `.npz`, case-insensitive). `max_bytes` bounds the decompressed data read: the CSV text after
/// gunzip, the uncompressed column chunks of a Parquet file (as its footer states them, plus
/// the decoded table), the arrays of an `.npz`; past it the read fails before (Parquet, npz) or
/// as soon as (CSV) the limit is crossed.
pub fn read_table(
    path: &Path,
    spec: &TableSpec,
    max_bytes: Option<u64>,
) -> Result<Table, DataError> {
    let source = path.display().to_string();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    check_spec(&source, spec)?;
    let raw = if name.ends_with(".csv") {
        csv::read(path, &source, spec, max_bytes, false)?
    } else if name.ends_with(".csv.gz") {
        csv::read(path, &source, spec, max_bytes, true)?
    } else if name.ends_with(".parquet") || name.ends_with(".pq") {
        parquet::read(path, &source, spec, max_bytes)?
    } else if name.ends_with(".npz") {
        npz::read(path, &source, spec, max_bytes)?
    } else {
        return Err(data_err(
            &source,
            "unknown table format: expected a file name ending in .csv, .csv.gz, .parquet or .npz",
        ));
    };
    assemble(source, raw)
}

/// A data error about `source`.
pub(super) fn data_err(source: &str, msg: impl Into<String>) -> DataError {
    DataError::Invalid {
        source_name: source.to_owned(),
        msg: msg.into(),
    }
}

/// The spec must not name a value column twice.
fn check_spec(source: &str, spec: &TableSpec) -> Result<(), DataError> {
    for (i, c) in spec.columns.iter().enumerate() {
        if spec.columns[..i].contains(c) {
            return Err(data_err(
                source,
                format!(
                    "value column {c:?} is requested twice (requested columns: {})",
                    list(&spec.columns)
                ),
            ));
        }
    }
    Ok(())
}

/// Names quoted and joined for a message: `"a", "b"`.
pub(super) fn list<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names
        .iter()
        .map(|n| format!("{:?}", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error for a column that is not in the file.
pub(super) fn missing_column<S: AsRef<str>>(
    source: &str,
    role: &str,
    name: &str,
    available: &[S],
) -> DataError {
    data_err(
        source,
        format!(
            "{role} column {name:?} not found; available columns: {}",
            list(available)
        ),
    )
}

/// The series name of a file without an id column: its stem (without `.csv.gz` etc.), or `"0"`.
pub(super) fn file_series_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let stem = [".csv.gz", ".csv", ".parquet", ".pq", ".npz"]
        .iter()
        .find(|ext| lower.ends_with(*ext))
        .map_or(name.as_str(), |ext| &name[..name.len() - ext.len()]);
    if stem.is_empty() {
        "0".into()
    } else {
        stem.to_owned()
    }
}

/// How rows are named in messages.
#[derive(Debug)]
pub(super) enum RowNames {
    /// `data row N`, 1-based.
    Data,
    /// `data row N (line L)`, with each row's line.
    Lines(Vec<u64>),
}

impl RowNames {
    /// The name of row `r` (0-based, file order).
    pub(super) fn name(&self, r: usize) -> String {
        match self {
            RowNames::Data => format!("data row {}", r + 1),
            RowNames::Lines(lines) => format!("data row {} (line {})", r + 1, lines[r]),
        }
    }
}

/// Interns series ids in order of first appearance.
#[derive(Debug, Default)]
pub(super) struct Ids {
    pub(super) names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Ids {
    /// The series index of `id`, adding it if new.
    pub(super) fn intern(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(id.to_owned());
        self.index.insert(id.to_owned(), i);
        i
    }
}

/// A table as a reader produced it: rows in file order.
#[derive(Debug)]
pub(super) struct Raw {
    /// Distinct ids, in order of first appearance.
    pub(super) ids: Vec<String>,
    /// Per row: its index into `ids`.
    pub(super) series: Vec<u32>,
    pub(super) time_kind: TimeKind,
    /// The time column's name, for messages (empty for [`TimeKind::Index`]).
    pub(super) time_column: String,
    /// Per row (empty for [`TimeKind::Index`]).
    pub(super) times: Vec<f64>,
    pub(super) columns: Vec<String>,
    /// `[rows, columns.len()]`, file order.
    pub(super) values: Vec<f32>,
    pub(super) row_names: RowNames,
}

/// Groups the rows by series and checks that times strictly increase within each series.
fn assemble(source: String, raw: Raw) -> Result<Table, DataError> {
    let n = raw.series.len();
    if n == 0 {
        return Err(data_err(&source, "no data rows: expected at least one row"));
    }
    let s = raw.ids.len();
    let mut offsets = vec![0usize; s + 1];
    for &k in &raw.series {
        offsets[k as usize + 1] += 1;
    }
    for i in 0..s {
        offsets[i + 1] += offsets[i];
    }
    let mut next = offsets.clone();
    let mut order = vec![0usize; n];
    for (r, &k) in raw.series.iter().enumerate() {
        order[next[k as usize]] = r;
        next[k as usize] += 1;
    }
    let f = raw.columns.len();
    let mut times = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n * f);
    for i in 0..s {
        let rows = &order[offsets[i]..offsets[i + 1]];
        for (pos, &r) in rows.iter().enumerate() {
            if raw.time_kind == TimeKind::Index {
                times.push(pos as f64);
            } else {
                let t = raw.times[r];
                if pos > 0 {
                    let p = rows[pos - 1];
                    let tp = raw.times[p];
                    if t <= tp {
                        let fmt = |v| format_time(raw.time_kind, v);
                        let msg = if t == tp {
                            format!(
                                "column {:?}, series {:?}: duplicate time {} at {} and {}; times must strictly increase within a series",
                                raw.time_column,
                                raw.ids[i],
                                fmt(t),
                                raw.row_names.name(p),
                                raw.row_names.name(r),
                            )
                        } else {
                            format!(
                                "column {:?}, series {:?}: unsorted times: {} at {} comes after {} at {}; times must strictly increase within a series",
                                raw.time_column,
                                raw.ids[i],
                                fmt(t),
                                raw.row_names.name(r),
                                fmt(tp),
                                raw.row_names.name(p),
                            )
                        };
                        return Err(data_err(&source, msg));
                    }
                }
                times.push(t);
            }
            values.extend_from_slice(&raw.values[r * f..(r + 1) * f]);
        }
    }
    Ok(Table {
        source,
        ids: raw.ids,
        offsets,
        time_kind: raw.time_kind,
        times,
        columns: raw.columns,
        values,
    })
}
