//! Every conversion between wire types and domain types. Every tensor that comes in is checked
//! for shape, byte length and finiteness before anything uses it; nothing outside this crate
//! builds or reads a protobuf message field by field.

use std::time::Duration;

use model::config::{Head, ModelConfig};
use model::dropout::DropoutKey;
use model::engine::Loss;
use model::error::{ModelError, fmt_shape};
use model::state::SlotStates;
use model::trainer::{ShardData, StepPlan};
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
    pb::Tensor {
        shape: shape.iter().map(|&d| d as u64).collect(),
        data: Bytes::from(le_bytes(values)),
        blob: String::new(),
    }
}

/// The little-endian bytes of `values`.
pub fn le_bytes(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice::<f32, u8>(values).to_vec()
    } else {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
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
    out.resize(n, 0.0);
    bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(&t.data);
    if cfg!(target_endian = "big") {
        for v in out.iter_mut() {
            *v = f32::from_bits(v.to_bits().swap_bytes());
        }
    }
    if let Some(index) = model::error::first_non_finite(out) {
        return Err(WireError::Invalid(ModelError::NonFinite {
            what: what.into(),
            index,
            value: out[index],
        }));
    }
    Ok(())
}

/// Decodes a wire tensor of any shape (its bytes checked against the shape, its values for
/// finiteness); returns the values and the shape.
pub fn decode_any(t: Option<&pb::Tensor>, what: &str) -> Result<(Vec<f32>, Vec<usize>), WireError> {
    let t = t.ok_or_else(|| WireError::Missing { what: what.into() })?;
    let shape: Vec<usize> = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n.checked_mul(4) == Some(t.data.len()))
        .ok_or_else(|| {
            shape_error(
                what,
                format!("{} bytes for shape {}", t.data.len(), fmt_shape(&shape)),
                format!("{} bytes", t.data.len()),
            )
        });
    let _ = n?;
    let values = decode(Some(t), what, &shape)?;
    Ok((values, shape))
}

/// Decodes steps `[t, features]` with any `t >= 1`; returns the values and `t`.
pub fn decode_steps(
    t: Option<&pb::Tensor>,
    what: &str,
    features: usize,
) -> Result<(Vec<f32>, usize), WireError> {
    let (values, shape) = decode_any(t, what)?;
    match shape[..] {
        [rows, f] if rows >= 1 && f == features => Ok((values, rows)),
        _ => Err(shape_error(
            what,
            format!("shape (t, {features}) with t >= 1"),
            fmt_shape(&shape),
        )),
    }
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

/// The work of one step for one member of a view, as the coordinator hands it out.
#[derive(Debug, Clone, Copy)]
pub struct AssignmentOut<'a> {
    /// The view.
    pub view: u64,
    /// The step.
    pub plan: &'a StepPlan,
    /// The member's index in the view.
    pub member: u32,
    /// First global slot of the member's shard.
    pub first_slot: usize,
    /// The shard's data (its `init` is not sent: members carry their states).
    pub data: &'a ShardData,
    /// The model (feature widths).
    pub model: &'a ModelConfig,
    /// Report the step computed within this time of starting it.
    pub deadline: Duration,
    /// The step's learning rate.
    pub lr: f64,
    /// The step's valid outputs.
    pub outputs: usize,
}

