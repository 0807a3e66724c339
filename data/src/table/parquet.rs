//! The Parquet reader (`.parquet`, `.pq`), on the `parquet` crate's footer and column readers:
//! every encoding, data pages v1 and v2, dictionary pages, nulls, and the codecs users meet
//! (uncompressed, snappy, gzip, zstd, lz4 and lz4_raw).
//!
//! Top-level flat columns are read: int32/int64 (any integer annotation), float, double, byte
//! arrays (strings), dates, timestamps and legacy int96 timestamps. A nested or repeated column
//! (list, map, struct), another codec (brotli, lzo) or a column of a type its role cannot use
//! is an error naming the column, found before any page is read.
//!
//! Here: which columns play which role (checked against the schema), the `max_bytes` bound from
//! the footer, and each row group's columns turned into ids, times and values. Within a row
//! group every column is decoded before its rows are checked, and the error reported is the one
//! of the first row (then the first column in id, time, value order), as a CSV reader would
//! report it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use parquet::basic::{
    Compression, ConvertedType, Encoding, LogicalType, TimeUnit, Type as Physical,
};
use parquet::column::page::{Page, PageMetadata, PageReader};
use parquet::column::reader::{ColumnReader, ColumnReaderImpl, get_column_reader};
use parquet::data_type::{ByteArray, DataType, Int96};
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{FileReader, RowGroupReader, SerializedFileReader};
use parquet::schema::types::{ColumnDescPtr, ColumnDescriptor, SchemaDescriptor};

use super::time::{DAY, TextTime, value_from_f64};
use super::{
    Ids, Missing, Raw, RowNames, TableSpec, TimeKind, data_err, file_series_name, list,
    missing_column,
};
use crate::error::DataError;

/// Days from the Julian day epoch to 1970-01-01 (for int96 timestamps).
const JULIAN_UNIX_EPOCH: i64 = 2_440_588;

/// The codecs this reader decompresses, for messages.
const CODECS: &str = "uncompressed, snappy, gzip, zstd, lz4, lz4_raw";

/// What a flat column's annotation (logical type, else converted type) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Annotation {
    None,
    String,
    Integer {
        bits: u8,
        signed: bool,
    },
    Date,
    /// Units per second.
    Timestamp(i64),
    Time,
    Decimal {
        precision: i32,
        scale: i32,
    },
    Float16,
    /// Any other annotation, by name.
    Other(&'static str),
}

/// A flat column of the file.
#[derive(Debug, Clone)]
struct Leaf {
    /// The index of its column chunk within each row group.
    index: usize,
    descr: ColumnDescPtr,
    physical: Physical,
    annotation: Annotation,
    /// 1 when nullable, 0 when required.
    max_def: i16,
}

impl Leaf {
    fn new(index: usize, descr: ColumnDescPtr) -> Self {
        Leaf {
            index,
            physical: descr.physical_type(),
            annotation: annotation(&descr),
            max_def: descr.max_def_level(),
            descr,
        }
    }

    /// The column's type, for messages.
    fn describe(&self) -> String {
        match self.annotation {
            Annotation::None => match self.physical {
                Physical::BOOLEAN => "boolean".into(),
                Physical::INT32 => "int32".into(),
                Physical::INT64 => "int64".into(),
                Physical::INT96 => "int96 timestamp".into(),
                Physical::FLOAT => "float".into(),
                Physical::DOUBLE => "double".into(),
                Physical::BYTE_ARRAY => "binary".into(),
                Physical::FIXED_LEN_BYTE_ARRAY => "fixed-length binary".into(),
            },
            Annotation::String => "string".into(),
            Annotation::Integer { bits, signed } => {
                format!("{}int{bits}", if signed { "" } else { "u" })
            }
            Annotation::Date => "date".into(),
            Annotation::Timestamp(_) => "timestamp".into(),
            Annotation::Time => "time of day".into(),
            Annotation::Decimal { precision, scale } => format!("decimal({precision}, {scale})"),
            Annotation::Float16 => "float16".into(),
            Annotation::Other(name) => name.into(),
        }
    }

