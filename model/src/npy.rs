//! NumPy `.npy` / `.npz` reading and writing for `f32` and `f64` arrays.
//!
//! This module owns the on-disk array format used for training data (`x`, `y`,
//! `x_val`, `y_val`, `cond`) and for prediction outputs:
//!
//! * [`parse_npy`], [`read_npy`] and [`read_npz`] read `.npy` format versions
//!   1.0, 2.0 and 3.0 holding `float32` or `float64` data in either byte order
//!   and either memory order. Every array is returned as `f32` in C
//!   (row-major) order; `float64` values that are finite but too large for
//!   `float32` are rejected, NaN and infinities are passed through unchanged.
//! * [`npy_bytes`], [`write_npy`] and [`write_npz`] write little-endian
//!   `float32` arrays in C order with a version 1.0 header whose data starts at
//!   a multiple of 64 bytes, exactly as `numpy.save` does. Files are written to
//!   a temporary file in the destination directory and renamed into place, so
//!   readers never observe a half-written file.
//!
//! The header dictionary is parsed by a small hand-written parser for the
//! Python literal subset NumPy emits (strings, integers, booleans, tuples,
//! lists and dicts); nothing in a header is ever evaluated. Sizes computed from
//! a header are checked for overflow and compared with the bytes actually
//! present before any buffer for the converted values is allocated.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use zip::CompressionMethod;
use zip::result::ZipError;
use zip::write::SimpleFileOptions;

/// The magic string every `.npy` file starts with.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Alignment of the start of the data section in files written here.
const DATA_ALIGN: usize = 64;

/// Longest excerpt of a header quoted in an error message.
const HEADER_EXCERPT: usize = 200;

/// Deepest nesting of brackets accepted in a header.
const MAX_HEADER_DEPTH: usize = 32;

/// Element type as stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit IEEE 754 float (`'<f4'` / `'>f4'`).
    F32,
    /// 64-bit IEEE 754 float (`'<f8'` / `'>f8'`), converted to `f32` on read.
    F64,
}

impl Dtype {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }

    /// NumPy's name for the type: `"float32"` or `"float64"`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An n-dimensional array read from a file, converted to f32, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Length of each axis; empty for a 0-d (scalar) array.
    pub shape: Vec<usize>,
    /// The elements in C order; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
    /// The element type the values had in the file.
    pub dtype: Dtype,
}

/// Everything that can go wrong reading or writing `.npy` / `.npz` files.
///
/// `what` fields name the array as the caller described it (an array name or
/// a file name); for entries of an `.npz` archive it is `"<archive>:<key>"`.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// A file could not be opened, read, written or renamed.
    #[error("cannot {action} \"{}\": {source}", path.display())]
    Io {
        /// What was being done, e.g. `"read"` or `"create temporary file"`.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The input does not start with the `.npy` magic string.
    #[error("\"{what}\" is not a .npy file: expected magic \\x93NUMPY, got {got}")]
    BadMagic {
        /// The array or file being read.
        what: String,
        /// The first bytes of the input, escaped.
        got: String,
    },

    /// The format version is not 1.0, 2.0 or 3.0.
    #[error(
        "array \"{what}\": unsupported .npy format version {major}.{minor} (expected 1.0, 2.0 or 3.0)"
    )]
    UnsupportedVersion {
        /// The array or file being read.
        what: String,
        /// Major version byte found.
        major: u8,
        /// Minor version byte found.
        minor: u8,
    },

    /// The input ends before the header does.
    #[error(
        "array \"{what}\": truncated .npy header: expected {expected} bytes, file has {actual}"
    )]
    TruncatedHeader {
        /// The array or file being read.
        what: String,
        /// Bytes the preamble and header need.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },

    /// The header is not a well-formed Python literal, or a value has the wrong type.
    #[error("array \"{what}\": malformed .npy header: {reason}; header: {header}")]
    BadHeader {
        /// The array or file being read.
        what: String,
        /// What was expected and what was found.
        reason: String,
        /// The header text (shortened if long).
        header: String,
    },

    /// The header is a well-formed literal but not a dict.
    #[error(
        "array \"{what}\": .npy header is not a dict: expected {{'descr': ..., 'fortran_order': ..., 'shape': ...}}, got {header}"
    )]
    HeaderNotDict {
        /// The array or file being read.
        what: String,
        /// The header text (shortened if long).
        header: String,
    },

    /// The header dict lacks one of `descr`, `fortran_order`, `shape`.
    #[error(
        "array \"{what}\": .npy header has no '{key}' key (expected 'descr', 'fortran_order' and 'shape'); header: {header}"
    )]
    MissingKey {
        /// The array or file being read.
        what: String,
        /// The missing key.
        key: &'static str,
        /// The header text (shortened if long).
        header: String,
    },

    /// The element type is not `float32` or `float64`.
    #[error(
        "array \"{what}\": unsupported dtype '{descr}' (expected float32 '<f4' or float64 '<f8')"
    )]
    UnsupportedDtype {
        /// The array or file being read.
        what: String,
        /// The `descr` value as written in the header.
        descr: String,
    },

    /// The shape's byte size does not fit in memory addresses.
    #[error(
        "array \"{what}\": shape {shape} of {dtype} is too large (its size in bytes overflows)"
    )]
    ShapeTooLarge {
        /// The array or file being read.
        what: String,
        /// The shape, formatted as a Python tuple.
        shape: String,
        /// The element type.
        dtype: Dtype,
    },

    /// The data section is shorter or longer than the shape requires.
    #[error(
        "array \"{what}\": shape {shape} of {dtype} needs {expected} bytes of data, file has {actual}"
    )]
    DataLength {
        /// The array or file being read.
        what: String,
        /// The shape, formatted as a Python tuple.
        shape: String,
        /// The element type.
        dtype: Dtype,
        /// Bytes the shape requires.
        expected: usize,
        /// Bytes present after the header.
        actual: usize,
    },

    /// A finite `float64` value is outside the range of `float32`.
    #[error("array \"{what}\": value {value:e} at index {index} does not fit in float32")]
    ValueOverflow {
        /// The array or file being read.
        what: String,
        /// The offending value.
        value: f64,
        /// Its flat index in C order.
        index: usize,
    },

    /// An `.npz` file could not be opened as a zip archive, or an entry could not be located.
    #[error("\"{}\" is not a readable .npz (zip) archive: {source}", path.display())]
    NotZip {
        /// The archive.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: ZipError,
    },

    /// An entry of an `.npz` archive could not be decompressed.
    #[error("cannot read entry \"{entry}\" of \"{}\": {source}", path.display())]
    NpzEntryRead {
        /// The archive.
        path: PathBuf,
        /// The entry name.
        entry: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An `.npz` archive holds an entry whose name does not end in `.npy`.
    #[error("\"{}\": entry \"{entry}\" is not a .npy array (expected only \"<name>.npy\" entries)", path.display())]
    NpzEntryNotNpy {
        /// The archive.
        path: PathBuf,
        /// The entry name.
        entry: String,
    },

    /// An `.npz` archive holds two entries with the same key.
    #[error("\"{}\": array \"{key}\" appears more than once", path.display())]
    NpzDuplicate {
        /// The archive.
        path: PathBuf,
        /// The repeated key.
        key: String,
    },

    /// An array name passed to [`write_npz`] cannot be used as an entry name.
    #[error("cannot write \"{}\": invalid array name \"{name}\" ({reason})", path.display())]
    InvalidName {
        /// The archive being written.
        path: PathBuf,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The data passed to a writer does not match its shape.
    #[error("cannot write array \"{what}\": shape {shape} needs {expected} values, got {actual}")]
    ShapeMismatch {
        /// The array or file being written.
        what: String,
        /// The shape, formatted as a Python tuple.
        shape: String,
        /// Values the shape requires (`None` if the product overflows).
        expected: ExpectedCount,
        /// Values given.
        actual: usize,
    },

    /// The zip library failed while writing an `.npz` archive.
    #[error("cannot write .npz archive \"{}\": {source}", path.display())]
    ZipWrite {
        /// The archive being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: ZipError,
    },
}

/// Number of elements a shape describes, as reported by [`NpyError::ShapeMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedCount {
    /// The product of the dimensions.
    Exactly(usize),
    /// The product of the dimensions does not fit in `usize`.
    Overflow,
}