/// The wire form of a step's work.
pub fn assignment(a: &AssignmentOut<'_>) -> pb::Assignment {
    let d = a.data;
    let n = d.slots.len();
    let m = a.model;
    pb::Assignment {
        step: a.plan.cursor.global,
        epoch: a.plan.cursor.epoch,
        step_in_epoch: a.plan.cursor.step,
        shard: a.member,
        first_slot: a.first_slot as u64,
        slots: n as u32,
        reset: d.reset,
        dropout: d.dropout.map(|k| pb::DropoutKey {
            seed: k.seed,
            epoch: k.epoch,
            step: k.step,
        }),
        params: None,
        x: Some(tensor(&[n, d.t, m.input], &d.x)),
        y: Some(tensor(&[n, d.t, m.output], &d.y)),
        cond: match (&d.cond, m.cond) {
            (Some(c), Some(w)) => Some(tensor(&[n, w], c)),
            _ => None,
        },
        h: None,
        c: None,
        deadline_ms: a.deadline.as_millis().try_into().unwrap_or(u64::MAX),
        valid_steps: d.valid.clone().unwrap_or_default(),
        slot_reset: d.resets.clone().unwrap_or_default(),
        observed: d.observed.as_ref().map(|o| {
            let w: Vec<f32> = o.iter().map(|&seen| f32::from(u8::from(seen))).collect();
            tensor(&[n, d.t, m.output], &w)
        }),
        loss: match d.loss {
            Loss::Mse => pb::Loss::Mse,
            Loss::Mae => pb::Loss::Mae,
            Loss::Huber(_) => pb::Loss::Huber,
            Loss::Pinball(_) => pb::Loss::Pinball,
        } as i32,
        huber_delta: match d.loss {
            Loss::Huber(delta) => delta,
            _ => 0.0,
        },
        quantiles: match d.loss {
            Loss::Pinball(q) => q.levels().to_vec(),
            _ => Vec::new(),
        },
        view: a.view,
        lr: a.lr,
        outputs: a.outputs as u64,
    }
}

/// The loss an assignment asks for.
fn loss(a: &pb::Assignment) -> Result<Loss, WireError> {
    match pb::Loss::try_from(a.loss) {
        Ok(pb::Loss::Unspecified | pb::Loss::Mse) => Ok(Loss::Mse),
        Ok(pb::Loss::Mae) => Ok(Loss::Mae),
        Ok(pb::Loss::Huber) if a.huber_delta.is_finite() && a.huber_delta > 0.0 => {
            Ok(Loss::Huber(a.huber_delta))
        }
        Ok(pb::Loss::Huber) => Err(shape_error(
            "huber_delta",
            "a positive finite value".into(),
            a.huber_delta.to_string(),
        )),
        Ok(pb::Loss::Pinball) => model::engine::Quantiles::new(&a.quantiles)
            .map(Loss::Pinball)
            .map_err(|m| shape_error("quantiles", m, format!("{:?}", a.quantiles))),
        Err(_) => Err(shape_error(
            "loss",
            "LOSS_MSE, LOSS_MAE, LOSS_HUBER or LOSS_PINBALL".into(),
            a.loss.to_string(),
        )),
    }
}

/// Per-slot valid lengths and reset flags of an assignment of `n` slots of `t` steps.
#[allow(clippy::type_complexity)]
fn slot_masks(
    a: &pb::Assignment,
    n: usize,
    t: usize,
) -> Result<(Option<Vec<u32>>, Option<Vec<bool>>), WireError> {
    let valid = match a.valid_steps.len() {
        0 => None,
        len if len == n => {
            if let Some((i, v)) = a
                .valid_steps
                .iter()
                .enumerate()
                .find(|(_, v)| **v as usize > t)
            {
                return Err(shape_error(
                    "valid_steps",
                    format!("at most {t} steps per slot"),
                    format!("{v} for slot {i}"),
                ));
            }
            Some(a.valid_steps.clone())
        }
        len => {
            return Err(shape_error(
                "valid_steps",
                format!("none or one per slot ({n})"),
                format!("{len} values"),
            ));
        }
    };
    let resets = match a.slot_reset.len() {
        0 => None,
        len if len == n => Some(a.slot_reset.clone()),
        len => {
            return Err(shape_error(
                "slot_reset",
                format!("none or one per slot ({n})"),
                format!("{len} values"),
            ));
        }
    };
    Ok((valid, resets))
}

/// A decoded step of work: what a member computes.
#[derive(Debug, Clone)]
pub struct Work {
    /// The view.
    pub view: u64,
    /// Global step id, epoch and step within the epoch.
    pub cursor: model::stream::Cursor,
    /// The member's index in the view.
    pub member: u32,
    /// The shard's data; its `init` is zero (the member starts from its carried states).
    pub data: ShardData,
    /// Report the step computed within this time of starting it (`None`: no deadline given).
    pub deadline: Option<Duration>,
    /// The step's learning rate.
    pub lr: f64,
    /// The step's valid outputs.
    pub outputs: usize,
}

