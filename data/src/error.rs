//! The crate's one error type. Every message names the file or array, what was expected and what
//! was given.

use std::path::PathBuf;

use crate::npy::NpyError;

/// Errors of the data crate.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Malformed data: a table, a windows `.npz`, a series too short to learn from.
    #[error("{source_name}: {msg}")]
    Invalid {
        /// File or generator the data came from.
        source_name: String,
        /// What is wrong, expected vs given.
        msg: String,
    },
    /// A NaN or infinity where finite numbers are required.
    #[error("{what}: expected finite values, got {value} at index {index}")]
    NonFinite {
        /// Which array.
        what: String,
        /// Flat index of the first bad value.
        index: usize,
        /// The bad value.
        value: f32,
    },
    /// An unreadable or malformed `.npy` / `.npz` file.
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Formats a shape like NumPy: `(10, 8)`, `(5,)`, `()`.
pub fn fmt_shape(shape: &[usize]) -> String {
    match shape {
        [] => "()".into(),
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The index of the first NaN or infinity in `values`. Blocks are checked without a branch per
/// value (which vectorizes), and only a block that holds one is searched.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    const BLOCK: usize = 1024;
    values.chunks(BLOCK).enumerate().find_map(|(b, chunk)| {
        let bad = chunk.iter().fold(false, |acc, v| acc | !v.is_finite());
        bad.then(|| b * BLOCK + chunk.iter().position(|v| !v.is_finite()).unwrap_or(0))
    })
}

/// Fails on the first NaN or infinity in `values`.
pub fn check_finite(what: &str, values: &[f32]) -> Result<(), DataError> {
    match first_non_finite(values) {
        None => Ok(()),
        Some(index) => Err(DataError::NonFinite {
            what: what.into(),
            index,
            value: values[index],
        }),
    }
}
