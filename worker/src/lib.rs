//! The worker: joins a job, computes shards of its steps from the state it is given, and returns
//! gradients and final `(h, c)` snapshots, or says why it could not.
//!
//! # Layout
//! - [`cli`], [`config`]: the command line; flags > `CARRY_*` env > TOML > defaults.
//! - [`client`]: connection, TLS, token, retry with backoff, blobs.
//! - [`session`]: register, step loop, heartbeats, reconnects, evictions, SIGTERM, health.
//! - `compute`: the compute thread that owns the engine.

pub mod cli;
pub mod client;
mod compute;
pub mod config;
pub mod error;
pub mod session;
