//! A small reader for flat Parquet files: the footer, then, per row group, only the column
//! chunks the spec needs.
//!
//! Supported: top-level required or optional columns (a null is an error); physical types
//! int32, int64, int96 (legacy timestamps), float, double and byte arrays (UTF-8); PLAIN,
//! dictionary (PLAIN_DICTIONARY / RLE_DICTIONARY), DELTA_BINARY_PACKED and BYTE_STREAM_SPLIT
//! encodings; data pages v1 and v2; uncompressed, snappy, gzip and zstd compression. This covers
//! what pyarrow/pandas write by default and with their common options. Anything else (nested
//! or repeated columns, other encodings or codecs, encryption, column data in other files) is
//! a clear error naming the column.
//!
//! Sizes from the file are checked against the file's length, and against `max_bytes` before
//! any page is read; every page must decompress to exactly the size its header states.
//!
//! # Layout
//! - `thrift`: the Thrift compact protocol decoder (footer, page headers).
//! - `meta`: the footer: leaf columns with their types, row groups and chunk locations.
//! - `page`: a column chunk's pages: codecs, levels (nulls) and value encodings.
//! - here: which columns play which role, and their conversion to ids, times and values.

use std::fs::File;
use std::path::Path;

use super::time::{DAY, TextTime, value_from_f64};
use super::{
    Ids, Raw, RowNames, TableSpec, TimeKind, data_err, file_series_name, list, missing_column,
};
use crate::error::DataError;

mod meta;
mod page;
mod thrift;

use meta::{Annotation, Group, Meta, Physical, read_meta};
use page::{ChunkErr, Phys, read_chunk};

/// Days from the Julian day epoch to 1970-01-01 (for int96 timestamps).
const JULIAN_UNIX_EPOCH: i64 = 2_440_588;

/// How the time column becomes seconds (or numbers).
#[derive(Debug, Clone, Copy)]
enum TimeConv {
    /// int32 days.
    Date,
    /// int64 in units of `1 / per` seconds.
    Timestamp(i64),
    /// Legacy int96: nanoseconds of the day, then the Julian day.
    Int96,
    Integer {
        signed: bool,
    },
    Float,
    /// Strings, parsed like CSV cells.
    Text,
}

/// Which columns (indices into [`Meta::columns`]) play which role.
#[derive(Debug)]
struct Plan {
    id: Option<usize>,
    time: Option<(usize, TimeConv)>,
    values: Vec<usize>,
}