    /// int32/int64 (any integer annotation), float or double: a value column.
    fn is_number(&self) -> bool {
        matches!(
            (self.physical, self.annotation),
            (
                Physical::INT32 | Physical::INT64,
                Annotation::None | Annotation::Integer { .. }
            ) | (Physical::FLOAT | Physical::DOUBLE, Annotation::None)
        )
    }

    fn signed(&self) -> bool {
        !matches!(self.annotation, Annotation::Integer { signed: false, .. })
    }
}

/// A flat column's annotation: its logical type, else its (legacy) converted type.
fn annotation(d: &ColumnDescriptor) -> Annotation {
    let per = |unit: &TimeUnit| match unit {
        TimeUnit::MILLIS => 1_000,
        TimeUnit::MICROS => 1_000_000,
        TimeUnit::NANOS => 1_000_000_000,
    };
    if let Some(logical) = d.logical_type_ref() {
        return match logical {
            LogicalType::String | LogicalType::Enum => Annotation::String,
            LogicalType::Integer(t) => Annotation::Integer {
                bits: t.bit_width as u8,
                signed: t.is_signed,
            },
            LogicalType::Date => Annotation::Date,
            LogicalType::Timestamp(t) => Annotation::Timestamp(per(&t.unit)),
            LogicalType::Time(_) => Annotation::Time,
            LogicalType::Decimal(t) => Annotation::Decimal {
                precision: t.precision,
                scale: t.scale,
            },
            LogicalType::Float16 => Annotation::Float16,
            LogicalType::Json => Annotation::Other("JSON"),
            LogicalType::Bson => Annotation::Other("BSON"),
            LogicalType::Uuid => Annotation::Other("UUID"),
            _ => Annotation::Other("binary with a logical type"),
        };
    }
    let int = |bits, signed| Annotation::Integer { bits, signed };
    match d.converted_type() {
        ConvertedType::NONE => Annotation::None,
        ConvertedType::UTF8 | ConvertedType::ENUM => Annotation::String,
        ConvertedType::INT_8 => int(8, true),
        ConvertedType::INT_16 => int(16, true),
        ConvertedType::INT_32 => int(32, true),
        ConvertedType::INT_64 => int(64, true),
        ConvertedType::UINT_8 => int(8, false),
        ConvertedType::UINT_16 => int(16, false),
        ConvertedType::UINT_32 => int(32, false),
        ConvertedType::UINT_64 => int(64, false),
        ConvertedType::DATE => Annotation::Date,
        ConvertedType::TIMESTAMP_MILLIS => Annotation::Timestamp(1_000),
        ConvertedType::TIMESTAMP_MICROS => Annotation::Timestamp(1_000_000),
        ConvertedType::TIME_MILLIS | ConvertedType::TIME_MICROS => Annotation::Time,
        ConvertedType::DECIMAL => Annotation::Decimal {
            precision: d.type_precision(),
            scale: d.type_scale(),
        },
        ConvertedType::JSON => Annotation::Other("JSON"),
        ConvertedType::BSON => Annotation::Other("BSON"),
        ConvertedType::INTERVAL => Annotation::Other("interval"),
        _ => Annotation::Other("value with a logical type"),
    }
}

/// A top-level field of the schema.
#[derive(Debug)]
struct Field {
    name: String,
    /// The column when the field is one flat column; else why it is not (`Err`: "a list", ...).
    leaf: Result<Leaf, String>,
}

/// The top-level fields, in file order.
fn fields(schema: &SchemaDescriptor) -> Vec<Field> {
    let top = schema.root_schema().get_fields();
    let mut first_leaf = vec![None; top.len()];
    for i in (0..schema.num_columns()).rev() {
        first_leaf[schema.get_column_root_idx(i)] = Some(i);
    }
    top.iter()
        .zip(first_leaf)
        .map(|(t, leaf)| {
            let info = t.get_basic_info();
            let repeated =
                info.has_repetition() && info.repetition() == parquet::basic::Repetition::REPEATED;
            let leaf = match leaf {
                Some(i) if t.is_primitive() && !repeated => Ok(Leaf::new(i, schema.column(i))),
                _ if t.is_primitive() => Err("a repeated column".to_owned()),
                _ => Err(nested_kind(info.logical_type_ref(), info.converted_type()).to_owned()),
            };
            Field {
                name: t.name().to_owned(),
                leaf,
            }
        })
        .collect()
}