impl fmt::Display for ExpectedCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedCount::Exactly(n) => write!(f, "{n}"),
            ExpectedCount::Overflow => f.write_str("more than usize::MAX"),
        }
    }
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Parses the bytes of a complete `.npy` file.
///
/// `what` names the array in error messages (e.g. `"x"` or `"inputs.npy"`).
/// Accepts format versions 1.0–3.0, `float32`/`float64` in little, big or
/// native byte order, and C or Fortran order; returns the values as `f32` in
/// C order. The data section must be exactly as long as the shape requires.
pub fn parse_npy(bytes: &[u8], what: &str) -> Result<Array, NpyError> {
    let (header, data) = split_header(bytes, what)?;
    let meta = parse_header(&header, what)?;
    let dtype = meta.dtype;

    let Some(nbytes) = byte_size(&meta.shape, dtype.size()) else {
        return Err(NpyError::ShapeTooLarge {
            what: what.to_owned(),
            shape: shape_repr(&meta.shape),
            dtype,
        });
    };
    if nbytes != data.len() {
        return Err(NpyError::DataLength {
            what: what.to_owned(),
            shape: shape_repr(&meta.shape),
            dtype,
            expected: nbytes,
            actual: data.len(),
        });
    }

    let count = nbytes / dtype.size();
    let values = if meta.fortran_order && meta.shape.len() > 1 {
        let order = FortranToC::new(&meta.shape);
        decode(data, dtype, meta.big_endian, count, order, what)?
    } else if dtype == Dtype::F32 {
        // Common case: a straight copy, without per-element index arithmetic.
        let chunks = data.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
        if meta.big_endian {
            chunks.map(f32::from_be_bytes).collect()
        } else {
            chunks.map(f32::from_le_bytes).collect()
        }
    } else {
        decode(data, dtype, meta.big_endian, count, 0..count, what)?
    };
    Ok(Array {
        shape: meta.shape,
        data: values,
        dtype,
    })
}

/// Reads a `.npy` file; errors name the file by its path.
pub fn read_npy(path: &Path) -> Result<Array, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    parse_npy(&bytes, &path.display().to_string())
}

/// Reads every array of an `.npz` archive (from `numpy.savez` or
/// `numpy.savez_compressed`), keyed by entry name without the `.npy` suffix.
///
/// Every entry must be a `.npy` file; errors about an entry's contents name it
/// as `"<archive path>:<key>"`.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>, NpyError> {
    let file = File::open(path).map_err(|source| NpyError::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    let not_zip = |source| NpyError::NotZip {
        path: path.to_owned(),
        source,
    };
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file)).map_err(not_zip)?;

    let mut arrays = BTreeMap::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(not_zip)?;
        let name = entry.name().to_owned();
        let Some(key) = name.strip_suffix(".npy") else {
            return Err(NpyError::NpzEntryNotNpy {
                path: path.to_owned(),
                entry: name,
            });
        };
        if entry.is_dir() || key.is_empty() {
            return Err(NpyError::NpzEntryNotNpy {
                path: path.to_owned(),
                entry: name,
            });
        }
        let key = key.to_owned();

        // The declared size is untrusted: use it only as a bounded capacity hint.
        let hint = usize::try_from(entry.size()).unwrap_or(0).min(1 << 26);
        let mut bytes = Vec::with_capacity(hint);
        entry
            .read_to_end(&mut bytes)
            .map_err(|source| NpyError::NpzEntryRead {
                path: path.to_owned(),
                entry: name.clone(),
                source,
            })?;

        let what = format!("{}:{key}", path.display());
        let array = parse_npy(&bytes, &what)?;
        if arrays.contains_key(&key) {
            return Err(NpyError::NpzDuplicate {
                path: path.to_owned(),
                key,
            });
        }
        arrays.insert(key, array);
    }
    Ok(arrays)
}

/// Splits a `.npy` file into its header text and its data section.
fn split_header<'a>(bytes: &'a [u8], what: &str) -> Result<(String, &'a [u8]), NpyError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC[..] {
        return Err(NpyError::BadMagic {
            what: what.to_owned(),
            got: escape_bytes(&bytes[..bytes.len().min(8)]),
        });
    }
    let truncated = |expected: usize| NpyError::TruncatedHeader {
        what: what.to_owned(),
        expected,
        actual: bytes.len(),
    };
    let (Some(&major), Some(&minor)) = (bytes.get(6), bytes.get(7)) else {
        return Err(truncated(10));
    };
    let (prefix, header_len) = match (major, minor) {
        (1, 0) => {
            let Some(len) = bytes.get(8..10) else {
                return Err(truncated(10));
            };
            (10, usize::from(u16::from_le_bytes([len[0], len[1]])))
        }
        (2 | 3, 0) => {
            let Some(len) = bytes.get(8..12) else {
                return Err(truncated(12));
            };
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
            // A header longer than the address space cannot be present in `bytes`.
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            (12, len)
        }
        _ => {
            return Err(NpyError::UnsupportedVersion {
                what: what.to_owned(),
                major,
                minor,
            });
        }
    };
    let end = prefix + header_len.min(usize::MAX - prefix);
    let Some(raw) = bytes.get(prefix..end) else {
        return Err(truncated(end));
    };
    let header = if major == 3 {
        match std::str::from_utf8(raw) {
            Ok(text) => text.to_owned(),
            Err(err) => {
                return Err(NpyError::BadHeader {
                    what: what.to_owned(),
                    reason: format!("version 3.0 header is not valid UTF-8 ({err})"),
                    header: excerpt(&String::from_utf8_lossy(raw)),
                });
            }
        }
    } else {
        // Versions 1.0 and 2.0 are latin-1, where every byte is its own code point.
        raw.iter().map(|&b| char::from(b)).collect()
    };
    Ok((header, &bytes[end..]))
}

/// The three facts a `.npy` header provides.
#[derive(Debug)]
struct HeaderMeta {
    dtype: Dtype,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Interprets the header dict.
fn parse_header(header: &str, what: &str) -> Result<HeaderMeta, NpyError> {
    let bad = |reason: String| NpyError::BadHeader {
        what: what.to_owned(),
        reason,
        header: excerpt(header),
    };
    let value = Parser::new(header).parse_document().map_err(bad)?;
    let Value::Dict(entries) = value.kind else {
        return Err(NpyError::HeaderNotDict {
            what: what.to_owned(),
            header: excerpt(header),
        });
    };
    let get = |key: &'static str| {
        // Python keeps the last of repeated keys.
        entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| NpyError::MissingKey {
                what: what.to_owned(),
                key,
                header: excerpt(header),
            })
    };
    let descr = get("descr")?;
    let fortran_order = get("fortran_order")?;
    let shape = get("shape")?;

    let (dtype, big_endian) = match &descr.kind {
        Value::Str(s) => parse_descr(s).ok_or_else(|| NpyError::UnsupportedDtype {
            what: what.to_owned(),
            descr: s.clone(),
        })?,
        _ => {
            return Err(NpyError::UnsupportedDtype {
                what: what.to_owned(),
                descr: descr.source.clone(),
            });
        }
    };

    let fortran_order = match fortran_order.kind {
        Value::Bool(b) => b,
        _ => {
            return Err(bad(format!(
                "'fortran_order' must be True or False, got {}",
                fortran_order.source
            )));
        }
    };

    let (Value::Tuple(dims) | Value::List(dims)) = &shape.kind else {
        return Err(bad(format!(
            "'shape' must be a tuple of non-negative integers, got {}",
            shape.source
        )));
    };
    let mut out = Vec::with_capacity(dims.len());
    for dim in dims {
        let parsed = match &dim.kind {
            Value::Int {
                negative: false,
                digits,
            } => digits.parse::<usize>().ok(),
            _ => None,
        };
        match parsed {
            Some(n) => out.push(n),
            None => {
                return Err(bad(format!(
                    "'shape' must be a tuple of non-negative integers that fit in usize, got {}",
                    shape.source
                )));
            }
        }
    }

    Ok(HeaderMeta {
        dtype,
        big_endian,
        fortran_order,
        shape: out,
    })
}

