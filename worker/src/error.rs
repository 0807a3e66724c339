//! The worker's error type.

/// Errors of the worker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    /// A configuration value out of range; names the field.
    #[error("invalid `{field}`: {msg}")]
    Config {
        /// The field.
        field: String,
        /// Expected vs given.
        msg: String,
    },
    /// Device, engine or model error.
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// The coordinator refused us for good (wrong token, protocol mismatch).
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
    /// The coordinator stayed unreachable past `--give-up-secs`.
    #[error("gave up reaching the coordinator at {url} after {secs} s: {last}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Seconds waited.
        secs: u64,
        /// The last error.
        last: String,
    },
    /// A connection attempt failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The compute thread died.
    #[error("compute thread: {0}")]
    Compute(String),
}

impl From<runtime::config::ConfigError> for WorkerError {
    fn from(e: runtime::config::ConfigError) -> Self {
        Self::Config {
            field: e.field,
            msg: e.msg,
        }
    }
}

impl runtime::process::ExitStatus for WorkerError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Config { .. } => runtime::process::EXIT_CONFIG,
            _ => runtime::process::EXIT_FAILURE,
        }
    }
}
