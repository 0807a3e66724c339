//! The coordinator: serves a training job to workers over gRPC, shards every step's slots over
//! them, commits each step once, and checkpoints; or trains in process as the reference.
//!
//! # Layout
//! The library serves its binary only: [`cli::main`] is its one public item.
//!
//! - `cli`, `config`: the command line; flags > `CARRY_*` env > TOML > defaults.
//! - `job`: the scheduling state machine (membership, leases, shards, deadlines, screening,
//!   evictions, commit), no I/O.
//! - `service`: the gRPC adapter over the job; `error` maps refusals to statuses.
//! - `server`: takes the run directory (`rundir`), loads data, resumes, serves (TLS, token,
//!   health), waits for the end.
//! - `local`: the in-process reference trainer (`--spawn-workers 0`).
//! - `spawn`: local worker processes (`--spawn-workers K`).
//! - `report`: the one writer of the run's files (metrics.csv, checkpoints), validation,
//!   progress, Prometheus, the plot.
//! - `predict`: `predict` and `export`.
//! - `forecast`: `forecast` and `evaluate` on series data; `scores` the metrics and baselines.
//! - `serve`: online prediction with stateful streams over gRPC and HTTP.
//! - `ui`: the live status page of a training job (`--ui-listen`).

pub mod cli;
mod config;
mod error;
mod forecast;
mod job;
mod local;
mod pki;
mod predict;
mod report;
mod rundir;
pub mod scores;
mod serve;
mod server;
mod service;
mod spawn;
mod ui;