impl Work {
    /// Global step id.
    #[allow(clippy::misnamed_getters)]
    pub fn step(&self) -> u64 {
        self.cursor.global
    }
}

/// Decodes a step's work for a model `cfg`; every tensor is checked for shape and finiteness.
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
    let x = decode(a.x.as_ref(), "x", &[n, t, cfg.input])?;
    let y = decode(a.y.as_ref(), "y", &[n, t, cfg.output])?;
    let cond = match (a.reset, cfg.cond) {
        (true, Some(w)) => Some(decode(a.cond.as_ref(), "cond", &[n, w])?),
        _ => None,
    };
    let (valid, resets) = slot_masks(a, n, t)?;
    let observed = match &a.observed {
        None => None,
        Some(o) => {
            let w = decode(Some(o), "observed", &[n, t, cfg.output])?;
            if let Some((i, v)) = w.iter().enumerate().find(|(_, v)| **v != 0.0 && **v != 1.0) {
                return Err(shape_error(
                    "observed",
                    "0 or 1 per target".into(),
                    format!("{v} at index {i}"),
                ));
            }
            Some(w.iter().map(|&v| v == 1.0).collect())
        }
    };
    let loss = loss(a)?;
    if let Loss::Pinball(q) = loss
        && !cfg.output.is_multiple_of(q.len())
    {
        return Err(shape_error(
            "quantiles",
            format!(
                "a number of levels that divides the model's {} outputs",
                cfg.output
            ),
            format!("{} levels", q.len()),
        ));
    }
    let end = a.first_slot.checked_add(n as u64).ok_or_else(|| {
        shape_error(
            "first_slot",
            "a slot range within u64".into(),
            a.first_slot.to_string(),
        )
    })?;
    if !a.lr.is_finite() || a.lr < 0.0 {
        return Err(shape_error(
            "lr",
            "a finite learning rate >= 0".into(),
            a.lr.to_string(),
        ));
    }
    if a.outputs == 0 {
        return Err(shape_error(
            "outputs",
            "at least 1 valid output".into(),
            "0".into(),
        ));
    }
    Ok(Work {
        view: a.view,
        cursor: model::stream::Cursor {
            epoch: a.epoch,
            step: a.step_in_epoch,
            global: a.step,
        },
        member: a.shard,
        data: ShardData {
            slots: (a.first_slot..end).collect(),
            t,
            x,
            y,
            cond,
            init: SlotStates::zeros(cfg.layers, n, cfg.hidden),
            reset: a.reset,
            dropout: a.dropout.as_ref().map(|d| DropoutKey {
                seed: d.seed,
                epoch: d.epoch,
                step: d.step,
            }),
            valid,
            resets,
            observed,
            loss,
        },
        deadline: (a.deadline_ms > 0).then(|| Duration::from_millis(a.deadline_ms)),
        lr: a.lr,
        outputs: usize::try_from(a.outputs).unwrap_or(usize::MAX),
    })
}

/// What a worker says when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joining {
    /// Its name, as given (the coordinator bounds and cleans it).
    pub name: String,
    /// Its device and engine, for logs.
    pub device: String,
    /// The protocol version it speaks.
    pub protocol: u32,
    /// Where it accepts connections from the other workers.
    pub peer_address: String,
}

/// The registration of a worker named `name` computing on `device` and accepting peer connections
/// at `peer_address`, in this build's protocol.
pub fn register_request(name: &str, device: &str, peer_address: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        name: name.to_string(),
        device: device.to_string(),
        protocol: crate::PROTOCOL_VERSION,
        peer_address: peer_address.to_string(),
    }
}

/// Reads a registration.
pub fn joining(r: pb::RegisterRequest) -> Joining {
    Joining {
        name: r.name,
        device: r.device,
        protocol: r.protocol,
        peer_address: r.peer_address,
    }
}

/// The identity a worker accepts peer connections with, and the CA its peers' identities are
/// signed by (PEM), when the job uses TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// Certificate chain for the name [`PEER_TLS_NAME`].
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// The CA that signs every member's certificate.
    pub ca: Vec<u8>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls(<redacted>)")
    }
}

/// The name in every peer certificate.
pub const PEER_TLS_NAME: &str = "carry-peer";