/// Maps a `descr` string to an element type and byte order (`true` = big-endian).
fn parse_descr(descr: &str) -> Option<(Dtype, bool)> {
    let native_big = cfg!(target_endian = "big");
    let (big_endian, code) = match descr.as_bytes().first()? {
        b'<' => (false, &descr[1..]),
        b'>' => (true, &descr[1..]),
        // '|' ("not applicable") never appears for floats, but NumPy accepts it as native.
        b'=' | b'|' => (native_big, &descr[1..]),
        _ => (native_big, descr),
    };
    let dtype = match code {
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        _ => return None,
    };
    Some((dtype, big_endian))
}

/// Bytes needed by `shape` with elements of `item` bytes, or `None` if that
/// overflows `isize` (the largest possible allocation). As in NumPy, the
/// non-zero dimensions must multiply without overflow even when another
/// dimension is zero.
fn byte_size(shape: &[usize], item: usize) -> Option<usize> {
    let mut total = item;
    let mut zero = false;
    for &dim in shape {
        if dim == 0 {
            zero = true;
        } else {
            total = total.checked_mul(dim)?;
        }
    }
    if isize::try_from(total).is_err() {
        return None;
    }
    Some(if zero { 0 } else { total })
}

/// Number of elements in `shape`, if it fits in `usize`.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Converts the data section to `f32`, visiting source elements in the order
/// given by `order` (one source index per output element).
fn decode(
    data: &[u8],
    dtype: Dtype,
    big_endian: bool,
    count: usize,
    order: impl Iterator<Item = usize>,
    what: &str,
) -> Result<Vec<f32>, NpyError> {
    let mut out = Vec::with_capacity(count);
    match dtype {
        Dtype::F32 => {
            for src in order {
                let at = src * 4;
                let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
                out.push(if big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                });
            }
        }
        Dtype::F64 => {
            for src in order {
                let at = src * 8;
                let mut b = [0u8; 8];
                b.copy_from_slice(&data[at..at + 8]);
                let wide = if big_endian {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                };
                let narrow = wide as f32;
                if narrow.is_infinite() && wide.is_finite() {
                    return Err(NpyError::ValueOverflow {
                        what: what.to_owned(),
                        value: wide,
                        index: out.len(),
                    });
                }
                out.push(narrow);
            }
        }
    }
    Ok(out)
}

/// Iterates, in C order of the logical array, over the flat indices of the
/// same elements in a Fortran-ordered buffer of the given shape.
#[derive(Debug)]
struct FortranToC {
    shape: Vec<usize>,
    /// Fortran strides in elements: 1, d0, d0*d1, ...
    strides: Vec<usize>,
    /// Current multi-index (C order: last axis fastest).
    index: Vec<usize>,
    /// Source offset of `index`.
    offset: usize,
    remaining: usize,
}

impl FortranToC {
    /// Callers guarantee the element count fits in `usize`.
    fn new(shape: &[usize]) -> Self {
        let mut strides = Vec::with_capacity(shape.len());
        let mut stride = 1usize;
        for &dim in shape {
            strides.push(stride);
            stride = stride.saturating_mul(dim);
        }
        FortranToC {
            shape: shape.to_vec(),
            strides,
            index: vec![0; shape.len()],
            offset: 0,
            remaining: element_count(shape).unwrap_or(0),
        }
    }
}

impl Iterator for FortranToC {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.offset;
        // Advance the odometer, last axis fastest.
        for axis in (0..self.shape.len()).rev() {
            self.index[axis] += 1;
            self.offset += self.strides[axis];
            if self.index[axis] < self.shape[axis] {
                break;
            }
            self.offset -= self.strides[axis] * self.index[axis];
            self.index[axis] = 0;
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

// ---------------------------------------------------------------------------
// Header literal parser
// ---------------------------------------------------------------------------

/// A parsed Python literal together with the text it was parsed from.
#[derive(Debug)]
struct Node {
    kind: Value,
    source: String,
}

/// The Python literal forms that appear in `.npy` headers.
#[derive(Debug)]
enum Value {
    Str(String),
    Int { negative: bool, digits: String },
    Bool(bool),
    None,
    Tuple(Vec<Node>),
    List(Vec<Node>),
    Dict(Vec<(String, Node)>),
}

/// Recursive-descent parser over the header text.
#[derive(Debug)]
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser {
            text,
            pos: 0,
            depth: 0,
        }
    }

    /// Parses one literal followed only by whitespace.
    fn parse_document(&mut self) -> Result<Node, String> {
        let node = self.parse_value()?;
        self.skip_ws();
        if self.pos < self.text.len() {
            return Err(format!(
                "unexpected text after the header dict at offset {}: {}",
                self.pos,
                self.rest_excerpt()
            ));
        }
        Ok(node)
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() || c == '\0' {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
    }

    fn rest_excerpt(&self) -> String {
        let rest: String = self.text[self.pos..].chars().take(20).collect();
        if rest.is_empty() {
            "end of header".to_owned()
        } else {
            format!("'{}'", rest.escape_debug())
        }
    }

    fn expected(&self, what: &str) -> String {
        format!(
            "expected {what} at offset {}, found {}",
            self.pos,
            self.rest_excerpt()
        )
    }

    fn parse_value(&mut self) -> Result<Node, String> {
        self.skip_ws();
        let start = self.pos;
        let kind = match self.peek() {
            Some('\'' | '"') => Value::Str(self.parse_string()?),
            Some('(') => Value::Tuple(self.parse_sequence('(', ')')?),
            Some('[') => Value::List(self.parse_sequence('[', ']')?),
            Some('{') => self.parse_dict()?,
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => self.parse_int()?,
            Some(c) if c.is_ascii_alphabetic() => {
                let word = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
                match word {
                    "True" => Value::Bool(true),
                    "False" => Value::Bool(false),
                    "None" => Value::None,
                    _ => {
                        self.pos = start;
                        return Err(self.expected("a Python literal"));
                    }
                }
            }
            _ => return Err(self.expected("a Python literal")),
        };
        Ok(Node {
            kind,
            source: self.text[start..self.pos].to_owned(),
        })
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if !keep(c) {
                break;
            }
            self.pos += c.len_utf8();
        }
        &self.text[start..self.pos]
    }

    fn parse_string(&mut self) -> Result<String, String> {
        let start = self.pos;
        let Some(quote) = self.bump() else {
            return Err(self.expected("a string"));
        };
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    self.pos = start;
                    return Err(self.expected("a closed string"));
                }
                Some(c) if c == quote => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('0') => out.push('\0'),
                    Some(c) => out.push(c),
                    None => {
                        self.pos = start;
                        return Err(self.expected("a closed string"));
                    }
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn parse_int(&mut self) -> Result<Value, String> {
        let negative = match self.peek() {
            Some('-') => {
                self.pos += 1;
                true
            }
            Some('+') => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        let digits = self.take_while(|c| c.is_ascii_digit() || c == '_');
        let digits: String = digits.chars().filter(|&c| c != '_').collect();
        if digits.is_empty() {
            return Err(self.expected("digits"));
        }
        // Python 2 wrote long integers with an 'L' suffix.
        if matches!(self.peek(), Some('L' | 'l')) {
            self.pos += 1;
        }
        Ok(Value::Int { negative, digits })
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_HEADER_DEPTH {
            return Err(format!(
                "brackets nested more than {MAX_HEADER_DEPTH} deep at offset {}",
                self.pos
            ));
        }
        Ok(())
    }

    /// Parses `(a, b, ...)` or `[a, b, ...]`, allowing a trailing comma.
    fn parse_sequence(&mut self, open: char, close: char) -> Result<Vec<Node>, String> {
        self.enter()?;
        self.pos += open.len_utf8();
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += close.len_utf8();
                break;
            }
            items.push(self.parse_value()?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(self.expected(&format!("',' or '{close}'"))),
            }
        }
        self.depth -= 1;
        Ok(items)
    }

    /// Parses `{'key': value, ...}` with string keys, allowing a trailing comma.
    fn parse_dict(&mut self) -> Result<Value, String> {
        self.enter()?;
        self.pos += 1;
        let mut entries = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                Some('}') => {
                    self.pos += 1;
                    break;
                }
                Some('\'' | '"') => {}
                _ => return Err(self.expected("a string key or '}'")),
            }
            let key = self.parse_string()?;
            self.skip_ws();
            if self.peek() != Some(':') {
                return Err(self.expected("':'"));
            }
            self.pos += 1;
            let value = self.parse_value()?;
            entries.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {}
                _ => return Err(self.expected("',' or '}'")),
            }
        }
        self.depth -= 1;
        Ok(Value::Dict(entries))
    }
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Serialises a little-endian `float32` C-order array as a complete `.npy`
/// file: version 1.0 header (`'<f4'`, `fortran_order: False`), padded with
/// spaces and a final `'\n'` so the data starts at a multiple of 64 bytes.
/// (Only a header too long for version 1.0, which needs thousands of axes,
/// falls back to version 2.0, as NumPy does.)
///
/// # Panics
///
/// If `data.len()` is not the product of `shape`; [`write_npy`] and
/// [`write_npz`] check this and return [`NpyError::ShapeMismatch`] instead.
pub fn npy_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert!(
        element_count(shape) == Some(data.len()),
        "npy_bytes: shape {} does not match {} values",
        shape_repr(shape),
        data.len()
    );
    let header = header_bytes(shape);
    let mut out = Vec::with_capacity(header.len() + data.len() * 4);
    out.extend_from_slice(&header);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a little-endian `float32` C-order `.npy` file (see [`npy_bytes`]),
