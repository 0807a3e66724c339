//! The stateful stacked LSTM shared by the coordinator and the workers: the network, its
//! engines, parameters, state and the trainer. The data it trains on (tables, arrays, series and
//! their slot schedule) is the `data` crate's.
//!
//! # Layout
//! - [`config`]: model and training settings with `validate()`.
//! - [`params`]: the flat parameter vector in the PyTorch layout, and Keras-style initialization.
//! - [`stream`]: Keras `stateful=True` stream layout (slot `s` of batch `n+1` continues slot `s`
//!   of batch `n`) and the step cursor.
//! - [`state`]: explicit per-slot `(h, c)` with loud shape errors.
//! - [`dropout`]: masks as a pure function of `(seed, epoch, step, slot, element)`.
//! - [`engine`]: forward and backward through time on the fused CPU engine, Burn's stock `Lstm`
//!   (Flex or wgpu), or the fused wgpu engine; [`device`] picks the device.
//! - [`net`]: how a step starts (carried, reset, or the learned initial-state projection).
//! - [`packed`]: forward passes over many series of different lengths, and forecast roll-outs.
//! - [`adam`], [`trainer`]: the optimizer and the training state machine; the in-process
//!   reference trainer is [`trainer::Trainer::step_local`].
//! - [`replica`]: replicated training: views, the replica every worker holds, gradient chunks
//!   and what members report about each step.
//! - [`checkpoint`], [`export`], [`keras`]: checkpoints, PyTorch-layout safetensors and Keras 3
//!   weights, exported and imported;
//!   [`st`] reads and writes the safetensors files they are made of.

pub mod adam;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod dropout;
pub mod engine;
pub mod error;
pub mod export;
pub mod keras;
pub mod net;
pub mod packed;
pub mod params;
pub mod replica;
pub mod st;
pub mod state;
pub mod stream;
pub mod trainer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_series;

pub use config::{AdamConfig, Compat, Head, ModelConfig, ResetPolicy, TrainSpec, ValState};
pub use error::ModelError;

/// The random streams behind initialization and dropout masks, shared with the data crate's
/// synthetic data and series order.
pub use data::rng;