/// What the coordinator tells a worker it registered.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// The worker's secret id.
    pub worker_id: String,
    /// The job (and coordinator incarnation).
    pub job_id: String,
    /// Renew the lease at least this often.
    pub heartbeat: Duration,
    /// The model every assignment uses.
    pub model: ModelConfig,
    /// Largest message the coordinator accepts (`None`: not said).
    pub max_message_bytes: Option<usize>,
    /// The peer connections' TLS identity, when the job uses TLS.
    pub peer_tls: Option<PeerTls>,
}

/// The wire form of a registration's answer.
pub fn register_reply(r: &Registered) -> pb::RegisterReply {
    let (cert, key, ca) = match &r.peer_tls {
        Some(t) => (t.cert.clone(), t.key.clone(), t.ca.clone()),
        None => Default::default(),
    };
    pb::RegisterReply {
        worker_id: r.worker_id.clone(),
        job_id: r.job_id.clone(),
        heartbeat_ms: r.heartbeat.as_millis().try_into().unwrap_or(u64::MAX),
        model: Some(model_spec(&r.model)),
        max_message_bytes: r.max_message_bytes.map_or(0, |n| n as u64),
        peer_cert: Bytes::from(cert),
        peer_key: Bytes::from(key),
        peer_ca: Bytes::from(ca),
    }
}

/// Reads a registration's answer; the model spec is validated.
pub fn registered(r: pb::RegisterReply) -> Result<Registered, WireError> {
    let peer_tls = match (
        r.peer_cert.is_empty(),
        r.peer_key.is_empty(),
        r.peer_ca.is_empty(),
    ) {
        (true, true, true) => None,
        (false, false, false) => Some(PeerTls {
            cert: r.peer_cert.to_vec(),
            key: r.peer_key.to_vec(),
            ca: r.peer_ca.to_vec(),
        }),
        _ => {
            return Err(shape_error(
                "peer_cert, peer_key, peer_ca",
                "all three or none".into(),
                "some of them".into(),
            ));
        }
    };
    Ok(Registered {
        model: model_config(r.model.as_ref())?,
        worker_id: r.worker_id,
        job_id: r.job_id,
        heartbeat: Duration::from_millis(r.heartbeat_ms),
        max_message_bytes: usize::try_from(r.max_message_bytes).ok().filter(|&n| n > 0),
        peer_tls,
    })
}

/// A heartbeat of worker `id`.
pub fn heartbeat_request(id: &str) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        worker_id: id.to_string(),
    }
}