/// What a group field is, for messages.
fn nested_kind(logical: Option<&LogicalType>, converted: ConvertedType) -> &'static str {
    match (logical, converted) {
        (Some(LogicalType::List), _) | (None, ConvertedType::LIST) => "a list column",
        (Some(LogicalType::Map), _) | (None, ConvertedType::MAP | ConvertedType::MAP_KEY_VALUE) => {
            "a map column"
        }
        _ => "a struct column",
    }
}

/// How the time column becomes seconds (or numbers).
#[derive(Debug, Clone, Copy)]
enum TimeConv {
    /// int32 days.
    Date,
    /// int64 in units of `1 / per` seconds.
    Timestamp(i64),
    /// Legacy int96: nanoseconds of the day, then the Julian day.
    Int96,
    Integer,
    Float,
    /// Strings, parsed like CSV cells.
    Text,
}

/// Which columns play which role.
#[derive(Debug)]
struct Plan {
    id: Option<(String, Leaf)>,
    time: Option<(String, Leaf, TimeConv)>,
    values: Vec<(String, Leaf)>,
}

impl Plan {
    /// The columns read with their names, in id, time, value order.
    fn columns(&self) -> impl Iterator<Item = (&str, &Leaf)> {
        let id = self.id.iter().map(|(n, l)| (n.as_str(), l));
        let time = self.time.iter().map(|(n, l, _)| (n.as_str(), l));
        let values = self.values.iter().map(|(n, l)| (n.as_str(), l));
        id.chain(time).chain(values)
    }
}

/// Resolves the spec against the schema, checking each column's type for its role.
fn plan(source: &str, schema: &SchemaDescriptor, spec: &TableSpec) -> Result<Plan, DataError> {
    let fields = fields(schema);
    let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    // A top-level name, or the dotted path of a leaf inside a nested column.
    let find = |role: &str, name: &str| -> Result<Leaf, DataError> {
        let nested = |what: &str| {
            data_err(
                source,
                format!("{role} column {name:?} is nested ({what}); only flat columns can be read"),
            )
        };
        if let Some(f) = fields.iter().find(|f| f.name == name) {
            return f.leaf.clone().map_err(|why| nested(&why));
        }
        for i in 0..schema.num_columns() {
            if schema.column(i).path().string() == name {
                let root = &fields[schema.get_column_root_idx(i)];
                return Err(nested(&format!("part of column {:?}", root.name)));
            }
        }
        Err(missing_column(source, role, name, &names))
    };
    let holds = |role: &str, name: &str, leaf: &Leaf, expected: &str| {
        data_err(
            source,
            format!(
                "{role} column {name:?} holds {} values; expected {expected}",
                leaf.describe()
            ),
        )
    };

    let id = match spec.id_column.as_deref() {
        None => None,
        Some(name) => {
            let leaf = find("id", name)?;
            let text = leaf.physical == Physical::BYTE_ARRAY
                && matches!(leaf.annotation, Annotation::None | Annotation::String);
            let integer =
                matches!(leaf.physical, Physical::INT32 | Physical::INT64) && leaf.is_number();
            if !(text || integer) {
                return Err(holds("id", name, &leaf, "strings or integers"));
            }
            Some((name.to_owned(), leaf))
        }
    };

    let time = match spec.time_column.as_deref() {
        None => None,
        Some(name) => {
            let leaf = find("time", name)?;
            let conv = match (leaf.physical, leaf.annotation) {
                (Physical::INT32, Annotation::Date) => TimeConv::Date,
                (Physical::INT64, Annotation::Timestamp(per)) => TimeConv::Timestamp(per),
                (Physical::INT96, _) => TimeConv::Int96,
                (
                    Physical::INT32 | Physical::INT64,
                    Annotation::None | Annotation::Integer { .. },
                ) => TimeConv::Integer,
                (Physical::FLOAT | Physical::DOUBLE, Annotation::None) => TimeConv::Float,
                (Physical::BYTE_ARRAY, Annotation::None | Annotation::String) => TimeConv::Text,
                _ => {
                    return Err(holds(
                        "time",
                        name,
                        &leaf,
                        "numbers, dates, timestamps or date strings",
                    ));
                }
            };
            Some((name.to_owned(), leaf, conv))
        }
    };

    let values = if spec.columns.is_empty() {
        let taken = [spec.id_column.as_deref(), spec.time_column.as_deref()];
        let cols: Vec<(String, Leaf)> = fields
            .iter()
            .filter(|f| !taken.contains(&Some(f.name.as_str())) && !is_pandas_index(&f.name))
            .filter_map(|f| match &f.leaf {
                Ok(leaf) if leaf.is_number() => Some((f.name.clone(), leaf.clone())),
                _ => None,
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
            let leaf = find("value", name)?;
            if !leaf.is_number() {
                return Err(holds(
                    "value",
                    name,
                    &leaf,
                    "int32, int64, float or double numbers",
                ));
            }
            cols.push((name.clone(), leaf));
        }
        cols
    };
    Ok(Plan { id, time, values })
}

/// The codec's name, if this reader cannot decompress it.
fn unsupported_codec(c: Compression) -> Option<&'static str> {
    match c {
        Compression::UNCOMPRESSED
        | Compression::SNAPPY
        | Compression::GZIP(_)
        | Compression::ZSTD(_)
        | Compression::LZ4
        | Compression::LZ4_RAW => None,
        Compression::BROTLI(_) => Some("brotli"),
        Compression::LZO => Some("lzo"),
    }
}

