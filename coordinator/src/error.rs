//! The coordinator's error type and the one place refusals become gRPC statuses.

use tonic::Status;

use crate::job::Refusal;

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CoordError {
    /// A configuration value out of range; names the field.
    #[error("invalid `{field}`: {msg}")]
    Config {
        /// The field (TOML key; the flag is the same with `-`).
        field: String,
        /// Expected vs given.
        msg: String,
    },
    /// Model, data, checkpoint or device error.
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// Unreadable or malformed data: a table, an array file, a series too short.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// An unreadable `.npy` / `.npz` file.
    #[error(transparent)]
    Npy(#[from] data::npy::NpyError),
    /// Serving failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The job stopped without completing.
    #[error("the job failed: {0}")]
    JobFailed(String),
    /// Launching local workers failed.
    #[error("spawning workers: {0}")]
    Spawn(String),
}

impl CoordError {
    /// An I/O error while doing `what`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

impl From<runtime::config::ConfigError> for CoordError {
    fn from(e: runtime::config::ConfigError) -> Self {
        Self::Config {
            field: e.field,
            msg: e.msg,
        }
    }
}

impl runtime::process::ExitStatus for CoordError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Config { .. } => runtime::process::EXIT_CONFIG,
            _ => runtime::process::EXIT_FAILURE,
        }
    }
}

/// Trailer of an `UNAVAILABLE` registration refusal: milliseconds to wait before registering
/// again.
pub(crate) const RETRY_AFTER: &str = "retry-after-ms";

/// The gRPC status for a refusal.
pub(crate) fn refusal_status(r: &Refusal) -> Status {
    let msg = r.to_string();
    match r {
        Refusal::UnknownWorker | Refusal::Evicted(_) => Status::not_found(msg),
        Refusal::Backoff { retry_after, .. } => {
            let mut s = Status::unavailable(msg);
            if let Ok(v) = retry_after.as_millis().to_string().parse() {
                s.metadata_mut().insert(RETRY_AFTER, v);
            }
            s
        }
        Refusal::Full(_) => Status::resource_exhausted(msg),
        Refusal::WrongIdentity => Status::permission_denied(msg),
        Refusal::Stale(_) | Refusal::NotAssigned(_) => Status::failed_precondition(msg),
        Refusal::Invalid(_) => Status::invalid_argument(msg),
    }
}