/// Worker `id` leaves.
pub fn leave_request(id: &str) -> pb::LeaveRequest {
    pb::LeaveRequest {
        worker_id: id.to_string(),
    }
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
    fn registrations_round_trip() {
        let j = joining(register_request("w", "cpu", "10.0.0.2:7000"));
        assert_eq!(
            (j.name.as_str(), j.device.as_str(), j.protocol),
            ("w", "cpu", crate::PROTOCOL_VERSION)
        );
        assert_eq!(j.peer_address, "10.0.0.2:7000");
        let mut reg = Registered {
            worker_id: "id".into(),
            job_id: "job".into(),
            heartbeat: Duration::from_millis(250),
            model: ModelConfig::seed(),
            max_message_bytes: Some(1 << 20),
            peer_tls: None,
        };
        assert_eq!(registered(register_reply(&reg)).unwrap(), reg);
        reg.peer_tls = Some(PeerTls {
            cert: b"c".to_vec(),
            key: b"k".to_vec(),
            ca: b"a".to_vec(),
        });
        assert_eq!(registered(register_reply(&reg)).unwrap(), reg);
        let mut half = register_reply(&reg);
        half.peer_key = Bytes::new();
        assert!(
            registered(half)
                .unwrap_err()
                .to_string()
                .contains("all three or none")
        );
    }

    #[test]
    fn assignments_round_trip_and_are_checked() {
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
            valid: Some(vec![3, 1]),
            resets: Some(vec![false, true]),
            observed: Some((0..n * 3 * 2).map(|i| i % 3 != 1).collect()),
            loss: Loss::Huber(0.25),
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
        let out = AssignmentOut {
            view: 4,
            plan: &plan,
            member: 1,
            first_slot: 4,
            data: &data,
            model: &cfg,
            deadline: Duration::from_secs(7),
            lr: 0.25,
            outputs: 12,
        };
        let wire = assignment(&out);
        assert!(
            wire.params.is_none() && wire.h.is_none(),
            "members carry these"
        );
        let w = work(&wire, &cfg).unwrap();
        assert_eq!(
            (w.view, w.step(), w.member, w.deadline, w.lr, w.outputs),
            (4, 9, 1, Some(Duration::from_secs(7)), 0.25, 12)
        );
        assert_eq!(w.cursor, plan.cursor);
        assert_eq!(w.data.slots, data.slots);
        assert_eq!(
            (w.data.x.clone(), w.data.y.clone()),
            (data.x.clone(), data.y.clone())
        );
        assert_eq!(w.data.cond, data.cond);
        assert_eq!(w.data.dropout, data.dropout);
        assert_eq!(
            (&w.data.valid, &w.data.resets, w.data.loss),
            (&data.valid, &data.resets, data.loss)
        );
        assert_eq!(w.data.observed, data.observed);
        let all = ShardData {
            observed: None,
            ..data.clone()
        };
        let plain = assignment(&AssignmentOut { data: &all, ..out });
        assert!(plain.observed.is_none(), "absent when every target is seen");
        assert_eq!(work(&plain, &cfg).unwrap().data.observed, None);
        let mut bad = wire.clone();
        bad.observed = Some(tensor(&[n, 3, 2], &[0.5; 12]));
        let e = work(&bad, &cfg).unwrap_err().to_string();
        assert!(
            e.contains("observed") && e.contains("0 or 1") && e.contains("0.5 at index 0"),
            "{e}"
        );
        bad.observed = Some(tensor(&[n, 3, 1], &[1.0; 6]));
        let e = work(&bad, &cfg).unwrap_err().to_string();
        assert!(e.contains("observed") && e.contains("(2, 3, 2)"), "{e}");
        let mut bad = wire.clone();
        bad.valid_steps = vec![4, 1];
        let e = work(&bad, &cfg).unwrap_err().to_string();
        assert!(
            e.contains("valid_steps") && e.contains("4 for slot 0"),
            "{e}"
        );
        bad.valid_steps = vec![1];
        assert!(
            work(&bad, &cfg)
                .unwrap_err()
                .to_string()
                .contains("one per slot")
        );
        let pinball = ShardData {
            loss: Loss::Pinball(model::engine::Quantiles::new(&[0.1, 0.9]).unwrap()),
            ..data.clone()
        };
        let wire_q = assignment(&AssignmentOut {
            data: &pinball,
            ..out
        });
        assert_eq!(work(&wire_q, &cfg).unwrap().data.loss, pinball.loss);
        let mut bad = wire_q.clone();
        bad.quantiles = vec![0.9, 0.1];
        let e = work(&bad, &cfg).unwrap_err().to_string();
        assert!(e.contains("quantiles") && e.contains("ascending"), "{e}");
        bad.quantiles = vec![0.1, 0.5, 0.9];
        let e = work(&bad, &cfg).unwrap_err().to_string();
        assert!(e.contains("quantiles") && e.contains("3 levels"), "{e}");
        let mut bad = wire.clone();
        bad.loss = 9;
        assert!(
            work(&bad, &cfg)
                .unwrap_err()
                .to_string()
                .contains("LOSS_MSE")
        );
        bad.loss = pb::Loss::Huber as i32;
        bad.huber_delta = f32::NAN;
        assert!(
            work(&bad, &cfg)
                .unwrap_err()
                .to_string()
                .contains("huber_delta")
        );
        let mut missing = wire.clone();
        missing.cond = None;
        assert_eq!(
            work(&missing, &cfg).unwrap_err().to_string(),
            "cond: missing"
        );
        let mut bad = wire.clone();
        bad.lr = f64::NAN;
        assert!(work(&bad, &cfg).unwrap_err().to_string().contains("lr"));
        let mut bad = wire;
        bad.outputs = 0;
        assert!(
            work(&bad, &cfg)
                .unwrap_err()
                .to_string()
                .contains("outputs")
        );
    }
}