/// via a temporary file in the same directory that is renamed into place.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    check_shape(&path.display().to_string(), shape, data)?;
    write_atomically(path, |file, tmp| {
        let mut writer = BufWriter::new(file);
        write_array(&mut writer, shape, data)
            .and_then(|()| writer.flush())
            .map_err(|source| NpyError::Io {
                action: "write",
                path: tmp.to_owned(),
                source,
            })
    })
}

/// Writes an `.npz` archive with one deflate-compressed entry `"<name>.npy"`
/// per `(name, shape, data)`, readable by `numpy.load` and [`read_npz`].
///
/// Names must be non-empty, unique and free of path separators. The archive
/// is written to a temporary file in the same directory, then renamed.
pub fn write_npz(path: &Path, arrays: &[(&str, &[usize], &[f32])]) -> Result<(), NpyError> {
    let mut seen = std::collections::BTreeSet::new();
    for &(name, shape, data) in arrays {
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.contains(['/', '\\', '\0']) {
            Some("contains a path separator or NUL")
        } else if !seen.insert(name) {
            Some("used twice")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(NpyError::InvalidName {
                path: path.to_owned(),
                name: name.to_owned(),
                reason,
            });
        }
        check_shape(&format!("{}:{name}", path.display()), shape, data)?;
    }

    write_atomically(path, |file, tmp| {
        let zip_err = |source| NpyError::ZipWrite {
            path: tmp.to_owned(),
            source,
        };
        let io_err = |source| NpyError::Io {
            action: "write",
            path: tmp.to_owned(),
            source,
        };
        let mut zip = zip::ZipWriter::new(BufWriter::new(file));
        for &(name, shape, data) in arrays {
            let size = header_bytes(shape).len() as u64 + data.len() as u64 * 4;
            let options = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Deflated)
                .large_file(size >= u64::from(u32::MAX));
            zip.start_file(format!("{name}.npy"), options)
                .map_err(zip_err)?;
            write_array(&mut zip, shape, data).map_err(io_err)?;
        }
        let mut writer = zip.finish().map_err(zip_err)?;
        writer.flush().map_err(io_err)
    })
}

/// The version 1.0 (or, if needed, 2.0) header for a `'<f4'` C-order array.
fn header_bytes(shape: &[usize]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}",
        shape_repr(shape)
    );
    // Preamble: magic, 2 version bytes, then the header length in 2 bytes
    // (version 1.0) or, for headers longer than u16::MAX, 4 bytes (2.0).
    let total_v1 = (MAGIC.len() + 4 + dict.len() + 1).next_multiple_of(DATA_ALIGN);
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    let total = match u16::try_from(total_v1 - (MAGIC.len() + 4)) {
        Ok(len) => {
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&len.to_le_bytes());
            total_v1
        }
        Err(_) => {
            let total = (MAGIC.len() + 6 + dict.len() + 1).next_multiple_of(DATA_ALIGN);
            let len = u32::try_from(total - (MAGIC.len() + 6)).unwrap_or(u32::MAX);
            out.extend_from_slice(&[2, 0]);
            out.extend_from_slice(&len.to_le_bytes());
            total
        }
    };
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Writes header and data to `w`, converting values in chunks.
fn write_array(w: &mut impl Write, shape: &[usize], data: &[f32]) -> io::Result<()> {
    w.write_all(&header_bytes(shape))?;
    let mut buf = Vec::with_capacity(4 * 4096);
    for chunk in data.chunks(4096) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Checks that `data` holds exactly the number of values `shape` describes.
fn check_shape(what: &str, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    match element_count(shape) {
        Some(n) if n == data.len() => Ok(()),
        count => Err(NpyError::ShapeMismatch {
            what: what.to_owned(),
            shape: shape_repr(shape),
            expected: count.map_or(ExpectedCount::Overflow, ExpectedCount::Exactly),
            actual: data.len(),
        }),
    }
}

/// Distinguishes temporary files created concurrently by one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a temporary file next to `path`, lets `fill` write it, syncs it and
/// renames it over `path`. The temporary file is removed on any failure.
fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&File, &Path) -> Result<(), NpyError>,
) -> Result<(), NpyError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if file_name.is_empty() {
        return Err(NpyError::Io {
            action: "write",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
        });
    }
    let tmp = path.with_file_name(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = File::create(&tmp).map_err(|source| NpyError::Io {
        action: "create temporary file",
        path: tmp.clone(),
        source,
    })?;
    let result = fill(&file, &tmp)
        .and_then(|()| {
            file.sync_all().map_err(|source| NpyError::Io {
                action: "sync",
                path: tmp.clone(),
                source,
            })
        })
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path).map_err(|source| NpyError::Io {
                action: "rename temporary file into place as",
                path: path.to_owned(),
                source,
            })
        });
    if result.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------
// Formatting helpers
// ---------------------------------------------------------------------------

/// Formats a shape as a Python tuple: `()`, `(5,)`, `(2, 3)`.
fn shape_repr(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_owned(),
        [n] => format!("({n},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", dims.join(", "))
        }
    }
}

/// Escapes bytes the way Python's `repr(bytes)` does, in double quotes.
fn escape_bytes(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty file".to_owned();
    }
    let escaped: String = bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    format!("\"{escaped}\"")
}

