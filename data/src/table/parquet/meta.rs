//! The footer: schema (leaf columns with their types) and row groups (where each column
//! chunk lies), decoded from the Thrift compact protocol.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::thrift::{Decoder, Struct, Value};

/// Parquet's file magic, at the start and at the end.
const MAGIC: &[u8; 4] = b"PAR1";

/// Deepest schema nesting accepted.
const MAX_SCHEMA_DEPTH: usize = 32;

/// Physical types, as numbered in the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Physical {
    Boolean,
    Int32,
    Int64,
    Int96,
    Float,
    Double,
    ByteArray,
    FixedLenByteArray,
}

impl Physical {
    fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Self::Boolean,
            1 => Self::Int32,
            2 => Self::Int64,
            3 => Self::Int96,
            4 => Self::Float,
            5 => Self::Double,
            6 => Self::ByteArray,
            7 => Self::FixedLenByteArray,
            _ => return None,
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::Int96 => "int96",
            Self::Float => "float",
            Self::Double => "double",
            Self::ByteArray => "byte array",
            Self::FixedLenByteArray => "fixed-length byte array",
        }
    }
}

/// What a column's logical or converted type says about its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Annotation {
    None,
    String,
    Date,
    /// Units per second: 1_000, 1_000_000 or 1_000_000_000.
    Timestamp(i64),
    Time,
    Decimal,
    Integer {
        signed: bool,
    },
    Other,
}

impl Annotation {
    pub(super) fn describe(self, physical: Physical) -> String {
        match self {
            Annotation::None | Annotation::Integer { signed: true } => physical.name().into(),
            Annotation::Integer { signed: false } => format!("unsigned {}", physical.name()),
            Annotation::String => "string".into(),
            Annotation::Date => "date".into(),
            Annotation::Timestamp(_) => "timestamp".into(),
            Annotation::Time => "time of day".into(),
            Annotation::Decimal => "decimal".into(),
            Annotation::Other => format!("{} with a logical type", physical.name()),
        }
    }
}

/// A leaf column of the schema.
#[derive(Debug, Clone)]
pub(super) struct Column {
    /// Dotted path for nested columns.
    pub(super) name: String,
    pub(super) physical: Physical,
    pub(super) annotation: Annotation,
    pub(super) optional: bool,
    /// Why the column cannot be read (nested or repeated), if so.
    pub(super) unsupported: Option<&'static str>,
}

impl Column {
    pub(super) fn describe(&self) -> String {
        self.annotation.describe(self.physical)
    }

    pub(super) fn is_number(&self) -> bool {
        matches!(
            (self.physical, self.annotation),
            (
                Physical::Int32 | Physical::Int64,
                Annotation::None | Annotation::Integer { .. }
            ) | (Physical::Float | Physical::Double, Annotation::None)
        )
    }
}

/// One column chunk's location and size.
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    pub(super) codec: i64,
    pub(super) num_values: i64,
    pub(super) uncompressed: u64,
    pub(super) start: u64,
    pub(super) compressed: u64,
}

/// One row group.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) rows: usize,
    pub(super) chunks: Vec<Chunk>,
}

/// What the footer says.
#[derive(Debug)]
pub(super) struct Meta {
    pub(super) columns: Vec<Column>,
    pub(super) groups: Vec<Group>,
}
/// A non-negative size from the file.
pub(super) fn size(v: Option<i64>, what: &str) -> Result<u64, String> {
    v.and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| format!("missing or negative {what}"))
}

/// What an element's logical type (or, failing that, its converted type) says.
fn annotation(e: &Struct) -> Annotation {
    if let Some((id, v)) = e.strukt(10).and_then(Struct::union_member) {
        return match id {
            1 | 4 | 12 => Annotation::String, // STRING, ENUM, JSON
            5 => Annotation::Decimal,
            6 => Annotation::Date,
            7 => Annotation::Time,
            8 => {
                let unit = match v {
                    Value::Struct(ts) => ts.strukt(2).and_then(Struct::union_member).map(|u| u.0),
                    _ => None,
                };
                match unit {
                    Some(1) => Annotation::Timestamp(1_000),
                    Some(2) => Annotation::Timestamp(1_000_000),
                    Some(3) => Annotation::Timestamp(1_000_000_000),
                    _ => Annotation::Other,
                }
            }
            10 => {
                let signed = match v {
                    Value::Struct(int) => int.bool(2).unwrap_or(true),
                    _ => true,
                };
                Annotation::Integer { signed }
            }
            _ => Annotation::Other,
        };
    }
    match e.int(6) {
        None => Annotation::None,
        Some(0 | 4 | 19) => Annotation::String,
        Some(5) => Annotation::Decimal,
        Some(6) => Annotation::Date,
        Some(7 | 8) => Annotation::Time,
        Some(9) => Annotation::Timestamp(1_000),
        Some(10) => Annotation::Timestamp(1_000_000),
        Some(11..=14) => Annotation::Integer { signed: false },
        Some(15..=18) => Annotation::Integer { signed: true },
        Some(_) => Annotation::Other,
    }
}

