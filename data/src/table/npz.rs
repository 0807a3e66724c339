//! The ragged `.npz` form: `x` `[rows, F]` (every series' rows concatenated), `lengths` `[S]`
//! (each series' row count, each at least 1, summing to `rows`) and optionally `y`
//! `[rows, F_out]`. A 1-d `x` or `y` is one column. Columns are named `x0..x{F-1}`, then
//! `y0..y{F_out-1}`; series are named `"0".."S-1"`; times are row positions.
//!
//! `x` and `y` are read by [`crate::npy::parse_npy`] (float32 or float64). `lengths` may be an
//! integer array (int8..int64, uint8..uint64, either byte order; decoded here, since the npy
//! reader reads floats only) or a float array of whole numbers.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::{Missing, Raw, RowNames, TableSpec, TimeKind, data_err};
use crate::error::DataError;
use crate::npy::{Array, NpyError, parse_npy};

/// The arrays an archive may hold.
const KEYS: [&str; 3] = ["x", "lengths", "y"];

/// Reads a ragged `.npz` into rows in file order.
pub(super) fn read(
    path: &Path,
    source: &str,
    spec: &TableSpec,
    max_bytes: Option<u64>,
) -> Result<Raw, DataError> {
    if let Some(c) = spec.id_column.as_ref().or(spec.time_column.as_ref()) {
        return Err(data_err(
            source,
            format!(
                "an .npz table has no id or time column (series come from `lengths`, times are row positions), but column {c:?} was requested as one"
            ),
        ));
    }
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let not_zip = |e: zip::result::ZipError| {
        data_err(source, format!("not a readable .npz (zip) archive: {e}"))
    };
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(not_zip)?;

    // Names and sizes first: nothing is decompressed from an unexpected or too large archive.
    let mut entries: [Option<(usize, u64)>; 3] = [None; 3];
    let mut total = 0u64;
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(not_zip)?;
        let name = entry.name().to_owned();
        let slot = name
            .strip_suffix(".npy")
            .and_then(|k| KEYS.iter().position(|&x| x == k))
            .ok_or_else(|| {
                data_err(
                    source,
                    format!(
                        "unexpected entry {name:?}; expected arrays x, lengths and optionally y"
                    ),
                )
            })?;
        if entries[slot].is_some() {
            return Err(data_err(
                source,
                format!("array {:?} appears twice", KEYS[slot]),
            ));
        }
        entries[slot] = Some((index, entry.size()));
        total = total.saturating_add(entry.size());
    }
    if let Some(max) = max_bytes
        && total > max
    {
        return Err(data_err(
            source,
            format!(
                "too large: the arrays take {total} bytes decompressed, more than max_bytes ({max})"
            ),
        ));
    }
    let mut load = |slot: usize| -> Result<Option<Vec<u8>>, DataError> {
        let Some((index, size)) = entries[slot] else {
            return Ok(None);
        };
        let entry = archive.by_index(index).map_err(not_zip)?;
        // The declared size is only a hint: memory follows the bytes actually inflated.
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 24));
        entry
            .take(size.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| {
                data_err(
                    source,
                    format!("cannot decompress array {:?}: {e}", KEYS[slot]),
                )
            })?;
        if bytes.len() as u64 != size {
            return Err(data_err(
                source,
                format!(
                    "array {:?} decompresses to more than the {size} bytes its entry declares",
                    KEYS[slot]
                ),
            ));
        }
        Ok(Some(bytes))
    };
    let missing = |key: &str| {
        data_err(
            source,
            format!(
                "no array {key:?}; a ragged .npz holds x [rows, F], lengths [S] and optionally y [rows, F_out]"
            ),
        )
    };
    let x = load(0)?.ok_or_else(|| missing("x"))?;
    let x = parse_npy(&x, &format!("{source}:x"))?;
    let lengths = load(1)?.ok_or_else(|| missing("lengths"))?;
    let lengths =
        parse_lengths(&lengths, &format!("{source}:lengths")).map_err(|m| data_err(source, m))?;
    let y = load(2)?
        .map(|b| parse_npy(&b, &format!("{source}:y")))
        .transpose()?;

    let (rows, fx) = matrix(source, "x", &x)?;
    let mut columns: Vec<String> = (0..fx).map(|j| format!("x{j}")).collect();
    let mut fy = 0;
    if let Some(y) = &y {
        let (ry, f) = matrix(source, "y", y)?;
        if ry != rows {
            return Err(data_err(
                source,
                format!(
                    "array \"y\": expected {rows} rows like x, found {ry} (shape {:?})",
                    y.shape
                ),
            ));
        }
        fy = f;
        columns.extend((0..fy).map(|j| format!("y{j}")));
    }
    if rows == 0 {
        return Err(data_err(source, "no data rows: array \"x\" has 0 rows"));
    }
    if lengths.is_empty() {
        return Err(data_err(
            source,
            "array \"lengths\": expected at least one series, found none",
        ));
    }
    let sum: u64 = lengths.iter().sum();
    if sum != rows as u64 {
        return Err(data_err(
            source,
            format!(
                "array \"lengths\": the {} series lengths sum to {sum}, expected the {rows} rows of x",
                lengths.len()
            ),
        ));
    }

    // Values, in the requested order.
    let picks: Vec<(usize, usize)> = if spec.columns.is_empty() {
        (0..fx)
            .map(|j| (0, j))
            .chain((0..fy).map(|j| (1, j)))
            .collect()
    } else {
        spec.columns
            .iter()
            .map(|name| {
                columns
                    .iter()
                    .position(|c| c == name)
                    .map(|i| if i < fx { (0, i) } else { (1, i - fx) })
                    .ok_or_else(|| {
                        let mut avail = format!("x0..x{}", fx.saturating_sub(1));
                        if fy > 0 {
                            avail.push_str(&format!(", y0..y{}", fy - 1));
                        }
                        data_err(
                            source,
                            format!("value column {name:?} not found; available columns: {avail}"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?
    };
    let f = picks.len();
    let mut values = Vec::with_capacity(rows * f);
    for r in 0..rows {
        for &(a, j) in &picks {
            let (arr, width, name) = match a {
                0 => (&x, fx, "x"),
                _ => (y.as_ref().expect("y exists"), fy, "y"),
            };
            let v = arr.data[r * width + j];
            if v.is_nan() && spec.missing == Missing::Error {
                return Err(data_err(
                    source,
                    format!(
                        "data row {}, column \"{name}{j}\": expected a finite number, found NaN, a missing value (array {name:?} [{r}, {j}]; `--missing mask` trains through missing values)",
                        r + 1
                    ),
                ));
            }
            if v.is_infinite() {
                return Err(data_err(
                    source,
                    format!(
                        "data row {}, column \"{name}{j}\": expected a finite number, found {v} (array {name:?} [{r}, {j}])",
                        r + 1
                    ),
                ));
            }
            values.push(v);
        }
    }
    let columns = picks
        .iter()
        .map(|&(a, j)| format!("{}{j}", if a == 0 { "x" } else { "y" }))
        .collect();
    let mut series = Vec::with_capacity(rows);
    for (i, &n) in lengths.iter().enumerate() {
        series.extend(std::iter::repeat_n(i as u32, n as usize));
    }
    Ok(Raw {
        ids: (0..lengths.len()).map(|i| i.to_string()).collect(),
        series,
        time_kind: TimeKind::Index,
        time_column: String::new(),
        times: Vec::new(),
        columns,
        values,
        row_names: RowNames::Data,
    })
}

/// `(rows, columns)` of a 1-d or 2-d array.
fn matrix(source: &str, name: &str, a: &Array) -> Result<(usize, usize), DataError> {
    match a.shape[..] {
        [r] => Ok((r, 1)),
        [r, f] => Ok((r, f)),
        _ => Err(data_err(
            source,
            format!(
                "array {name:?}: expected 2 dimensions [rows, columns], found shape {:?}",
                a.shape
            ),
        )),
    }
}

/// The series lengths: a 1-d integer array, or a float array of whole numbers; each at least 1.
fn parse_lengths(bytes: &[u8], what: &str) -> Result<Vec<u64>, String> {
    let check = |i: usize, v: f64, shown: String| -> Result<u64, String> {
        if v.fract() != 0.0 || !(1.0..=1e15).contains(&v) {
            Err(format!(
                "array \"lengths\", entry {i}: expected a whole number of rows, at least 1, found {shown}"
            ))
        } else {
            Ok(v as u64)
        }
    };
    let (shape, values): (Vec<usize>, Vec<(f64, String)>) = match parse_npy(bytes, what) {
        Ok(a) => (
            a.shape,
            a.data
                .iter()
                .map(|&v| (f64::from(v), v.to_string()))
                .collect(),
        ),
        Err(NpyError::UnsupportedDtype { .. }) => {
            let (shape, ints) = parse_int_npy(bytes)?;
            (
                shape,
                ints.iter().map(|&v| (v as f64, v.to_string())).collect(),
            )
        }
        Err(e) => return Err(e.to_string()),
    };
    if shape.len() != 1 {
        return Err(format!(
            "array \"lengths\": expected 1 dimension [series], found shape {shape:?}"
        ));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, (v, shown))| check(i, v, shown))
        .collect()
}

/// The quoted string after `'key':` in a header.
fn header_str<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let rest = header[header.find(&format!("'{key}'"))? + key.len() + 2..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let q = rest.chars().next().filter(|&c| c == '\'' || c == '"')?;
    let rest = &rest[1..];
    Some(&rest[..rest.find(q)?])
}

/// The tuple after `'shape':` in a header.
fn header_shape(header: &str) -> Option<Vec<usize>> {
    let rest = header[header.find("'shape'")? + 7..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start().strip_prefix('(')?;
    rest[..rest.find(')')?]
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().ok())
        .collect()
}

/// Decodes a `.npy` of integers (`i1`..`i8`, `u1`..`u8`): its shape and values.
fn parse_int_npy(bytes: &[u8]) -> Result<(Vec<usize>, Vec<i128>), String> {
    let bad = |why: &str| format!("array \"lengths\": {why}");
    let (start, len) = match bytes.get(6) {
        Some(1) => (
            10,
            bytes
                .get(8..10)
                .map(|l| usize::from(u16::from_le_bytes([l[0], l[1]]))),
        ),
        Some(2 | 3) => (
            12,
            bytes
                .get(8..12)
                .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize),
        ),
        _ => (0, None),
    };
    let len = len.ok_or_else(|| bad("malformed .npy header"))?;
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated .npy header"))?;
    let data = &bytes[start + len..];
    let descr = header_str(header, "descr").ok_or_else(|| bad("no 'descr' in the .npy header"))?;
    let shape = header_shape(header).ok_or_else(|| bad("no 'shape' in the .npy header"))?;
    let unsupported = || {
        bad(&format!(
            "unsupported dtype {descr:?}; expected integers or floats"
        ))
    };
    let mut chars = descr.chars();
    let big = match chars.next() {
        Some('<' | '|' | '=') => false,
        Some('>') => true,
        _ => return Err(unsupported()),
    };
    let signed = match chars.next() {
        Some('i') => true,
        Some('u') => false,
        _ => return Err(unsupported()),
    };
    let width: usize = chars.as_str().parse().map_err(|_| unsupported())?;
    if ![1, 2, 4, 8].contains(&width) {
        return Err(unsupported());
    }
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(&format!("shape {shape:?} is too large")))?;
    if n.checked_mul(width) != Some(data.len()) {
        return Err(bad(&format!(
            "shape {shape:?} of {width}-byte integers needs {} bytes of data, found {}",
            n.saturating_mul(width),
            data.len()
        )));
    }
    let values = data
        .chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 8];
            if big {
                b[8 - width..].copy_from_slice(c);
                b.reverse();
            } else {
                b[..width].copy_from_slice(c);
            }
            let u = u64::from_le_bytes(b);
            if signed {
                // Sign-extend from `width` bytes.
                let shift = 64 - 8 * width as u32;
                i128::from(((u << shift) as i64) >> shift)
            } else {
                i128::from(u)
            }
        })
        .collect();
    Ok((shape, values))
}