/// Resolves the spec against the schema, checking each column's type for its role.
fn plan(source: &str, meta: &Meta, spec: &TableSpec) -> Result<Plan, DataError> {
    let names: Vec<&str> = meta.columns.iter().map(|c| c.name.as_str()).collect();
    let find = |role: &str, name: &str| -> Result<usize, DataError> {
        let i = names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| missing_column(source, role, name, &names))?;
        if let Some(why) = meta.columns[i].unsupported {
            return Err(data_err(
                source,
                format!("{role} column {name:?} is {why}; only flat columns are supported"),
            ));
        }
        Ok(i)
    };
    let holds = |role: &str, i: usize, expected: &str| {
        let c = &meta.columns[i];
        data_err(
            source,
            format!(
                "{role} column {:?} holds {} values; expected {expected}",
                c.name,
                c.describe()
            ),
        )
    };

    let id = spec
        .id_column
        .as_deref()
        .map(|c| find("id", c))
        .transpose()?;
    if let Some(i) = id {
        let c = &meta.columns[i];
        let ok = match c.physical {
            Physical::ByteArray => matches!(c.annotation, Annotation::None | Annotation::String),
            Physical::Int32 | Physical::Int64 => {
                matches!(c.annotation, Annotation::None | Annotation::Integer { .. })
            }
            _ => false,
        };
        if !ok {
            return Err(holds("id", i, "strings or integers"));
        }
    }

    let time = match spec.time_column.as_deref() {
        None => None,
        Some(name) => {
            let i = find("time", name)?;
            let c = &meta.columns[i];
            let conv = match (c.physical, c.annotation) {
                (Physical::Int32, Annotation::Date) => TimeConv::Date,
                (Physical::Int64, Annotation::Timestamp(per)) => TimeConv::Timestamp(per),
                (Physical::Int96, _) => TimeConv::Int96,
                (Physical::Int32 | Physical::Int64, Annotation::None) => {
                    TimeConv::Integer { signed: true }
                }
                (Physical::Int32 | Physical::Int64, Annotation::Integer { signed }) => {
                    TimeConv::Integer { signed }
                }
                (Physical::Float | Physical::Double, Annotation::None) => TimeConv::Float,
                (Physical::ByteArray, Annotation::None | Annotation::String) => TimeConv::Text,
                _ => {
                    return Err(holds(
                        "time",
                        i,
                        "numbers, dates, timestamps or date strings",
                    ));
                }
            };
            Some((i, conv))
        }
    };

    let values: Vec<usize> = if spec.columns.is_empty() {
        let time_col = time.map(|(i, _)| i);
        let cols: Vec<usize> = (0..meta.columns.len())
            .filter(|&i| Some(i) != id && Some(i) != time_col)
            .filter(|&i| {
                let c = &meta.columns[i];
                c.unsupported.is_none() && c.is_number() && !is_pandas_index(&c.name)
            })
            .collect();
        if cols.is_empty() {
            return Err(data_err(
                source,
                format!(
                    "no value columns: no int32/int64/float/double column besides the id and time columns; columns: {}",
                    list(&names)
                ),
            ));
        }
        cols
    } else {
        let mut cols = Vec::new();
        for name in &spec.columns {
            let i = find("value", name)?;
            if !meta.columns[i].is_number() {
                return Err(holds("value", i, "int32, int64, float or double numbers"));
            }
            cols.push(i);
        }
        cols
    };
    Ok(Plan { id, time, values })
}

/// `max_bytes` against the decompressed chunks to read plus the decoded table, from the footer.
fn check_size(
    source: &str,
    meta: &Meta,
    plan: &Plan,
    max_bytes: Option<u64>,
) -> Result<(), DataError> {
    let Some(max) = max_bytes else {
        return Ok(());
    };
    let rows: u64 = meta.groups.iter().map(|g| g.rows as u64).sum();
    let mut needed = rows.saturating_mul(4 * plan.values.len() as u64 + 16);
    for g in &meta.groups {
        let time = plan.time.map(|(i, _)| i);
        for &c in plan.id.iter().chain(&time).chain(&plan.values) {
            needed = needed.saturating_add(g.chunks[c].uncompressed);
        }
    }
    if needed > max {
        return Err(data_err(
            source,
            format!(
                "too large: {rows} rows need about {needed} bytes decompressed and decoded, more than max_bytes ({max})"
            ),
        ));
    }
    Ok(())
}

/// One row group being read: names its rows in messages.
struct GroupReader<'a> {
    source: &'a str,
    meta: &'a Meta,
    group: &'a Group,
    /// Rows in the groups before this one.
    first_row: usize,
}