/// Checks, from the footer, each row group's row count, the place and codec of every chunk to
/// read, and `max_bytes` against the decompressed chunks plus the decoded table.
fn check_footer(
    source: &str,
    meta: &ParquetMetaData,
    plan: &Plan,
    file_len: u64,
    max_bytes: Option<u64>,
) -> Result<(), DataError> {
    let mut rows = 0u64;
    let mut chunks = 0u64;
    for (g, group) in meta.row_groups().iter().enumerate() {
        let n = u64::try_from(group.num_rows()).map_err(|_| {
            data_err(
                source,
                format!(
                    "row group {}: the footer states {} rows",
                    g + 1,
                    group.num_rows()
                ),
            )
        })?;
        rows = rows.saturating_add(n);
        for (name, leaf) in plan.columns() {
            let chunk = group.column(leaf.index);
            if let Some(codec) = unsupported_codec(chunk.compression()) {
                return Err(data_err(
                    source,
                    format!(
                        "column {name:?} is compressed with {codec}, which this reader does not decompress; supported codecs: {CODECS}"
                    ),
                ));
            }
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or(chunk.data_page_offset());
            let len = chunk.compressed_size();
            let inside = u64::try_from(start).ok().zip(u64::try_from(len).ok());
            if inside.is_none_or(|(a, l)| a.saturating_add(l) > file_len) {
                return Err(data_err(
                    source,
                    format!(
                        "column {name:?}, row group {}: the footer places the column chunk at {len} bytes from offset {start}, outside the file ({file_len} bytes)",
                        g + 1
                    ),
                ));
            }
            chunks = chunks.saturating_add(u64::try_from(chunk.uncompressed_size()).unwrap_or(0));
        }
    }
    let Some(max) = max_bytes else {
        return Ok(());
    };
    let needed = rows
        .saturating_mul(4 * plan.values.len() as u64 + 16)
        .saturating_add(chunks);
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

/// One column chunk, decoded: the non-null values and, for a nullable column, each row's
/// definition level.
#[derive(Debug)]
struct Chunk<T> {
    values: Vec<T>,
    defs: Option<Vec<i16>>,
    max_def: i16,
}

impl<T> Chunk<T> {
    /// Each row's value, `None` for a null.
    fn rows(&self) -> impl Iterator<Item = Option<&T>> {
        let mut values = self.values.iter();
        let n = self.defs.as_ref().map_or(self.values.len(), Vec::len);
        (0..n).map(move |k| match &self.defs {
            Some(d) if d[k] != self.max_def => None,
            _ => values.next(),
        })
    }
}

/// A decoded column chunk of one of the physical types read.
#[derive(Debug)]
enum Data {
    I32(Chunk<i32>),
    I64(Chunk<i64>),
    I96(Chunk<Int96>),
    F32(Chunk<f32>),
    F64(Chunk<f64>),
    Bytes(Chunk<ByteArray>),
}

impl Data {
    /// Each row of a number column (or int96 timestamps, as seconds) as `f64`, `None` for a
    /// null; integers are unsigned unless `signed`.
    fn numbers(&self, signed: bool) -> Box<dyn Iterator<Item = Option<f64>> + '_> {
        match self {
            Data::I32(c) if signed => Box::new(c.rows().map(|x| x.map(|&x| f64::from(x)))),
            Data::I32(c) => Box::new(c.rows().map(|x| x.map(|&x| f64::from(x as u32)))),
            Data::I64(c) if signed => Box::new(c.rows().map(|x| x.map(|&x| x as f64))),
            Data::I64(c) => Box::new(c.rows().map(|x| x.map(|&x| x as u64 as f64))),
            Data::F32(c) => Box::new(c.rows().map(|x| x.map(|&x| f64::from(x)))),
            Data::F64(c) => Box::new(c.rows().map(|x| x.copied())),
            Data::I96(c) => Box::new(c.rows().map(|x| x.map(int96_seconds))),
            Data::Bytes(_) => unreachable!("number columns are checked by plan()"),
        }
    }
}

