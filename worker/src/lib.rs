//! The worker: joins a job, holds a replica of the parameters and the states of its slots,
//! computes its shard of every step of its view, sums gradients with the other members, applies
//! the update, and reports losses, final `(h, c)` snapshots, its share of the summed gradient and
//! a digest of its parameters, or says why it could not.
//!
//! # Layout
//! The library serves its binary only: [`cli::main`] is its one public item.
//!
//! - `cli`, `config`: the command line; flags > `CARRY_*` env > TOML > defaults.
//! - `client`: connection, TLS, token, retry with backoff, blobs.
//! - `session`: register, the directive stream, reports, heartbeats, reconnects, evictions,
//!   SIGTERM, health.
//! - `compute`: the compute thread that owns the engine, the replica and the slots' states.
//! - `exchange`: the gradient sum among the members of a view.
//! - `peer`: the peer port those sums travel through, and the links to other members.

pub mod cli;
mod client;
mod compute;
mod config;
mod error;
mod exchange;
mod peer;
mod session;
