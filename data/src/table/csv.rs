//! The CSV reader (`.csv`, `.csv.gz`): a header line naming the columns, then data rows with
//! exactly as many fields. Rows are named `data row N (line L)`, L counting the header as line 1.
//! A value cell that is empty, spells NaN or is one of the markers pandas reads as missing
//! (`NA`, `N/A`, `null`, ...: [`MISSING_MARKERS`]) is a missing value: `NaN` with
//! [`Missing::Keep`], an error naming the row and the column with [`Missing::Error`].

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use flate2::read::MultiGzDecoder;

use super::time::{TextTime, parse_value};
use super::{
    Ids, Missing, Raw, RowNames, TableSpec, TimeKind, data_err, file_series_name, missing_column,
};
use crate::error::DataError;

/// Counts the bytes read and fails once more than the limit have been read.
struct Limited<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        if self.read.get() > self.limit {
            return Err(io::Error::other("size limit exceeded"));
        }
        Ok(n)
    }
}

/// Reads a CSV (gzipped if `gz`) file into rows in file order.
pub(super) fn read(
    path: &Path,
    source: &str,
    spec: &TableSpec,
    max_bytes: Option<u64>,
    gz: bool,
) -> Result<Raw, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let limit = max_bytes.unwrap_or(u64::MAX);
    if !gz {
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        if len > limit {
            return Err(too_large(
                source,
                format!("the file is {len} bytes, more than max_bytes ({limit})"),
            ));
        }
    }
    let inner: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(file)
    };
    let counter = Rc::new(Cell::new(0));
    let input = Limited {
        inner,
        read: Rc::clone(&counter),
        limit,
    };
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(::csv::Trim::All)
        .from_reader(input);
    let what = if gz { "gzipped CSV" } else { "CSV" };
    let mut next = |record: &mut ::csv::StringRecord| -> Result<bool, DataError> {
        reader.read_record(record).map_err(|e| {
            if counter.get() > limit {
                return too_large(
                    source,
                    format!("the decompressed CSV text exceeds max_bytes ({limit})"),
                );
            }
            match e.kind() {
                ::csv::ErrorKind::Io(io) => {
                    data_err(source, format!("cannot read the {what} data: {io}"))
                }
                ::csv::ErrorKind::Utf8 { pos, err } => data_err(
                    source,
                    format!(
                        "line {}: field {} is not valid UTF-8",
                        pos.as_ref().map_or(0, |p| p.line()),
                        err.field() + 1
                    ),
                ),
                _ => data_err(source, format!("malformed CSV: {e}")),
            }
        })
    };

    let mut header = ::csv::StringRecord::new();
    if !next(&mut header)? {
        return Err(data_err(
            source,
            "empty file: expected a header line naming the columns, then data rows",
        ));
    }
    let names: Vec<String> = header.iter().map(str::to_owned).collect();
    let find = |role: &str, name: &str| -> Result<usize, DataError> {
        let mut hits = names.iter().enumerate().filter(|(_, n)| *n == name);
        match (hits.next(), hits.next()) {
            (Some((i, _)), None) => Ok(i),
            (Some((i, _)), Some((j, _))) => Err(data_err(
                source,
                format!(
                    "line 1 (header): {role} column {name:?} appears more than once (fields {} and {})",
                    i + 1,
                    j + 1
                ),
            )),
            (None, _) => Err(missing_column(source, role, name, &names)),
        }
    };
    let id_col = spec
        .id_column
        .as_deref()
        .map(|c| find("id", c))
        .transpose()?;
    let time_col = spec
        .time_column
        .as_deref()
        .map(|c| find("time", c))
        .transpose()?;

    let mut record = ::csv::StringRecord::new();
    if !next(&mut record)? {
        return Err(data_err(
            source,
            "no data rows: the file has a header line but no rows under it",
        ));
    }
    let value_cols: Vec<usize> = if spec.columns.is_empty() {
        let cols: Vec<usize> = (0..names.len())
            .filter(|&i| Some(i) != id_col && Some(i) != time_col && !names[i].is_empty())
            .filter(|&i| {
                record
                    .get(i)
                    .is_none_or(|c| is_missing_marker(c) || c.parse::<f64>().is_ok())
            })
            .collect();
        if cols.is_empty() {
            return Err(data_err(
                source,
                format!(
                    "no value columns: no column other than the id and time columns holds numbers in the first data row; columns: {}",
                    super::list(&names)
                ),
            ));
        }
        for &c in &cols {
            find("value", &names[c])?; // a duplicated name is ambiguous
        }
        cols
    } else {
        spec.columns
            .iter()
            .map(|c| find("value", c))
            .collect::<Result<_, _>>()?
    };
    let columns: Vec<String> = value_cols.iter().map(|&i| names[i].clone()).collect();

    let stem = file_series_name(path);
    let mut ids = Ids::default();
    let mut series = Vec::new();
    let mut times = Vec::new();
    let mut values = Vec::new();
    let mut lines = Vec::new();
    let mut text_time = TextTime::default();
    loop {
        let row = lines.len() + 1;
        let line = record.position().map_or(0, |p| p.line());
        let at = |col: usize| format!("data row {row} (line {line}), column {:?}", names[col]);
        if record.len() != names.len() {
            return Err(data_err(
                source,
                format!(
                    "data row {row} (line {line}): expected {} fields as in the header, found {}",
                    names.len(),
                    record.len()
                ),
            ));
        }
        let sid = match id_col {
            Some(c) => {
                let cell = &record[c];
                if cell.is_empty() {
                    return Err(data_err(
                        source,
                        format!("{}: expected a series id, found an empty cell", at(c)),
                    ));
                }
                ids.intern(cell)
            }
            None => ids.intern(&stem),
        };
        series.push(sid);
        if let Some(c) = time_col {
            let t = text_time
                .parse(&record[c])
                .map_err(|m| data_err(source, format!("{}: {m}", at(c))))?;
            times.push(t);
        }
        for &c in &value_cols {
            let v = value_cell(&record[c], spec.missing)
                .map_err(|m| data_err(source, format!("{}: {m}", at(c))))?;
            values.push(v);
        }
        lines.push(line);
        if !next(&mut record)? {
            break;
        }
    }
    Ok(Raw {
        ids: ids.names,
        series,
        time_kind: if time_col.is_some() {
            text_time.kind()
        } else {
            TimeKind::Index
        },
        time_column: spec.time_column.clone().unwrap_or_default(),
        times,
        columns,
        values,
        row_names: RowNames::Lines(lines),
    })
}