impl GroupReader<'_> {
    /// The error for row `k` of the group, column `c`.
    fn bad(&self, k: usize, c: usize, msg: impl std::fmt::Display) -> DataError {
        data_err(
            self.source,
            format!(
                "data row {}, column {:?}: {msg}",
                self.first_row + k + 1,
                self.meta.columns[c].name
            ),
        )
    }

    /// Decodes column `c` of the group.
    fn read(&self, file: &mut File, c: usize) -> Result<Phys, DataError> {
        let col = &self.meta.columns[c];
        let rows = self.group.rows;
        read_chunk(file, col, &self.group.chunks[c], rows).map_err(|e| match e {
            ChunkErr::Null(k) => self.bad(
                k,
                c,
                "expected a value, found null (missing values are not supported)",
            ),
            ChunkErr::Other(m) => data_err(
                self.source,
                format!(
                    "column {:?}, rows {}..{}: {m}",
                    col.name,
                    self.first_row + 1,
                    self.first_row + rows
                ),
            ),
        })
    }

    /// Appends each row's series index.
    fn ids(
        &self,
        c: usize,
        phys: Phys,
        ids: &mut Ids,
        series: &mut Vec<u32>,
    ) -> Result<(), DataError> {
        let signed = self.meta.columns[c].annotation != Annotation::Integer { signed: false };
        match phys {
            Phys::Bytes(b) => {
                for k in 0..self.group.rows {
                    let id = std::str::from_utf8(b.get(k)).map_err(|_| {
                        self.bad(k, c, "expected a UTF-8 string id, found invalid UTF-8")
                    })?;
                    if id.is_empty() {
                        return Err(self.bad(k, c, "expected a series id, found an empty string"));
                    }
                    series.push(ids.intern(id));
                }
            }
            Phys::I32(v) => series.extend(v.iter().map(|&x| {
                ids.intern(&if signed {
                    x.to_string()
                } else {
                    (x as u32).to_string()
                })
            })),
            Phys::I64(v) => series.extend(v.iter().map(|&x| {
                ids.intern(&if signed {
                    x.to_string()
                } else {
                    (x as u64).to_string()
                })
            })),
            _ => unreachable!("id column types are checked by plan()"),
        }
        Ok(())
    }

    /// Appends each row's time.
    fn times(
        &self,
        c: usize,
        conv: TimeConv,
        phys: Phys,
        times: &mut Vec<f64>,
        text: &mut TextTime,
    ) -> Result<(), DataError> {
        let finite = |k: usize, x: f64| {
            if x.is_finite() {
                Ok(x)
            } else {
                Err(self.bad(k, c, format!("expected a finite time, found {x}")))
            }
        };
        match (conv, phys) {
            (TimeConv::Date, Phys::I32(v)) => times.extend(v.iter().map(|&d| f64::from(d) * DAY)),
            (TimeConv::Timestamp(per), Phys::I64(v)) => times.extend(
                v.iter()
                    .map(|&t| t.div_euclid(per) as f64 + t.rem_euclid(per) as f64 / per as f64),
            ),
            (TimeConv::Int96, Phys::I96(v)) => times.extend(v.iter().map(|b| {
                let nanos = i64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                let day = i64::from(i32::from_le_bytes(b[8..].try_into().expect("4 bytes")));
                ((day - JULIAN_UNIX_EPOCH) * 86_400 + nanos.div_euclid(1_000_000_000)) as f64
                    + nanos.rem_euclid(1_000_000_000) as f64 / 1e9
            })),
            (TimeConv::Integer { signed }, Phys::I32(v)) => times.extend(v.iter().map(|&x| {
                if signed {
                    f64::from(x)
                } else {
                    f64::from(x as u32)
                }
            })),
            (TimeConv::Integer { signed }, Phys::I64(v)) => times.extend(
                v.iter()
                    .map(|&x| if signed { x as f64 } else { x as u64 as f64 }),
            ),
            (TimeConv::Float, Phys::F32(v)) => {
                for (k, &x) in v.iter().enumerate() {
                    times.push(finite(k, f64::from(x))?);
                }
            }
            (TimeConv::Float, Phys::F64(v)) => {
                for (k, &x) in v.iter().enumerate() {
                    times.push(finite(k, x)?);
                }
            }
            (TimeConv::Text, Phys::Bytes(b)) => {
                for k in 0..self.group.rows {
                    let s = std::str::from_utf8(b.get(k)).map_err(|_| {
                        self.bad(k, c, "expected a UTF-8 string, found invalid UTF-8")
                    })?;
                    times.push(text.parse(s.trim()).map_err(|m| self.bad(k, c, m))?);
                }
            }
            _ => unreachable!("time column types are checked by plan()"),
        }
        Ok(())
    }

    /// Writes value column `j` (of `f`) of the group's rows into `out` (`[rows, f]`).
    fn values(
        &self,
        c: usize,
        phys: Phys,
        j: usize,
        f: usize,
        out: &mut [f32],
    ) -> Result<(), DataError> {
        let signed = self.meta.columns[c].annotation != Annotation::Integer { signed: false };
        let mut put = |k: usize, v: Result<f32, String>| -> Result<(), DataError> {
            out[k * f + j] = v.map_err(|m| self.bad(k, c, m))?;
            Ok(())
        };
        match phys {
            Phys::I32(v) => {
                for (k, &x) in v.iter().enumerate() {
                    put(k, Ok(if signed { x as f32 } else { x as u32 as f32 }))?;
                }
            }
            Phys::I64(v) => {
                for (k, &x) in v.iter().enumerate() {
                    put(k, Ok(if signed { x as f32 } else { x as u64 as f32 }))?;
                }
            }
            Phys::F32(v) => {
                for (k, &x) in v.iter().enumerate() {
                    put(k, value_from_f64(f64::from(x)))?;
                }
            }
            Phys::F64(v) => {
                for (k, &x) in v.iter().enumerate() {
                    put(k, value_from_f64(x))?;
                }
            }
            _ => unreachable!("value column types are checked by plan()"),
        }
        Ok(())
    }
}