/// Collects the leaf columns under `elems[*idx]`.
fn walk(
    elems: &[&Struct],
    idx: &mut usize,
    path: &str,
    depth: usize,
    out: &mut Vec<Column>,
) -> Result<(), String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!("schema nested more than {MAX_SCHEMA_DEPTH} deep"));
    }
    let e = elems
        .get(*idx)
        .ok_or_else(|| "schema ends before all its groups' children".to_owned())?;
    *idx += 1;
    let name = String::from_utf8_lossy(e.bytes(4).unwrap_or_default()).into_owned();
    let name = if path.is_empty() {
        name
    } else {
        format!("{path}.{name}")
    };
    let repetition = e.int(3).unwrap_or(0);
    match e.int(1) {
        None => {
            let children = e.int(5).unwrap_or(0);
            for _ in 0..children {
                walk(elems, idx, &name, depth + 1, out)?;
            }
            Ok(())
        }
        Some(code) => {
            let physical = Physical::from_code(code)
                .ok_or_else(|| format!("column {name:?} has unknown physical type {code}"))?;
            let unsupported = if depth > 1 {
                Some("nested inside a group")
            } else if repetition == 2 {
                Some("repeated (a list)")
            } else {
                None
            };
            out.push(Column {
                name,
                physical,
                annotation: annotation(e),
                optional: repetition == 1,
                unsupported,
            });
            Ok(())
        }
    }
}

/// Reads and decodes the footer.
pub(super) fn read_meta(file: &mut File, file_len: u64) -> Result<Meta, String> {
    if file_len < 12 {
        return Err(format!(
            "not a Parquet file: {file_len} bytes, too short for the PAR1 header and footer"
        ));
    }
    let mut head = [0u8; 4];
    let mut tail = [0u8; 8];
    let io = |e: std::io::Error| format!("cannot read: {e}");
    file.read_exact(&mut head).map_err(io)?;
    file.seek(SeekFrom::End(-8)).map_err(io)?;
    file.read_exact(&mut tail).map_err(io)?;
    if &tail[4..] == b"PARE" {
        return Err("encrypted Parquet files are not supported".into());
    }
    if &head != MAGIC || &tail[4..] != MAGIC {
        return Err(format!(
            "not a Parquet file: expected PAR1 at the start and the end, found {:?} and {:?}",
            String::from_utf8_lossy(&head),
            String::from_utf8_lossy(&tail[4..])
        ));
    }
    let meta_len = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")));
    if meta_len + 12 > file_len {
        return Err(format!(
            "footer length {meta_len} does not fit in the file's {file_len} bytes"
        ));
    }
    let mut buf = vec![0u8; meta_len as usize];
    file.seek(SeekFrom::Start(file_len - 8 - meta_len))
        .map_err(io)?;
    file.read_exact(&mut buf).map_err(io)?;
    let fmd = Decoder::new(&buf)
        .read_struct()
        .map_err(|e| format!("malformed footer: {e}"))?;

    let schema: Vec<&Struct> = fmd
        .list(2)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| match v {
            Value::Struct(s) => Some(s),
            _ => None,
        })
        .collect();
    let root = schema
        .first()
        .ok_or_else(|| "malformed footer: no schema".to_owned())?;
    let mut columns = Vec::new();
    let mut idx = 1;
    for _ in 0..root.int(5).unwrap_or(0) {
        walk(&schema, &mut idx, "", 1, &mut columns)
            .map_err(|e| format!("malformed schema: {e}"))?;
    }
    if idx != schema.len() {
        return Err(format!(
            "malformed schema: {} elements, the root's children use {idx}",
            schema.len()
        ));
    }

    let mut groups = Vec::new();
    for (g, rg) in fmd.list(4).unwrap_or_default().iter().enumerate() {
        let Value::Struct(rg) = rg else {
            return Err(format!("malformed footer: row group {g} is not a struct"));
        };
        let rows = size(rg.int(3), "row count").map_err(|e| format!("row group {g}: {e}"))?;
        let mut chunks = Vec::new();
        for (c, cc) in rg.list(1).unwrap_or_default().iter().enumerate() {
            let ctx = |e: String| format!("row group {g}, column chunk {c}: {e}");
            let Value::Struct(cc) = cc else {
                return Err(ctx("not a struct".into()));
            };
            if cc.bytes(1).is_some() {
                return Err(ctx("data in another file is not supported".into()));
            }
            let md = cc
                .strukt(3)
                .ok_or_else(|| ctx("no column metadata (encrypted?)".into()))?;
            let data_off = size(md.int(9), "data page offset").map_err(ctx)?;
            let start = match md.int(11).and_then(|d| u64::try_from(d).ok()) {
                Some(d) if d > 0 && d < data_off => d,
                _ => data_off,
            };
            let compressed = size(md.int(7), "compressed size").map_err(ctx)?;
            if start
                .checked_add(compressed)
                .is_none_or(|end| end > file_len)
            {
                return Err(ctx(format!(
                    "bytes {start}..{} lie outside the file's {file_len} bytes",
                    start.saturating_add(compressed)
                )));
            }
            chunks.push(Chunk {
                codec: md.int(4).unwrap_or(0),
                num_values: md.int(5).unwrap_or(0),
                uncompressed: size(md.int(6), "uncompressed size").map_err(ctx)?,
                start,
                compressed,
            });
        }
        if chunks.len() != columns.len() {
            return Err(format!(
                "row group {g} has {} column chunks, the schema {} columns",
                chunks.len(),
                columns.len()
            ));
        }
        groups.push(Group {
            rows: usize::try_from(rows).map_err(|_| format!("row group {g}: too many rows"))?,
            chunks,
        });
    }
    Ok(Meta { columns, groups })
}