/// The spellings of a missing value in a CSV cell: an empty cell and the markers pandas reads as
/// missing by default (`NA`, `N/A`, `NaN`, `null`, ...); matched exactly, after the surrounding
/// whitespace is trimmed.
const MISSING_MARKERS: [&str; 21] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "+nan", "+NaN",
];

/// Whether `cell` spells a missing value (a marker, or any spelling of NaN).
fn is_missing_marker(cell: &str) -> bool {
    MISSING_MARKERS.contains(&cell) || cell.parse::<f32>().is_ok_and(f32::is_nan)
}

/// A value cell: a finite number, or with [`Missing::Keep`] `NaN` for a missing value.
fn value_cell(cell: &str, missing: Missing) -> Result<f32, String> {
    if is_missing_marker(cell) {
        return match missing {
            Missing::Keep => Ok(f32::NAN),
            Missing::Error if cell.is_empty() => Err(
                "expected a number, found an empty cell (a missing value: `--missing mask` trains through missing values)".into(),
            ),
            Missing::Error => Err(format!(
                "expected a number, found {cell:?}, a missing value (`--missing mask` trains through missing values)"
            )),
        };
    }
    parse_value(cell)
}

/// The error for input past `max_bytes`.
fn too_large(source: &str, detail: String) -> DataError {
    data_err(source, format!("too large: {detail}"))
}