/// Reads a Parquet file into rows in file order.
pub(super) fn read(
    path: &Path,
    source: &str,
    spec: &TableSpec,
    max_bytes: Option<u64>,
) -> Result<Raw, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let meta = read_meta(&mut file, file_len).map_err(|m| data_err(source, m))?;
    let plan = plan(source, &meta, spec)?;
    check_size(source, &meta, &plan, max_bytes)?;

    let stem = file_series_name(path);
    let mut ids = Ids::default();
    let mut series = Vec::new();
    let mut times = Vec::new();
    let mut values = Vec::new();
    let mut text_time = TextTime::default();
    let f = plan.values.len();
    let mut first_row = 0usize;
    for group in &meta.groups {
        let g = GroupReader {
            source,
            meta: &meta,
            group,
            first_row,
        };
        // Every chunk is decoded (so its pages really hold the group's rows) before the
        // table grows by the row count the footer states.
        let id = plan.id.map(|c| g.read(&mut file, c)).transpose()?;
        let time = plan.time.map(|(c, _)| g.read(&mut file, c)).transpose()?;
        let cols = plan
            .values
            .iter()
            .map(|&c| g.read(&mut file, c))
            .collect::<Result<Vec<_>, _>>()?;

        match (plan.id, id) {
            (Some(c), Some(phys)) => g.ids(c, phys, &mut ids, &mut series)?,
            _ => series.extend(std::iter::repeat_n(ids.intern(&stem), group.rows)),
        }
        if let (Some((c, conv)), Some(phys)) = (plan.time, time) {
            g.times(c, conv, phys, &mut times, &mut text_time)?;
        }
        let base = values.len();
        values.resize(base + group.rows * f, 0.0);
        for (j, (&c, phys)) in plan.values.iter().zip(cols).enumerate() {
            g.values(c, phys, j, f, &mut values[base..])?;
        }
        first_row += group.rows;
    }

    let time_kind = match plan.time {
        None => TimeKind::Index,
        Some((_, TimeConv::Date)) => TimeKind::Date,
        Some((_, TimeConv::Timestamp(_) | TimeConv::Int96)) => TimeKind::DateTime,
        Some((_, TimeConv::Integer { .. } | TimeConv::Float)) => TimeKind::Number,
        Some((_, TimeConv::Text)) => text_time.kind(),
    };
    Ok(Raw {
        ids: ids.names,
        series,
        time_kind,
        time_column: spec.time_column.clone().unwrap_or_default(),
        times,
        columns: plan
            .values
            .iter()
            .map(|&c| meta.columns[c].name.clone())
            .collect(),
        values,
        row_names: RowNames::Data,
    })
}

/// pandas writes a non-default index as `__index_level_N__`.
fn is_pandas_index(name: &str) -> bool {
    name.strip_prefix("__index_level_")
        .and_then(|r| r.strip_suffix("__"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
