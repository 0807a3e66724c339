//! What both programs (`coordinator` and `worker`) do as processes, in one place.
//!
//! # Layout
//! - [`config`]: flag > `CARRY_*` environment > TOML file > default layering, and the error that
//!   names the field.
//! - [`process`]: the async runtime, signals, logging and exit codes of a `main`.
//! - [`net`]: HTTP/2 and TCP settings shared by the gRPC server and client.
//! - [`logs`]: rate-limited repeated warnings.
//! - [`clock`]: the CPU time a piece of work costs, apart from the time it waited for a core.
//! - [`fs`]: atomic file writes (temporary name, fsync, rename, fsync of the directory) and the
//!   lock that keeps two coordinators out of one run directory.

pub mod clock;
pub mod config;
pub mod fs;
pub mod logs;
pub mod net;
pub mod process;
