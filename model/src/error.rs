//! The crate's one error type. Every message names what was expected and what was given.

use std::path::PathBuf;

pub use data::error::{first_non_finite, fmt_shape};

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value out of range.
    #[error("invalid `{field}`: {msg}")]
    Config {
        /// The field (flag / TOML key) at fault.
        field: String,
        /// Expected vs given.
        msg: String,
    },
    /// A tensor or state of the wrong shape, e.g. `layer 0 h: expected (10, 8), got (10, 2)`.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        /// Which tensor.
        what: String,
        /// The expected shape.
        expected: String,
        /// The given shape.
        got: String,
    },
    /// A NaN or infinity where finite numbers are required.
    #[error("{what}: expected finite values, got {value} at index {index}")]
    NonFinite {
        /// Which tensor.
        what: String,
        /// Flat index of the first bad value.
        index: usize,
        /// The bad value.
        value: f32,
    },
    /// Malformed data the model was given (a stream layout that does not fit, a missing
    /// conditioning array).
    #[error("{source_name}: {msg}")]
    Data {
        /// File or generator the data came from.
        source_name: String,
        /// What is wrong, expected vs given.
        msg: String,
    },
    /// Unreadable or malformed input data (tables, arrays), from the data crate.
    #[error(transparent)]
    Input(#[from] data::DataError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A malformed or mismatched checkpoint or weights file.
    #[error("{path}: {msg}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A compute device that is not available.
    #[error("device `{requested}` is not available: {msg}")]
    Device {
        /// The requested device.
        requested: String,
        /// Why.
        msg: String,
    },
    /// A compute engine failure.
    #[error("engine {engine}: {msg}")]
    Engine {
        /// The engine.
        engine: String,
        /// What went wrong.
        msg: String,
    },
}

impl ModelError {
    /// A shape error for `what` with shapes written as tuples, e.g. `(10, 8)`.
    pub fn shape(what: impl Into<String>, expected: &[usize], got: &[usize]) -> Self {
        Self::Shape {
            what: what.into(),
            expected: fmt_shape(expected),
            got: fmt_shape(got),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Fails on the first NaN or infinity in `values`.
pub fn check_finite(what: &str, values: &[f32]) -> Result<(), ModelError> {
    match data::error::first_non_finite(values) {
        None => Ok(()),
        Some(index) => Err(ModelError::NonFinite {
            what: what.into(),
            index,
            value: values[index],
        }),
    }
}

/// Crate result alias.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