/// Reads all `rows` records of a column chunk.
fn read_chunk<T: DataType>(
    mut reader: ColumnReaderImpl<T>,
    rows: usize,
    max_def: i16,
) -> Result<Chunk<T::T>, String> {
    let mut values = Vec::new();
    let mut defs = (max_def > 0).then(Vec::new);
    let mut read = 0;
    while read < rows {
        let (n, _, _) = reader
            .read_records(rows - read, defs.as_mut(), None, &mut values)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        read += n;
    }
    if read != rows {
        return Err(format!(
            "the footer states {rows} rows, the pages hold {read}"
        ));
    }
    let present = defs.as_ref().map_or(values.len(), |d| {
        d.iter().filter(|&&l| l == max_def).count()
    });
    if present != values.len() {
        return Err(format!(
            "{present} rows have a value, but {} values were decoded",
            values.len()
        ));
    }
    Ok(Chunk {
        values,
        defs,
        max_def,
    })
}

/// A column chunk's pages, checked for what the parquet crate's decoders would panic on (or
/// allocate without bound for) rather than refuse: a dictionary-encoded data page without a
/// dictionary page before it, and a dictionary page stating more values than its bytes hold.
struct CheckedPages {
    inner: Box<dyn PageReader>,
    physical: Physical,
    /// Whether a dictionary page was passed on.
    dictionary: bool,
}

