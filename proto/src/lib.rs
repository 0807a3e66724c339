//! The wire contract between coordinator and workers (`carry.v1`) and the one place where wire
//! types convert to and from domain types.
//!
//! # Layout
//! - [`pb`]: code generated from `proto/carry/v1/coordinator.proto` and `predictor.proto`.
//! - [`convert`]: tensors (little-endian f32 bytes with a shape, checked for shape and
//!   finiteness on the way in), the model spec, registration, each step's work.
//! - [`step`]: the step path: views, the directive stream, reports, and the chunks members
//!   exchange over their direct connections.
//! - [`blob`]: tensors larger than one message, moved out of it and sent in chunks.
//! - [`security`]: the shared token (checked in constant time), secret ids, PEM files.

/// Generated protobuf and gRPC code.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("carry.v1");
}

pub mod blob;
pub mod convert;
pub mod security;
pub mod step;

/// Protocol version spoken by this build; registration with another version is refused.
///
/// 4: an `Assignment` may carry `observed` (masked targets) and `LOSS_PINBALL` with its
/// `quantiles`, which a protocol-3 worker would ignore or refuse, so it must not join.
pub const PROTOCOL_VERSION: u32 = 4;
