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
//!
//! # Layout
//! - `header`: the parser of the Python literal subset NumPy writes in headers.
//! - `read`: `.npy` parsing and `.npz` reading, with size checks before any allocation.
//! - `write`: `.npy` and `.npz` writing, atomically.

use std::fmt;
use std::io;
use std::path::PathBuf;

use zip::result::ZipError;

mod header;
mod read;
#[cfg(test)]
mod tests;
mod write;

use header::{Parser, Value};
pub use read::{NpzOptions, npz_has, parse_npy, read_npy, read_npz, read_npz_with};
pub use write::{npy_bytes, write_npy, write_npz};

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

    /// An `.npz` entry whose declared size does not match what its header describes, or that
    /// holds more bytes than it declares.
    #[error("\"{}\": entry \"{entry}\" {reason}", path.display())]
    NpzEntrySize {
        /// The archive.
        path: PathBuf,
        /// The entry name.
        entry: String,
        /// The sizes involved.
        reason: String,
    },

    /// Arrays that would need more memory than allowed; nothing was decompressed.
    #[error("\"{what}\": shape {shape} ({dtype}) needs {needed} bytes to load, more than {limit}")]
    TooLarge {
        /// The array.
        what: String,
        /// Its shape.
        shape: String,
        /// Its element type.
        dtype: Dtype,
        /// Bytes needed for it (raw data plus the converted values), with the arrays before it.
        needed: u64,
        /// What is allowed, and why.
        limit: String,
    },

    /// An `.npz` archive holds an array the reader does not expect.
    #[error("{}: unexpected array `{key}` (expected arrays: {expected})", path.display())]
    NpzUnexpected {
        /// The archive.
        path: PathBuf,
        /// The unexpected key.
        key: String,
        /// The keys the reader accepts.
        expected: String,
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

/// Number of elements in `shape`, if it fits in `usize`.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
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
