//! Training data for carry, before any model sees it: files read and validated, series scaled
//! and split in time, and the schedule that lays series over the stateful slots. Nothing here
//! runs a network; `model` depends on this crate, never the reverse.
//!
//! # Layout
//! - [`table`]: long-format tables of series (CSV, CSV.gz, Parquet, ragged `.npz`), grouped by
//!   series and time-checked.
//! - [`series`]: how a table becomes training series (columns, scaling, time split) and
//!   [`series::schedule`], the slot schedule of an epoch.
//! - [`windows`]: equal windows in the Keras stateful layout: the synthetic generator and
//!   `.npz` files of `x`, `y`.
//! - [`npy`]: NumPy `.npy` / `.npz` reading and writing.
//! - [`rng`]: deterministic random streams (shared with the model's initialization and dropout).
//! - [`error`]: [`DataError`], the crate's one error type.

pub mod error;
pub mod npy;
pub mod rng;
pub mod series;
pub mod table;
pub mod windows;

pub use error::DataError;
