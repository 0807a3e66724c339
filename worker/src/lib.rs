//! The worker: joins a job, computes shards of its steps from the state it is given, and returns
//! gradients and final `(h, c)` snapshots, or says why it could not.
//!
//! # Layout
//! The library serves its binary only: [`cli::main`] is its one public item.
//!
//! - `cli`, `config`: the command line; flags > `CARRY_*` env > TOML > defaults.
//! - `client`: connection, TLS, token, retry with backoff, blobs.
//! - `session`: register, step loop, heartbeats, reconnects, evictions, SIGTERM, health.
//! - `compute`: the compute thread that owns the engine.

pub mod cli;
mod client;
mod compute;
mod config;
mod error;
mod session;
