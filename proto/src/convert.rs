//! Conversions between wire types and domain types. Every tensor that comes in is checked for
//! shape, byte length and finiteness before anything uses it.

use model::config::{Head, ModelConfig};
use model::error::fmt_shape;
use prost::bytes::Bytes;

use crate::pb;

/// A received message that does not match what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// A required field is absent.
    #[error("{what}: missing")]
    Missing {
        /// The field.
        what: String,
    },
    /// A tensor of the wrong shape or size.
    #[error("{what}: expected shape {expected}, got {got}")]
    Shape {
        /// The field.
        what: String,
        /// Expected shape.
        expected: String,
        /// Given shape or size.
        got: String,
    },
    /// A NaN or infinity.
    #[error("{what}: expected finite values, got {value} at index {index}")]
    NonFinite {
        /// The field.
        what: String,
        /// Flat index of the first bad value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// An invalid model spec.
    #[error("model spec: {0}")]
    Model(String),
}

/// Encodes `values` of `shape` as a wire tensor.
pub fn tensor(shape: &[usize], values: &[f32]) -> pb::Tensor {
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    pb::Tensor {
        shape: shape.iter().map(|&d| d as u64).collect(),
        data: Bytes::from(data),
    }
}

/// Decodes a wire tensor that must have exactly `shape` and finite values.
pub fn decode(t: Option<&pb::Tensor>, what: &str, shape: &[usize]) -> Result<Vec<f32>, WireError> {
    let mut out = Vec::new();
    decode_into(t, what, shape, &mut out)?;
    Ok(out)
}

/// Like [`decode`], into a reused buffer.
pub fn decode_into(
    t: Option<&pb::Tensor>,
    what: &str,
    shape: &[usize],
    out: &mut Vec<f32>,
) -> Result<(), WireError> {
    let t = t.ok_or_else(|| WireError::Missing { what: what.into() })?;
    let given: Vec<usize> = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    if given != shape {
        return Err(WireError::Shape {
            what: what.into(),
            expected: fmt_shape(shape),
            got: fmt_shape(&given),
        });
    }
    let n: usize = shape.iter().product();
    if t.data.len() != n * 4 {
        return Err(WireError::Shape {
            what: what.into(),
            expected: format!("{} ({} bytes)", fmt_shape(shape), n * 4),
            got: format!("{} bytes", t.data.len()),
        });
    }
    out.clear();
    out.reserve(n);
    for (index, c) in t.data.chunks_exact(4).enumerate() {
        let value = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        if !value.is_finite() {
            return Err(WireError::NonFinite {
                what: what.into(),
                index,
                value,
            });
        }
        out.push(value);
    }
    Ok(())
}

/// The wire form of a model config.
pub fn model_spec(cfg: &ModelConfig) -> pb::ModelSpec {
    pb::ModelSpec {
        input: cfg.input as u32,
        hidden: cfg.hidden as u32,
        layers: cfg.layers as u32,
        output: cfg.output as u32,
        head: match cfg.head {
            Head::Linear => pb::Head::Linear,
            Head::Softmax => pb::Head::Softmax,
        } as i32,
        dropout: cfg.dropout,
        cond: cfg.cond.unwrap_or(0) as u32,
    }
}

/// A model config from its wire form, validated.
pub fn model_config(spec: Option<&pb::ModelSpec>) -> Result<ModelConfig, WireError> {
    let s = spec.ok_or_else(|| WireError::Missing {
        what: "model".into(),
    })?;
    let head = match pb::Head::try_from(s.head) {
        Ok(pb::Head::Linear) => Head::Linear,
        Ok(pb::Head::Softmax) => Head::Softmax,
        _ => {
            return Err(WireError::Model(format!(
                "head: expected linear or softmax, got {}",
                s.head
            )));
        }
    };
    let cfg = ModelConfig {
        input: s.input as usize,
        hidden: s.hidden as usize,
        layers: s.layers as usize,
        output: s.output as usize,
        head,
        dropout: s.dropout,
        cond: (s.cond > 0).then_some(s.cond as usize),
    };
    cfg.validate()
        .map_err(|e| WireError::Model(e.to_string()))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_and_are_checked() {
        let t = tensor(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            decode(Some(&t), "x", &[2, 3]).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        let e = decode(Some(&t), "x", &[3, 2]).unwrap_err().to_string();
        assert_eq!(e, "x: expected shape (3, 2), got (2, 3)");
        let mut short = t.clone();
        short.data = short.data.slice(..8);
        assert!(
            decode(Some(&short), "x", &[2, 3])
                .unwrap_err()
                .to_string()
                .contains("8 bytes")
        );
        let nan = tensor(&[2], &[1.0, f32::NAN]);
        let e = decode(Some(&nan), "grad", &[2]).unwrap_err().to_string();
        assert!(e.contains("grad") && e.contains("index 1"), "{e}");
        assert_eq!(
            decode(None, "h", &[1]).unwrap_err().to_string(),
            "h: missing"
        );
    }

    #[test]
    fn model_spec_round_trips() {
        let cfg = ModelConfig {
            cond: Some(2),
            head: Head::Softmax,
            ..ModelConfig::seed()
        };
        assert_eq!(model_config(Some(&model_spec(&cfg))).unwrap(), cfg);
        let mut bad = model_spec(&cfg);
        bad.hidden = 0;
        assert!(
            model_config(Some(&bad))
                .unwrap_err()
                .to_string()
                .contains("hidden")
        );
    }
}
