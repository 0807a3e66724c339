//! Every conversion between wire types and domain types. Every tensor that comes in is checked
//! for shape, byte length and finiteness before anything uses it; nothing outside this crate
//! builds or reads a protobuf message field by field.

use std::time::Duration;

use model::config::{Head, ModelConfig};
use model::dropout::DropoutKey;
use model::engine::TrainOut;
use model::error::{ModelError, fmt_shape};
use model::state::SlotStates;
use model::trainer::{ShardData, StepPlan, Submission};
use prost::bytes::Bytes;

use crate::pb;

/// A received message that does not match what was expected.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A required field is absent.
    #[error("{what}: missing")]
    Missing {
        /// The field.
        what: String,
    },
    /// A tensor of the wrong shape or size, a non-finite value, or an invalid model spec.
    #[error(transparent)]
    Invalid(#[from] ModelError),
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
        blob: String::new(),
    }
}

fn shape_error(what: &str, expected: String, got: String) -> WireError {
    WireError::Invalid(ModelError::Shape {
        what: what.into(),
        expected,
        got,
    })
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
    if !t.blob.is_empty() {
        return Err(shape_error(
            what,
            "its bytes inline or fetched".into(),
            format!("an unresolved blob reference `{}`", t.blob),
        ));
    }
    let given: Vec<usize> = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    if given != shape {
        return Err(shape_error(
            what,
            format!("shape {}", fmt_shape(shape)),
            fmt_shape(&given),
        ));
    }
    let n: usize = shape.iter().product();
    if t.data.len() != n * 4 {
        return Err(shape_error(
            what,
            format!("shape {} ({} bytes)", fmt_shape(shape), n * 4),
            format!("{} bytes", t.data.len()),
        ));
    }
    out.clear();
    out.reserve(n);
    for (index, c) in t.data.chunks_exact(4).enumerate() {
        let value = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        if !value.is_finite() {
            return Err(WireError::Invalid(ModelError::NonFinite {
                what: what.into(),
                index,
                value,
            }));
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
            return Err(WireError::Invalid(ModelError::Config {
                field: "head".into(),
                msg: format!("expected linear or softmax, got {}", s.head),
            }));
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
    cfg.validate()?;
    Ok(cfg)
}

/// One shard of a step as the coordinator hands it out.
#[derive(Debug, Clone, Copy)]
pub struct AssignmentOut<'a> {
    /// The step.
    pub plan: &'a StepPlan,
    /// Shard index within the step.
    pub shard: u32,
    /// First global slot of the shard.
    pub first_slot: usize,
    /// Data and initial states.
    pub data: &'a ShardData,
    /// The model (feature widths).
    pub model: &'a ModelConfig,
    /// Hand the result in within this time.
    pub deadline: Duration,
}

/// The wire form of an assignment; `params` is the step's encoded parameter tensor (encoded once
/// per step and shared by every assignment).
pub fn assignment(a: &AssignmentOut<'_>, params: pb::Tensor) -> pb::Assignment {
    let d = a.data;
    let n = d.slots.len();
    let m = a.model;
    let (l, h) = (d.init.layers(), d.init.hidden());
    pb::Assignment {
        step: a.plan.cursor.global,
        epoch: a.plan.cursor.epoch,
        step_in_epoch: a.plan.cursor.step,
        shard: a.shard,
        first_slot: a.first_slot as u64,
        slots: n as u32,
        reset: d.reset,
        dropout: d.dropout.map(|k| pb::DropoutKey {
            seed: k.seed,
            epoch: k.epoch,
            step: k.step,
        }),
        params: Some(params),
        x: Some(tensor(&[n, d.t, m.input], &d.x)),
        y: Some(tensor(&[n, d.t, m.output], &d.y)),
        cond: match (&d.cond, m.cond) {
            (Some(c), Some(w)) => Some(tensor(&[n, w], c)),
            _ => None,
        },
        h: Some(tensor(&[l, n, h], d.init.h())),
        c: Some(tensor(&[l, n, h], d.init.c())),
        deadline_ms: a.deadline.as_millis().try_into().unwrap_or(u64::MAX),
    }
}

/// A decoded assignment: what a worker computes.
#[derive(Debug, Clone)]
pub struct Work {
    /// Global step id.
    pub step: u64,
    /// Shard index within the step.
    pub shard: u32,
    /// Parameters to compute with.
    pub params: Vec<f32>,
    /// The shard's data and initial states.
    pub data: ShardData,
    /// Hand the result in within this time (`None`: no deadline given).
    pub deadline: Option<Duration>,
}

/// Decodes an assignment for a model `cfg`; every tensor is checked for shape and finiteness.
pub fn work(a: &pb::Assignment, cfg: &ModelConfig) -> Result<Work, WireError> {
    let n = a.slots as usize;
    let t =
        a.x.as_ref()
            .and_then(|x| x.shape.get(1))
            .copied()
            .unwrap_or(0) as usize;
    if n == 0 || t == 0 {
        return Err(shape_error(
            "assignment",
            "at least 1 slot and 1 step".into(),
            format!("{n} slots, {t} steps"),
        ));
    }
    let n_params = model::params::ParamLayout::new(cfg).len();
    let params = decode(a.params.as_ref(), "params", &[n_params])?;
    let x = decode(a.x.as_ref(), "x", &[n, t, cfg.input])?;
    let y = decode(a.y.as_ref(), "y", &[n, t, cfg.output])?;
    let st = [cfg.layers, n, cfg.hidden];
    let h = decode(a.h.as_ref(), "h", &st)?;
    let c = decode(a.c.as_ref(), "c", &st)?;
    let init = SlotStates::from_flat(cfg.layers, n, cfg.hidden, h, c)?;
    let cond = match (a.reset, cfg.cond) {
        (true, Some(w)) => Some(decode(a.cond.as_ref(), "cond", &[n, w])?),
        _ => None,
    };
    let end = a.first_slot.checked_add(n as u64).ok_or_else(|| {
        shape_error(
            "first_slot",
            "a slot range within u64".into(),
            a.first_slot.to_string(),
        )
    })?;
    Ok(Work {
        step: a.step,
        shard: a.shard,
        params,
        data: ShardData {
            slots: (a.first_slot..end).collect(),
            t,
            x,
            y,
            cond,
            init,
            reset: a.reset,
            dropout: a.dropout.as_ref().map(|d| DropoutKey {
                seed: d.seed,
                epoch: d.epoch,
                step: d.step,
            }),
        },
        deadline: (a.deadline_ms > 0).then(|| Duration::from_millis(a.deadline_ms)),
    })
}

/// The wire form of a computed shard.
pub fn shard_result(step: u64, shard: u32, out: &TrainOut, compute_ms: f64) -> pb::ShardResult {
    let f = &out.final_state;
    let st = [f.layers(), f.slots(), f.hidden()];
    pb::ShardResult {
        step,
        shard,
        loss_sum: out.loss_sum,
        grad: Some(tensor(&[out.grad.len()], &out.grad)),
        h: Some(tensor(&st, f.h())),
        c: Some(tensor(&st, f.c())),
        compute_ms,
    }
}

/// The wire form of a worker's own failure on `(step, shard)`.
pub fn shard_failure(step: u64, shard: u32, reason: &str) -> pb::ShardFailure {
    pb::ShardFailure {
        step,
        shard,
        reason: reason.to_string(),
    }
}

/// Decodes a shard result whose gradient must have `grad_len` values and whose final states the
/// shape `state` (`[layers, slots, hidden]`).
pub fn submission(
    r: &pb::ShardResult,
    grad_len: usize,
    state: [usize; 3],
) -> Result<Submission, WireError> {
    let grad = decode(r.grad.as_ref(), "grad", &[grad_len])?;
    let h = decode(r.h.as_ref(), "h", &state)?;
    let c = decode(r.c.as_ref(), "c", &state)?;
    let [l, n, hd] = state;
    let finals = SlotStates::from_flat(l, n, hd, h, c)?;
    Ok(Submission {
        step: r.step,
        shard: r.shard,
        loss_sum: r.loss_sum,
        grad,
        finals,
        compute_ms: r.compute_ms,
    })
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
        let mut blob = t.clone();
        blob.blob = "b1".into();
        let e = decode(Some(&blob), "x", &[2, 3]).unwrap_err().to_string();
        assert!(e.contains("blob"), "{e}");
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

    #[test]
    fn assignments_and_results_round_trip() {
        use model::stream::Cursor;
        let cfg = ModelConfig {
            cond: Some(3),
            ..ModelConfig::seed()
        };
        let n = 2;
        let init = SlotStates::zeros(cfg.layers, n, cfg.hidden);
        let data = ShardData {
            slots: vec![4, 5],
            t: 3,
            x: (0..n * 3 * 2).map(|v| v as f32).collect(),
            y: (0..n * 3 * 2).map(|v| -(v as f32)).collect(),
            cond: Some(vec![0.5; n * 3]),
            init,
            reset: true,
            dropout: Some(DropoutKey {
                seed: 1,
                epoch: 2,
                step: 3,
            }),
        };
        let plan = StepPlan {
            cursor: Cursor {
                epoch: 2,
                step: 3,
                global: 9,
            },
            reset: true,
            dropout: data.dropout,
        };
        let np = model::params::ParamLayout::new(&cfg).len();
        let params: Vec<f32> = (0..np).map(|i| i as f32 * 1e-3).collect();
        let out = AssignmentOut {
            plan: &plan,
            shard: 1,
            first_slot: 4,
            data: &data,
            model: &cfg,
            deadline: Duration::from_secs(7),
        };
        let wire = assignment(&out, tensor(&[np], &params));
        let w = work(&wire, &cfg).unwrap();
        assert_eq!(
            (w.step, w.shard, w.deadline),
            (9, 1, Some(Duration::from_secs(7)))
        );
        assert_eq!(w.params, params);
        assert_eq!(w.data.slots, data.slots);
        assert_eq!(
            (w.data.x.clone(), w.data.y.clone()),
            (data.x.clone(), data.y.clone())
        );
        assert_eq!(w.data.cond, data.cond);
        assert_eq!(w.data.dropout, data.dropout);
        let mut missing = wire.clone();
        missing.cond = None;
        assert_eq!(
            work(&missing, &cfg).unwrap_err().to_string(),
            "cond: missing"
        );
        let trained = TrainOut {
            loss_sum: 1.5,
            grad: vec![0.25; np],
            final_state: SlotStates::zeros(cfg.layers, n, cfg.hidden),
            init_grad: None,
        };
        let r = shard_result(9, 1, &trained, 3.0);
        let s = submission(&r, np, [cfg.layers, n, cfg.hidden]).unwrap();
        assert_eq!(
            (s.step, s.shard, s.loss_sum, s.compute_ms),
            (9, 1, 1.5, 3.0)
        );
        assert_eq!(s.grad, trained.grad);
        let e = submission(&r, np + 1, [cfg.layers, n, cfg.hidden])
            .unwrap_err()
            .to_string();
        assert!(e.contains("grad: expected shape"), "{e}");
    }
}