impl CheckedPages {
    fn check(&mut self, page: &Page) -> Result<(), String> {
        match page {
            Page::DictionaryPage {
                buf,
                num_values,
                encoding: Encoding::PLAIN | Encoding::PLAIN_DICTIONARY,
                ..
            } => {
                let n = *num_values as usize;
                let fits = match self.physical {
                    Physical::BYTE_ARRAY => plain_byte_arrays_fit(buf, n),
                    Physical::INT32 | Physical::FLOAT => n.saturating_mul(4) <= buf.len(),
                    Physical::INT64 | Physical::DOUBLE => n.saturating_mul(8) <= buf.len(),
                    Physical::INT96 => n.saturating_mul(12) <= buf.len(),
                    _ => true,
                };
                if !fits {
                    return Err(format!(
                        "the dictionary page states {n} values, more than its {} bytes hold",
                        buf.len()
                    ));
                }
                self.dictionary = true;
            }
            Page::DictionaryPage { .. } => self.dictionary = true,
            _ if matches!(
                page.encoding(),
                Encoding::PLAIN_DICTIONARY | Encoding::RLE_DICTIONARY
            ) && !self.dictionary =>
            {
                return Err(
                    "a dictionary-encoded data page comes before any dictionary page".into(),
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether `buf` holds `n` PLAIN byte arrays (each a 4-byte length, then its bytes).
fn plain_byte_arrays_fit(buf: &[u8], n: usize) -> bool {
    let mut at = 0usize;
    for _ in 0..n {
        let Some(len) = buf.get(at..at + 4) else {
            return false;
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        at = at + 4 + len;
        if at > buf.len() {
            return false;
        }
    }
    true
}

impl Iterator for CheckedPages {
    type Item = parquet::errors::Result<Page>;

    fn next(&mut self) -> Option<Self::Item> {
        self.get_next_page().transpose()
    }
}

impl PageReader for CheckedPages {
    fn get_next_page(&mut self) -> parquet::errors::Result<Option<Page>> {
        let page = self.inner.get_next_page()?;
        if let Some(p) = &page {
            self.check(p).map_err(ParquetError::General)?;
        }
        Ok(page)
    }

    fn peek_next_page(&mut self) -> parquet::errors::Result<Option<PageMetadata>> {
        self.inner.peek_next_page()
    }

    fn skip_next_page(&mut self) -> parquet::errors::Result<()> {
        self.inner.skip_next_page()
    }

    fn at_record_boundary(&mut self) -> parquet::errors::Result<bool> {
        self.inner.at_record_boundary()
    }
}

/// An error at one row of a row group (0-based within the group).
type RowErr = (usize, String);

/// One row group being read.
struct Group<'a> {
    source: &'a str,
    /// Rows in the groups before this one.
    first_row: usize,
    rows: usize,
    reader: Box<dyn RowGroupReader + 'a>,
}

impl Group<'_> {
    /// Decodes column chunk `leaf`.
    fn read(&self, name: &str, leaf: &Leaf) -> Result<Data, DataError> {
        let chunk = || -> Result<Data, String> {
            let pages = self
                .reader
                .get_column_page_reader(leaf.index)
                .map_err(|e| e.to_string())?;
            let pages = Box::new(CheckedPages {
                inner: pages,
                physical: leaf.physical,
                dictionary: false,
            });
            let (rows, def) = (self.rows, leaf.max_def);
            Ok(match get_column_reader(leaf.descr.clone(), pages) {
                ColumnReader::Int32ColumnReader(r) => Data::I32(read_chunk(r, rows, def)?),
                ColumnReader::Int64ColumnReader(r) => Data::I64(read_chunk(r, rows, def)?),
                ColumnReader::Int96ColumnReader(r) => Data::I96(read_chunk(r, rows, def)?),
                ColumnReader::FloatColumnReader(r) => Data::F32(read_chunk(r, rows, def)?),
                ColumnReader::DoubleColumnReader(r) => Data::F64(read_chunk(r, rows, def)?),
                ColumnReader::ByteArrayColumnReader(r) => Data::Bytes(read_chunk(r, rows, def)?),
                ColumnReader::BoolColumnReader(_)
                | ColumnReader::FixedLenByteArrayColumnReader(_) => {
                    return Err(format!("{} columns are not read", leaf.describe()));
                }
            })
        };
        // The pages are checked for the malformations known to panic in the parquet crate's
        // decoders (see CheckedPages); a panic on another one is still this file's error.
        let decoded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(chunk)).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("malformed data");
                Err(format!("the decoder failed: {what}"))
            });
        decoded.map_err(|m| {
            data_err(
                self.source,
                format!(
                    "column {name:?}, data rows {}..{}: cannot decode the column chunk: {m}",
                    self.first_row + 1,
                    self.first_row + self.rows
                ),
            )
        })
    }

    /// The error for row `k` of the group, column `name`.
    fn bad(&self, k: usize, name: &str, msg: &str) -> DataError {
        data_err(
            self.source,
            format!(
                "data row {}, column {name:?}: {msg}",
                self.first_row + k + 1
            ),
        )
    }
}

/// Appends each row's series index.
fn read_ids(leaf: &Leaf, data: &Data, ids: &mut Ids, series: &mut Vec<u32>) -> Result<(), RowErr> {
    let null = |k| (k, "expected a series id, found null".to_owned());
    let signed = leaf.signed();
    match data {
        Data::Bytes(c) => {
            for (k, b) in c.rows().enumerate() {
                let b = b.ok_or_else(|| null(k))?;
                let id = std::str::from_utf8(b.data())
                    .map_err(|_| (k, "expected a UTF-8 string id, found invalid UTF-8".into()))?;
                if id.is_empty() {
                    return Err((k, "expected a series id, found an empty string".into()));
                }
                series.push(ids.intern(id));
            }
        }
        Data::I32(c) => {
            for (k, x) in c.rows().enumerate() {
                let x = *x.ok_or_else(|| null(k))?;
                let id = if signed {
                    x.to_string()
                } else {
                    (x as u32).to_string()
                };
                series.push(ids.intern(&id));
            }
        }
        Data::I64(c) => {
            for (k, x) in c.rows().enumerate() {
                let x = *x.ok_or_else(|| null(k))?;
                let id = if signed {
                    x.to_string()
                } else {
                    (x as u64).to_string()
                };
                series.push(ids.intern(&id));
            }
        }
        _ => unreachable!("id column types are checked by plan()"),
    }
    Ok(())
}

/// Appends each row's time.
fn read_times(
    (leaf, conv): (&Leaf, TimeConv),
    data: &Data,
    times: &mut Vec<f64>,
    text: &mut TextTime,
) -> Result<(), RowErr> {
    let null = |k| (k, "expected a time, found null".to_owned());
    let mut put = |k: usize, t: Option<f64>| -> Result<(), RowErr> {
        let t = t.ok_or_else(|| null(k))?;
        if !t.is_finite() {
            return Err((k, format!("expected a finite time, found {t}")));
        }
        times.push(t);
        Ok(())
    };
    match (conv, data) {
        // Whole seconds, then the fraction: nanoseconds since 1970 do not fit an f64 exactly.
        (TimeConv::Timestamp(per), Data::I64(c)) => {
            for (k, t) in c.rows().enumerate() {
                put(
                    k,
                    t.map(|&t| t.div_euclid(per) as f64 + t.rem_euclid(per) as f64 / per as f64),
                )?;
            }
        }
        (TimeConv::Text, Data::Bytes(c)) => {
            for (k, b) in c.rows().enumerate() {
                let b = b.ok_or_else(|| null(k))?;
                let s = std::str::from_utf8(b.data())
                    .map_err(|_| (k, "expected a UTF-8 string, found invalid UTF-8".into()))?;
                put(k, Some(text.parse(s.trim()).map_err(|m| (k, m))?))?;
            }
        }
        (TimeConv::Date, _) => {
            for (k, d) in data.numbers(true).enumerate() {
                put(k, d.map(|d| d * DAY))?;
            }
        }
        _ => {
            for (k, x) in data.numbers(leaf.signed()).enumerate() {
                put(k, x)?;
            }
        }
    }
    Ok(())
}

/// Seconds since the Unix epoch of a legacy int96 timestamp.
fn int96_seconds(t: &Int96) -> f64 {
    let d = t.data();
    let nanos = ((u64::from(d[1]) << 32) | u64::from(d[0])) as i64;
    let day = i64::from(d[2] as i32);
    ((day - JULIAN_UNIX_EPOCH) * 86_400 + nanos.div_euclid(1_000_000_000)) as f64
        + nanos.rem_euclid(1_000_000_000) as f64 / 1e9
}

/// Writes value column `j` (of `f`) of the group's rows into `out` (`[rows, f]`); a null or NaN
/// is `f32::NAN` under [`Missing::Keep`] and an error under [`Missing::Error`].
fn read_values(
    leaf: &Leaf,
    data: &Data,
    missing: Missing,
    j: usize,
    f: usize,
    out: &mut [f32],
) -> Result<(), RowErr> {
    let mut put = |k: usize, v: Option<f64>| -> Result<(), RowErr> {
        let v = match v {
            Some(x) if !x.is_nan() => value_from_f64(x).map_err(|m| (k, m))?,
            _ if missing == Missing::Keep => f32::NAN,
            found => {
                let what = if found.is_some() { "NaN" } else { "null" };
                return Err((
                    k,
                    format!(
                        "expected a number, found {what} (a missing value, refused by --missing error)"
                    ),
                ));
            }
        };
        out[k * f + j] = v;
        Ok(())
    };
    for (k, v) in data.numbers(leaf.signed()).enumerate() {
        put(k, v)?;
    }
    Ok(())
}

/// Checks that the file ends with the Parquet magic, for a clear message on other files;
/// returns the file's length.
fn check_magic(path: &Path, source: &str, file: &mut File) -> Result<u64, DataError> {
    let io = |e| DataError::io(path, e);
    let len = file.metadata().map_err(io)?.len();
    let mut tail = [0u8; 4];
    if len >= 12 {
        file.seek(SeekFrom::Start(len - 4)).map_err(io)?;
        file.read_exact(&mut tail).map_err(io)?;
    }
    match &tail {
        b"PAR1" => Ok(len),
        b"PARE" => Err(data_err(
            source,
            "the Parquet file is encrypted (its footer ends with PARE); encrypted files are not supported",
        )),
        _ => Err(data_err(
            source,
            format!(
                "not a Parquet file: expected the magic bytes PAR1 at its end ({len} bytes; a truncated file, or another format)"
            ),
        )),
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
    let file_len = check_magic(path, source, &mut file)?;
    let reader = SerializedFileReader::new(file).map_err(|e| {
        data_err(
            source,
            format!("cannot read the Parquet footer (file metadata): {e}"),
        )
    })?;
    let meta = reader.metadata();
    let plan = plan(source, meta.file_metadata().schema_descr(), spec)?;
    check_footer(source, meta, &plan, file_len, max_bytes)?;

    let stem = file_series_name(path);
    let mut ids = Ids::default();
    let mut series = Vec::new();
    let mut times = Vec::new();
    let mut values = Vec::new();
    let mut text_time = TextTime::default();
    let f = plan.values.len();
    let mut first_row = 0usize;
    for (g, group) in meta.row_groups().iter().enumerate() {
        let rows = group.num_rows() as usize; // checked by check_footer()
        let group = Group {
            source,
            first_row,
            rows,
            reader: reader.get_row_group(g).map_err(|e| {
                data_err(source, format!("row group {}: cannot read it: {e}", g + 1))
            })?,
        };
        // Every chunk is decoded (so its pages really hold the group's rows) before the
        // table grows by the row count the footer states.
        let id = plan
            .id
            .as_ref()
            .map(|(name, leaf)| group.read(name, leaf))
            .transpose()?;
        let time = plan
            .time
            .as_ref()
            .map(|(name, leaf, _)| group.read(name, leaf))
            .transpose()?;
        let cols = plan
            .values
            .iter()
            .map(|(name, leaf)| group.read(name, leaf))
            .collect::<Result<Vec<_>, _>>()?;

        // Each column's first bad row; the earliest is reported.
        let mut errors: Vec<(RowErr, &str)> = Vec::new();
        match (&plan.id, &id) {
            (Some((name, leaf)), Some(data)) => {
                if let Err(e) = read_ids(leaf, data, &mut ids, &mut series) {
                    errors.push((e, name));
                }
            }
            _ => series.extend(std::iter::repeat_n(ids.intern(&stem), rows)),
        }
        if let (Some((name, leaf, conv)), Some(data)) = (&plan.time, &time)
            && let Err(e) = read_times((leaf, *conv), data, &mut times, &mut text_time)
        {
            errors.push((e, name));
        }
        let base = values.len();
        values.resize(base + rows * f, 0.0);
        for (j, ((name, leaf), data)) in plan.values.iter().zip(&cols).enumerate() {
            if let Err(e) = read_values(leaf, data, spec.missing, j, f, &mut values[base..]) {
                errors.push((e, name));
            }
        }
        if let Some(((k, msg), name)) = errors.into_iter().min_by_key(|((k, _), _)| *k) {
            return Err(group.bad(k, name, &msg));
        }
        first_row += rows;
    }

    let time_kind = match plan.time {
        None => TimeKind::Index,
        Some((_, _, TimeConv::Date)) => TimeKind::Date,
        Some((_, _, TimeConv::Timestamp(_) | TimeConv::Int96)) => TimeKind::DateTime,
        Some((_, _, TimeConv::Integer | TimeConv::Float)) => TimeKind::Number,
        Some((_, _, TimeConv::Text)) => text_time.kind(),
    };
    Ok(Raw {
        ids: ids.names,
        series,
        time_kind,
        time_column: spec.time_column.clone().unwrap_or_default(),
        times,
        columns: plan.values.into_iter().map(|(name, _)| name).collect(),
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