/// A header shortened for inclusion in an error message.
fn excerpt(header: &str) -> String {
    let trimmed = header.trim_end();
    let escape = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    if trimmed.chars().count() <= HEADER_EXCERPT {
        escape(trimmed)
    } else {
        let head: String = trimmed.chars().take(HEADER_EXCERPT).collect();
        format!("{}... ({} bytes)", escape(&head), header.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "npy-test-{tag}-{}-{}",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Builds a `.npy` file with the given version, header text and data.
    fn raw_npy(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(major);
        out.push(0);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn le_f32(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn be_f32(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    fn le_f64(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn be_f64(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    fn err(bytes: &[u8], what: &str) -> String {
        match parse_npy(bytes, what) {
            Ok(a) => panic!("expected an error, got {a:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn arange(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    // ----- writing -----------------------------------------------------------

    #[test]
    fn npy_bytes_header_layout() {
        let bytes = npy_bytes(&[10, 96, 2], &vec![0.0; 1920]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        let data_start = 10 + header_len;
        assert_eq!(data_start % 64, 0);
        assert_eq!(bytes.len(), data_start + 1920 * 4);
        let header = std::str::from_utf8(&bytes[10..data_start]).expect("ascii header");
        assert!(
            header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (10, 96, 2), }")
        );
        assert!(header.ends_with('\n'));
        assert!(header[..header.len() - 1].trim_end().ends_with('}'));
    }

    #[test]
    fn npy_bytes_shape_repr() {
        let header = |shape: &[usize], n: usize| {
            let b = npy_bytes(shape, &vec![1.0; n]);
            String::from_utf8_lossy(&b[10..]).into_owned()
        };
        assert!(header(&[], 1).contains("'shape': (), }"));
        assert!(header(&[5], 5).contains("'shape': (5,), }"));
        assert!(header(&[2, 3], 6).contains("'shape': (2, 3), }"));
        assert!(header(&[0, 96, 2], 0).contains("'shape': (0, 96, 2), }"));
    }

    #[test]
    fn npy_bytes_falls_back_to_version_2_for_huge_headers() {
        let shape = vec![1usize; 30_000];
        let bytes = npy_bytes(&shape, &[7.0]);
        assert_eq!(&bytes[6..8], &[2, 0]);
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!((12 + len) % 64, 0);
        let a = parse_npy(&bytes, "deep").expect("parse");
        assert_eq!(a.shape, shape);
        assert_eq!(a.data, vec![7.0]);
    }

    #[test]
    #[should_panic(expected = "does not match")]
    fn npy_bytes_panics_on_shape_mismatch() {
        let _ = npy_bytes(&[2, 3], &[1.0; 5]);
    }

    #[test]
    fn round_trip_in_memory() {
        let cases: Vec<Vec<usize>> = vec![
            vec![],
            vec![0],
            vec![5],
            vec![2, 3],
            vec![10, 96, 2],
            vec![0, 96, 2],
            vec![3, 0],
            vec![2, 1, 3, 1, 2],
        ];
        for shape in cases {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 5.0).collect();
            let a = parse_npy(&npy_bytes(&shape, &data), "x").expect("parse");
            assert_eq!(a.shape, shape);
            assert_eq!(a.data, data);
            assert_eq!(a.dtype, Dtype::F32);
        }
    }

    #[test]
    fn round_trip_preserves_special_values() {
        let data = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            f32::MIN_POSITIVE,
            f32::MAX,
            1e-45,
        ];
        let a = parse_npy(&npy_bytes(&[7], &data), "x").expect("parse");
        for (got, want) in a.data.iter().zip(&data) {
            assert_eq!(got.to_bits(), want.to_bits());
        }
    }

    #[test]
    fn round_trip_files() {
        let dir = TempDir::new("npy");
        for shape in [vec![], vec![4], vec![2, 3, 4], vec![0, 96, 2]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 - 1.5).collect();
            let path = dir.path("out.npy");
            write_npy(&path, &shape, &data).expect("write");
            let a = read_npy(&path).expect("read");
            assert_eq!(a.shape, shape);
            assert_eq!(a.data, data);
        }
        // Only the final file remains: no temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.npy")]);
    }

    #[test]
    fn write_npy_overwrites_existing_file() {
        let dir = TempDir::new("overwrite");
        let path = dir.path("p.npy");
        write_npy(&path, &[3], &[1.0, 2.0, 3.0]).expect("write");
        write_npy(&path, &[1], &[9.0]).expect("rewrite");
        let a = read_npy(&path).expect("read");
        assert_eq!((a.shape, a.data), (vec![1], vec![9.0]));
    }

    #[test]
    fn write_npy_rejects_shape_mismatch() {
        let dir = TempDir::new("mismatch");
        let path = dir.path("p.npy");
        let e = write_npy(&path, &[2, 3], &[1.0; 5]).expect_err("mismatch");
        let msg = e.to_string();
        assert!(msg.contains("shape (2, 3) needs 6 values, got 5"), "{msg}");
        assert!(msg.contains("p.npy"), "{msg}");
        assert!(!path.exists());

        let e = write_npy(&path, &[usize::MAX, 2], &[]).expect_err("overflow");
        assert!(
            e.to_string().contains("needs more than usize::MAX values"),
            "{e}"
        );
    }

    #[test]
    fn write_reports_io_errors_with_path() {
        let dir = TempDir::new("ioerr");
        let path = dir.path("missing-dir").join("p.npy");
        let e = write_npy(&path, &[1], &[1.0]).expect_err("no such dir");
        let msg = e.to_string();
        assert!(msg.starts_with("cannot create temporary file"), "{msg}");
        assert!(msg.contains("missing-dir"), "{msg}");
        assert!(matches!(e, NpyError::Io { .. }));

        let e = write_npz(&path.with_extension("npz"), &[("x", &[1], &[1.0])])
            .expect_err("no such dir");
        assert!(e.to_string().contains("missing-dir"), "{e}");
    }

    #[test]
    fn npz_round_trip() {
        let dir = TempDir::new("npz");
        let path = dir.path("pred.npz");
        let x: Vec<f32> = (0..1920).map(|i| (i as f32).sin()).collect();
        let y = vec![0.5f32, -0.25, 8.0];
        let s = [42.0f32];
        write_npz(
            &path,
            &[
                ("x", &[10, 96, 2], &x),
                ("y", &[3], &y),
                ("scalar", &[], &s),
                ("empty", &[0, 4], &[]),
            ],
        )
        .expect("write");
        let arrays = read_npz(&path).expect("read");
        let keys: Vec<&str> = arrays.keys().map(String::as_str).collect();
        assert_eq!(keys, ["empty", "scalar", "x", "y"]);
        assert_eq!(arrays["x"].shape, [10, 96, 2]);
        assert_eq!(arrays["x"].data, x);
        assert_eq!(arrays["y"].data, y);
        assert_eq!(arrays["scalar"].shape, Vec::<usize>::new());
        assert_eq!(arrays["scalar"].data, s);
        assert_eq!(arrays["empty"].shape, [0, 4]);
        assert!(arrays["empty"].data.is_empty());

        // Entries are deflated and named "<name>.npy".
        let file = File::open(&path).expect("open");
        let mut archive = zip::ZipArchive::new(file).expect("zip");
        for i in 0..archive.len() {
            let entry = archive.by_index(i).expect("entry");
            assert!(entry.name().ends_with(".npy"));
            assert_eq!(entry.compression(), CompressionMethod::Deflated);
        }
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("pred.npz")]);
    }

    #[test]
    fn write_npz_rejects_bad_names_and_shapes() {
        let dir = TempDir::new("npzbad");
        let path = dir.path("bad.npz");
        let one = [1.0f32];
        for (name, reason) in [
            ("", "empty"),
            ("a/b", "path separator"),
            ("a\\b", "path separator"),
        ] {
            let e = write_npz(&path, &[(name, &[1], &one)]).expect_err("bad name");
            let msg = e.to_string();
            assert!(msg.contains(reason), "{msg}");
            assert!(msg.contains("bad.npz"), "{msg}");
        }
        let e = write_npz(&path, &[("x", &[1], &one), ("x", &[1], &one)]).expect_err("dup");
        assert!(
            e.to_string()
                .contains("invalid array name \"x\" (used twice)"),
            "{e}"
        );
        let e = write_npz(&path, &[("x", &[2, 2], &one)]).expect_err("shape");
        assert!(
            e.to_string()
                .contains("bad.npz:x\": shape (2, 2) needs 4 values, got 1"),
            "{e}"
        );
        assert!(!path.exists());
    }

    // ----- reading variants --------------------------------------------------

    #[test]
    fn reads_f64_and_converts() {
        let values = [0.1f64, -2.5, 1e-300, f64::NAN, f64::INFINITY, 3.0e38];
        let bytes = raw_npy(
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }\n",
            &le_f64(&values),
        );
        let a = parse_npy(&bytes, "y").expect("parse");
        assert_eq!(a.dtype, Dtype::F64);
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.data[0], 0.1f32);
        assert_eq!(a.data[1], -2.5);
        assert_eq!(a.data[2], 0.0);
        assert!(a.data[3].is_nan());
        assert_eq!(a.data[4], f32::INFINITY);
        assert_eq!(a.data[5], 3.0e38);
    }

    #[test]
    fn f64_overflow_names_array_and_index() {
        let mut values = vec![1.0f64; 24];
        values[17] = 1e300;
        let bytes = raw_npy(
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (24,), }\n",
            &le_f64(&values),
        );
        assert_eq!(
            err(&bytes, "x"),
            "array \"x\": value 1e300 at index 17 does not fit in float32"
        );
        values[17] = -3.5e38;
        let bytes = raw_npy(
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (24,), }\n",
            &le_f64(&values),
        );
        assert!(err(&bytes, "x").contains("value -3.5e38 at index 17"));
    }

    #[test]
    fn f64_overflow_index_is_c_order_for_fortran_arrays() {
        // Logical 2x3 array; element [1, 0] (C index 3) is at Fortran offset 1.
        let mut values = vec![0.0f64; 6];
        values[1] = 1e40;
        let bytes = raw_npy(
            1,
            "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }\n",
            &le_f64(&values),
        );
        assert!(err(&bytes, "x").contains("at index 3 "));
    }

    #[test]
    fn reads_big_endian() {
        let bytes = raw_npy(
            1,
            "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }\n",
            &be_f32(&[1.5, -2.0, 3.25]),
        );
        let a = parse_npy(&bytes, "x").expect("parse");
        assert_eq!(a.data, [1.5, -2.0, 3.25]);
        let bytes = raw_npy(
            1,
            "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }\n",
            &be_f64(&[0.75, -1e10]),
        );
        let a = parse_npy(&bytes, "x").expect("parse");
        assert_eq!(a.data, [0.75, -1e10]);
        assert_eq!(a.dtype, Dtype::F64);
    }

    #[test]
    fn reads_native_and_unprefixed_byte_order() {
        let native = if cfg!(target_endian = "big") {
            be_f32(&[1.0, 2.0])
        } else {
            le_f32(&[1.0, 2.0])
        };
        for descr in ["=f4", "|f4", "f4"] {
            let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}");
            let a = parse_npy(&raw_npy(1, &header, &native), "x").expect(descr);
            assert_eq!(a.data, [1.0, 2.0]);
        }
    }

    #[test]
    fn fortran_order_rank_2() {
        // Logical [[0, 1, 2], [3, 4, 5]] stored column by column.
        let bytes = raw_npy(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n",
            &le_f32(&[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]),
        );
        let a = parse_npy(&bytes, "x").expect("parse");
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.data, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn fortran_order_rank_3_and_4() {
        for shape in [vec![2usize, 3, 4], vec![3, 1, 2, 5], vec![4, 0, 2]] {
            let n: usize = shape.iter().product();
            // Fortran buffer: element at multi-index (i0, i1, ...) lives at
            // i0 + d0*(i1 + d1*(i2 + ...)); its logical C index is its value.
            let mut fortran = vec![0.0f32; n];
            for c in 0..n {
                let mut rem = c;
                let mut idx = vec![0; shape.len()];
                for axis in (0..shape.len()).rev() {
                    idx[axis] = rem % shape[axis];
                    rem /= shape[axis];
                }
                let mut f = 0;
                for axis in (0..shape.len()).rev() {
                    f = f * shape[axis] + idx[axis];
                }
                fortran[f] = c as f32;
            }
            let header = format!(
                "{{'descr': '<f4', 'fortran_order': True, 'shape': {}, }}",
                shape_repr(&shape)
            );
            let a = parse_npy(&raw_npy(1, &header, &le_f32(&fortran)), "x").expect("parse");
            assert_eq!(a.shape, shape);
            assert_eq!(a.data, arange(n));
        }
    }

    #[test]
    fn fortran_order_big_endian_f64() {
        let bytes = raw_npy(
            1,
            "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 2), }\n",
            &be_f64(&[1.0, 3.0, 2.0, 4.0]),
        );
        let a = parse_npy(&bytes, "x").expect("parse");
        assert_eq!(a.data, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn header_versions_2_and_3() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        let a = parse_npy(&raw_npy(2, header, &le_f32(&[1.0, 2.0])), "x").expect("v2");
        assert_eq!(a.data, [1.0, 2.0]);
        let a = parse_npy(&raw_npy(3, header, &le_f32(&[1.0, 2.0])), "x").expect("v3");
        assert_eq!(a.data, [1.0, 2.0]);
    }

    #[test]
    fn header_parser_tolerates_layout_variations() {
        let headers = [
            "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}",
            "{ \"descr\" : \"<f4\" ,\n 'fortran_order':False,'shape':(2,3,),}   \n",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], 'extra': None}",
            "\t{'descr':'<f4','fortran_order':False,'shape':(2,3)}\0\0",
        ];
        for header in headers {
            let a = parse_npy(&raw_npy(1, header, &le_f32(&arange(6))), "x")
                .unwrap_or_else(|e| panic!("{header:?}: {e}"));
            assert_eq!(a.shape, [2, 3]);
            assert_eq!(a.data, arange(6));
        }
        let a = parse_npy(
            &raw_npy(
                1,
                "{'descr':'<f4','fortran_order':False,'shape':()}",
                &le_f32(&[4.5]),
            ),
            "x",
        )
        .expect("0-d");
        assert!(a.shape.is_empty());
        assert_eq!(a.data, [4.5]);
        let a = parse_npy(
            &raw_npy(
                1,
                "{'descr':'<f4','fortran_order':False,'shape':(5,)}",
                &le_f32(&arange(5)),
            ),
            "x",
        )
        .expect("1-d");
        assert_eq!(a.shape, [5]);
    }

    #[test]
    fn zero_size_arrays_are_valid() {
        let bytes = raw_npy(
            1,
            "{'descr': '<f8', 'fortran_order': True, 'shape': (0, 96, 2), }\n",
            &[],
        );
        let a = parse_npy(&bytes, "x").expect("parse");
        assert_eq!(a.shape, [0, 96, 2]);
        assert!(a.data.is_empty());
    }

    // ----- errors ------------------------------------------------------------

    #[test]
    fn error_bad_magic() {
        let msg = err(b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "foo.npy");
        assert_eq!(
            msg,
            "\"foo.npy\" is not a .npy file: expected magic \\x93NUMPY, got \"PK\\x03\\x04\\x14\\x00\\x00\\x00\""
        );
        let msg = err(b"", "foo.npy");
        assert!(msg.ends_with("got an empty file"), "{msg}");
        let msg = err(b"\x93NUM", "foo.npy");
        assert!(msg.contains("got \"\\x93NUM\""), "{msg}");
    }

    #[test]
    fn error_unsupported_version() {
        let mut bytes = npy_bytes(&[1], &[1.0]);
        bytes[6] = 4;
        let msg = err(&bytes, "x");
        assert!(
            msg.contains("unsupported .npy format version 4.0 (expected 1.0, 2.0 or 3.0)"),
            "{msg}"
        );
    }

    #[test]
    fn error_truncated_header() {
        let full = npy_bytes(&[2, 3], &arange(6));
        let msg = err(&full[..7], "x");
        assert_eq!(
            msg,
            "array \"x\": truncated .npy header: expected 10 bytes, file has 7"
        );
        let msg = err(&full[..40], "x");
        assert_eq!(
            msg,
            "array \"x\": truncated .npy header: expected 128 bytes, file has 40"
        );
        let v2 = raw_npy(2, "{}", &[]);
        let msg = err(&v2[..11], "x");
        assert!(msg.contains("expected 12 bytes, file has 11"), "{msg}");
        // A version 2.0 length of nearly 4 GiB is just a truncated header.
        let mut huge = v2.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let msg = err(&huge, "x");
        assert!(
            msg.contains("truncated .npy header: expected 4294967307 bytes"),
            "{msg}"
        );
    }

    #[test]
    fn error_header_not_a_dict() {
        let bytes = raw_npy(1, "('<f4', False, (2,))", &le_f32(&[1.0, 2.0]));
        let msg = err(&bytes, "x");
        assert!(
            msg.starts_with("array \"x\": .npy header is not a dict: expected {'descr'"),
            "{msg}"
        );
        assert!(msg.ends_with("got ('<f4', False, (2,))"), "{msg}");
    }

    #[test]
    fn error_missing_key() {
        let bytes = raw_npy(1, "{'descr': '<f4', 'shape': (2,)}", &le_f32(&[1.0, 2.0]));
        let msg = err(&bytes, "x");
        assert!(
            msg.starts_with("array \"x\": .npy header has no 'fortran_order' key"),
            "{msg}"
        );
        assert!(msg.contains("{'descr': '<f4', 'shape': (2,)}"), "{msg}");
        let bytes = raw_npy(
            1,
            "{'fortran_order': False, 'shape': (2,)}",
            &le_f32(&[1.0, 2.0]),
        );
        assert!(err(&bytes, "x").contains("no 'descr' key"));
        let bytes = raw_npy(
            1,
            "{'descr': '<f4', 'fortran_order': False}",
            &le_f32(&[1.0]),
        );
        assert!(err(&bytes, "x").contains("no 'shape' key"));
    }

    #[test]
    fn error_malformed_header() {
        let cases = [
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)",
                "expected ',' or '}'",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x",
                "unexpected text after the header dict",
            ),
            (
                "{'descr': '<f4, 'fortran_order': False}",
                "expected ',' or '}'",
            ),
            (
                "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
                "'fortran_order' must be True or False, got 0",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': 2}",
                "'shape' must be a tuple",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}",
                "got (-2,)",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
                "fit in usize",
            ),
            (
                "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}",
                "expected a Python literal at offset 34, found 'Maybe",
            ),
            ("{descr: '<f4'}", "expected a string key or '}'"),
            (
                "",
                "expected a Python literal at offset 0, found end of header",
            ),
        ];
        for (header, want) in cases {
            let msg = err(&raw_npy(1, header, &le_f32(&[1.0, 2.0])), "x");
            assert!(
                msg.starts_with("array \"x\": malformed .npy header: "),
                "{msg}"
            );
            assert!(msg.contains(want), "{header:?} -> {msg}");
        }
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let msg = err(&raw_npy(1, &deep, &[]), "x");
        assert!(msg.contains("nested more than 32 deep"), "{msg}");
    }

    #[test]
    fn error_invalid_utf8_in_version_3_header() {
        let mut bytes = raw_npy(3, "{'descr': '<f4'}", &[]);
        bytes[14] = 0xff;
        let msg = err(&bytes, "x");
        assert!(
            msg.contains("version 3.0 header is not valid UTF-8"),
            "{msg}"
        );
        // Version 1.0 headers are latin-1: the same byte is just a character.
        let mut bytes = raw_npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'n': 'X'}",
            &le_f32(&[1.0]),
        );
        let at = bytes.iter().position(|&b| b == b'X').expect("marker");
        bytes[at] = 0xe9;
        assert_eq!(parse_npy(&bytes, "x").expect("latin-1").data, [1.0]);
    }

    #[test]
    fn error_unsupported_dtypes() {
        for descr in ["<i8", "<f2", "|O", "<c8", "<f16", "|u1", ""] {
            let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,)}}");
            let msg = err(&raw_npy(1, &header, &[0; 8]), "x");
            assert_eq!(
                msg,
                format!(
                    "array \"x\": unsupported dtype '{descr}' (expected float32 '<f4' or float64 '<f8')"
                )
            );
        }
        let header =
            "{'descr': [('a', '<f4'), ('b', '<f8')], 'fortran_order': False, 'shape': (1,)}";
        let msg = err(&raw_npy(1, header, &[0; 12]), "x");
        assert!(
            msg.contains("unsupported dtype '[('a', '<f4'), ('b', '<f8')]' (expected float32"),
            "{msg}"
        );
    }

    #[test]
    fn error_data_length() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 96, 2), }";
        let msg = err(&raw_npy(1, header, &[0; 7000]), "x");
        assert_eq!(
            msg,
            "array \"x\": shape (10, 96, 2) of float32 needs 7680 bytes of data, file has 7000"
        );
        let mut bytes = npy_bytes(&[10, 96, 2], &[0.0; 1920]);
        bytes.extend_from_slice(&[0; 3]);
        let msg = err(&bytes, "x");
        assert_eq!(
            msg,
            "array \"x\": shape (10, 96, 2) of float32 needs 7680 bytes of data, file has 7683"
        );
        let header = "{'descr': '>f8', 'fortran_order': False, 'shape': (), }";
        let msg = err(&raw_npy(1, header, &[0; 4]), "x");
        assert_eq!(
            msg,
            "array \"x\": shape () of float64 needs 8 bytes of data, file has 4"
        );
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }";
        let msg = err(&raw_npy(1, header, &[0; 4]), "x");
        assert!(msg.contains("needs 0 bytes of data, file has 4"), "{msg}");
    }

    #[test]
    fn error_huge_shape_does_not_overflow_or_allocate() {
        for shape in [
            "(18446744073709551615, 2)",
            "(4294967296, 4294967296)",
            "(0, 4294967296, 4294967296)",
            "(2305843009213693952,)",
        ] {
            let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let msg = err(&raw_npy(1, &header, &[0; 16]), "x");
            assert!(msg.contains("is too large"), "{shape}: {msg}");
            assert!(msg.contains(&format!("shape {shape} of float32")), "{msg}");
        }
        // Large but representable: rejected by the length check without allocating.
        let header = "{'descr': '<f8', 'fortran_order': True, 'shape': (1000000000, 1000), }";
        let msg = err(&raw_npy(1, header, &[0; 16]), "x");
        assert!(
            msg.contains("needs 8000000000000 bytes of data, file has 16"),
            "{msg}"
        );
    }

    #[test]
    fn error_read_npy_missing_file_names_path() {
        let dir = TempDir::new("missing");
        let path = dir.path("nope.npy");
        let e = read_npy(&path).expect_err("missing");
        let msg = e.to_string();
        assert!(msg.starts_with("cannot read \""), "{msg}");
        assert!(msg.contains("nope.npy"), "{msg}");
        let e = read_npz(&dir.path("nope.npz")).expect_err("missing");
        assert!(e.to_string().starts_with("cannot open \""), "{e}");
        assert!(e.to_string().contains("nope.npz"), "{e}");
    }

    #[test]
    fn error_read_npy_names_file() {
        let dir = TempDir::new("names");
        let path = dir.path("inputs.npy");
        std::fs::write(&path, b"hello world").expect("write");
        let msg = read_npy(&path).expect_err("magic").to_string();
        assert!(msg.contains("inputs.npy\" is not a .npy file"), "{msg}");
    }

    #[test]
    fn error_npz_not_zip() {
        let dir = TempDir::new("notzip");
        let path = dir.path("data.npz");
        std::fs::write(&path, npy_bytes(&[1], &[1.0])).expect("write");
        let e = read_npz(&path).expect_err("not zip");
        assert!(matches!(e, NpyError::NotZip { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("data.npz\" is not a readable .npz (zip) archive"),
            "{msg}"
        );
    }

    fn zip_with(path: &Path, entries: &[(&str, &[u8])]) {
        let file = File::create(path).expect("create");
        let mut zip = zip::ZipWriter::new(file);
        for (name, bytes) in entries {
            let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
            zip.start_file(*name, stored).expect("start");
            zip.write_all(bytes).expect("write");
        }
        zip.finish().expect("finish");
    }

    #[test]
    fn error_npz_entry_not_npy() {
        let dir = TempDir::new("npzentry");
        let path = dir.path("data.npz");
        let ok = npy_bytes(&[1], &[1.0]);
        zip_with(&path, &[("x.npy", &ok), ("notes.txt", b"hi")]);
        let msg = read_npz(&path).expect_err("txt").to_string();
        assert!(
            msg.contains("data.npz\": entry \"notes.txt\" is not a .npy array"),
            "{msg}"
        );

        zip_with(&path, &[("x.npy", b"not numpy")]);
        let msg = read_npz(&path).expect_err("magic").to_string();
        assert!(
            msg.contains("data.npz:x\" is not a .npy file: expected magic"),
            "{msg}"
        );

        let mut bad = npy_bytes(&[2], &[1.0, 2.0]);
        bad.truncate(bad.len() - 1);
        zip_with(&path, &[("y.npy", &bad)]);
        let msg = read_npz(&path).expect_err("length").to_string();
        assert!(
            msg.contains("data.npz:y\": shape (2,) of float32 needs 8 bytes of data, file has 7"),
            "{msg}"
        );
    }

    #[test]
    fn error_npz_corrupt_entry() {
        let dir = TempDir::new("npzcrc");
        let path = dir.path("data.npz");
        let payload = npy_bytes(&[16], &[3.0; 16]);
        zip_with(&path, &[("x.npy", &payload)]);
        // Flip a data byte inside the stored entry: the CRC check must fail.
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes
            .windows(4)
            .position(|w| w == 3.0f32.to_le_bytes())
            .expect("payload");
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let e = read_npz(&path).expect_err("crc");
        let msg = e.to_string();
        assert!(msg.contains("cannot read entry \"x.npy\" of \""), "{msg}");
    }

    #[test]
    fn malformed_inputs_return_errors_not_panics() {
        let fixtures: [&[u8]; 3] = [
            include_bytes!("../tests/data/numpy_fortran_f4.npy"),
            include_bytes!("../tests/data/numpy_v3_f8.npy"),
            include_bytes!("../tests/data/numpy_big_endian_f8.npy"),
        ];
        for original in fixtures {
            for len in 0..original.len() {
                assert!(parse_npy(&original[..len], "cut").is_err());
            }
            // Overwrite each header byte with characters that matter to the parser.
            let data_start = original.len() - 48;
            for at in 0..data_start {
                for b in [b'\0', b'\'', b'(', b')', b',', b'9', b'-', b'{', b'[', 0xff] {
                    let mut bytes = original.to_vec();
                    bytes[at] = b;
                    let _ = parse_npy(&bytes, "mutated");
                }
            }
        }
    }

    // ----- files written by NumPy ---------------------------------------------

    fn expect_array(a: &Array, shape: &[usize], dtype: Dtype, data: &[f32]) {
        assert_eq!(a.shape, shape);
        assert_eq!(a.dtype, dtype);
        assert_eq!(a.data, data);
    }

    /// `(arange(24) * 0.5 - 3).reshape(2, 3, 4)` as float32.
    fn numpy_x() -> Vec<f32> {
        (0..24).map(|i| i as f32 * 0.5 - 3.0).collect()
    }

    /// `(arange(12) / 7).reshape(3, 4)` as float64, converted to float32.
    fn numpy_y() -> Vec<f32> {
        (0..12).map(|i| (f64::from(i) / 7.0) as f32).collect()
    }

    /// `(arange(6) * 1.5 - 2).reshape(3, 2)` as big-endian float64.
    fn numpy_y_val() -> Vec<f32> {
        (0..6).map(|i| (f64::from(i) * 1.5 - 2.0) as f32).collect()
    }

    #[test]
    fn numpy_npy_files() {
        let parse = |bytes: &[u8], name: &str| parse_npy(bytes, name).expect(name);
        let a = parse(include_bytes!("../tests/data/numpy_f32.npy"), "f32");
        expect_array(&a, &[2, 3, 4], Dtype::F32, &numpy_x());
        let a = parse(include_bytes!("../tests/data/numpy_f64.npy"), "f64");
        expect_array(&a, &[3, 4], Dtype::F64, &numpy_y());
        let a = parse(
            include_bytes!("../tests/data/numpy_big_endian_f4.npy"),
            "be4",
        );
        let want: Vec<f32> = (0..6).map(|i| i as f32 + 0.25).collect();
        expect_array(&a, &[2, 3], Dtype::F32, &want);
        let a = parse(
            include_bytes!("../tests/data/numpy_big_endian_f8.npy"),
            "be8",
        );
        expect_array(&a, &[3, 2], Dtype::F64, &numpy_y_val());
        let a = parse(
            include_bytes!("../tests/data/numpy_fortran_f4.npy"),
            "fortran",
        );
        expect_array(&a, &[2, 3, 4], Dtype::F32, &arange(24));
        let a = parse(
            include_bytes!("../tests/data/numpy_fortran_f8_be.npy"),
            "fortran_be",
        );
        let want: Vec<f32> = (0..6).map(|i| (f64::from(i) / 3.0) as f32).collect();
        expect_array(&a, &[2, 3], Dtype::F64, &want);
        let a = parse(
            include_bytes!("../tests/data/numpy_scalar_f4.npy"),
            "scalar",
        );
        expect_array(&a, &[], Dtype::F32, &[3.5]);
        let a = parse(include_bytes!("../tests/data/numpy_empty_f4.npy"), "empty");
        expect_array(&a, &[0, 3, 2], Dtype::F32, &[]);
        let a = parse(include_bytes!("../tests/data/numpy_v2_f4.npy"), "v2");
        expect_array(&a, &[5], Dtype::F32, &arange(5));
        let a = parse(include_bytes!("../tests/data/numpy_v3_f8.npy"), "v3");
        expect_array(&a, &[5], Dtype::F64, &arange(5));

        let msg = err(include_bytes!("../tests/data/numpy_i8.npy"), "ints");
        assert_eq!(
            msg,
            "array \"ints\": unsupported dtype '<i8' (expected float32 '<f4' or float64 '<f8')"
        );
    }

    #[test]
    fn numpy_npy_bytes_match_numpy_save() {
        // np.save of a C-order little-endian float32 array is byte-identical.
        let ours = npy_bytes(&[2, 3, 4], &numpy_x());
        assert_eq!(ours, include_bytes!("../tests/data/numpy_f32.npy"));
        let ours = npy_bytes(&[], &[3.5]);
        assert_eq!(ours, include_bytes!("../tests/data/numpy_scalar_f4.npy"));
        let ours = npy_bytes(&[0, 3, 2], &[]);
        assert_eq!(ours, include_bytes!("../tests/data/numpy_empty_f4.npy"));
    }

    fn read_fixture_npz(name: &str, bytes: &[u8]) -> BTreeMap<String, Array> {
        let dir = TempDir::new("fixture");
        let path = dir.path(name);
        std::fs::write(&path, bytes).expect("write fixture");
        read_npz(&path).expect(name)
    }

    #[test]
    fn numpy_savez() {
        let arrays = read_fixture_npz(
            "numpy_savez.npz",
            include_bytes!("../tests/data/numpy_savez.npz"),
        );
        let keys: Vec<&str> = arrays.keys().map(String::as_str).collect();
        assert_eq!(keys, ["cond", "x", "y"]);
        expect_array(&arrays["x"], &[2, 3, 4], Dtype::F32, &numpy_x());
        expect_array(&arrays["y"], &[3, 4], Dtype::F64, &numpy_y());
        expect_array(&arrays["cond"], &[3], Dtype::F32, &[1.0, -2.0, 0.5]);
    }

    #[test]
    fn numpy_savez_compressed() {
        let arrays = read_fixture_npz(
            "numpy_savez_compressed.npz",
            include_bytes!("../tests/data/numpy_savez_compressed.npz"),
        );
        let keys: Vec<&str> = arrays.keys().map(String::as_str).collect();
        assert_eq!(keys, ["cond", "scalar", "x", "x_val", "y", "y_val"]);
        expect_array(&arrays["x"], &[2, 3, 4], Dtype::F32, &numpy_x());
        expect_array(&arrays["y"], &[3, 4], Dtype::F64, &numpy_y());
        expect_array(&arrays["x_val"], &[2, 3, 4], Dtype::F32, &arange(24));
        expect_array(&arrays["y_val"], &[3, 2], Dtype::F64, &numpy_y_val());
        expect_array(&arrays["cond"], &[0, 2], Dtype::F32, &[]);
        expect_array(&arrays["scalar"], &[], Dtype::F32, &[3.5]);
    }

    #[test]
    fn numpy_npz_entry_errors_name_archive_and_key() {
        // Corrupt the header of one entry of a stored (uncompressed) archive.
        let mut bytes = include_bytes!("../tests/data/numpy_savez.npz").to_vec();
        let at = bytes
            .windows(5)
            .position(|w| w == b"'<f8'")
            .expect("y header");
        bytes[at + 2] = b'i';
        let dir = TempDir::new("fixture-bad");
        let path = dir.path("bad.npz");
        std::fs::write(&path, &bytes).expect("write");
        // The CRC no longer matches, so the archive layer reports it first.
        let msg = read_npz(&path).expect_err("crc").to_string();
        assert!(msg.contains("cannot read entry \"y.npy\""), "{msg}");
    }
}
