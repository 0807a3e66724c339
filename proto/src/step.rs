//! Wire forms of the step path (protocols 3 and 4): views, the directive stream, reports and the chunks
//! members exchange over their direct connections (and their framing). Every tensor that comes in is checked for shape and
//! finiteness before anything uses it ([`crate::convert::decode`]).

use model::adam::AdamState;
use model::config::{AdamConfig, Compat, ModelConfig};
use model::replica::{
    Computed, Member, Record, Reduced, Reduction, Replica, StepRecord, UpdateRule, View,
    chunk_range, owned_chunks,
};
use model::state::SlotStates;
use prost::Message;
use prost::bytes::Bytes;

use crate::convert::{WireError, decode, tensor};
use crate::pb;

fn invalid(what: &str, expected: impl Into<String>, got: impl Into<String>) -> WireError {
    WireError::Invalid(model::ModelError::Shape {
        what: what.into(),
        expected: expected.into(),
        got: got.into(),
    })
}

fn states_tensors(s: &SlotStates) -> (pb::Tensor, pb::Tensor) {
    let shape = [s.layers(), s.slots(), s.hidden()];
    (tensor(&shape, s.h()), tensor(&shape, s.c()))
}

fn decode_states(
    h: Option<&pb::Tensor>,
    c: Option<&pb::Tensor>,
    shape: [usize; 3],
) -> Result<SlotStates, WireError> {
    let hv = decode(h, "h", &shape)?;
    let cv = decode(c, "c", &shape)?;
    Ok(SlotStates::from_flat(shape[0], shape[1], shape[2], hv, cv)?)
}

/// The wire form of the update rule.
pub fn update_rule(r: &UpdateRule) -> pb::UpdateRule {
    pb::UpdateRule {
        beta1: r.adam.beta1,
        beta2: r.adam.beta2,
        epsilon: r.adam.epsilon,
        compat: match r.compat {
            Compat::Keras => pb::Compat::Keras,
            Compat::Torch => pb::Compat::Torch,
        } as i32,
        clip_norm: r.clip_norm.unwrap_or(0.0),
    }
}

/// Reads an update rule.
pub fn update_rule_in(r: Option<&pb::UpdateRule>) -> Result<UpdateRule, WireError> {
    let r = r.ok_or_else(|| WireError::Missing {
        what: "update".into(),
    })?;
    let compat = match pb::Compat::try_from(r.compat) {
        Ok(pb::Compat::Keras) => Compat::Keras,
        Ok(pb::Compat::Torch) => Compat::Torch,
        _ => {
            return Err(invalid(
                "update.compat",
                "COMPAT_KERAS or COMPAT_TORCH",
                r.compat.to_string(),
            ));
        }
    };
    for (what, v, ok) in [
        ("update.beta1", r.beta1, (0.0..1.0).contains(&r.beta1)),
        ("update.beta2", r.beta2, (0.0..1.0).contains(&r.beta2)),
        (
            "update.epsilon",
            r.epsilon,
            r.epsilon.is_finite() && r.epsilon > 0.0,
        ),
        (
            "update.clip_norm",
            r.clip_norm,
            r.clip_norm.is_finite() && r.clip_norm >= 0.0,
        ),
    ] {
        if !ok {
            return Err(invalid(what, "a value in its range", v.to_string()));
        }
    }
    Ok(UpdateRule {
        adam: AdamConfig {
            lr: 0.0,
            beta1: r.beta1,
            beta2: r.beta2,
            epsilon: r.epsilon,
        },
        compat,
        clip_norm: (r.clip_norm > 0.0).then_some(r.clip_norm),
    })
}

/// The wire form of a view for one member.
pub fn view(v: &View) -> pb::View {
    let (h, c) = states_tensors(&v.states);
    let (params, adam_m, adam_v, adam_t) = match &v.state {
        Some(r) => {
            let n = r.params.len();
            (
                Some(tensor(&[n], &r.params)),
                Some(tensor(&[n], &r.adam.m)),
                Some(tensor(&[n], &r.adam.v)),
                r.adam.t,
            )
        }
        None => (None, None, None, 0),
    };
    pb::View {
        id: v.id,
        start_step: v.start_step,
        member: v.member as u32,
        members: v
            .members
            .iter()
            .map(|m| pb::Member {
                index: m.index as u32,
                first_slot: m.slots.start as u64,
                slots: m.slots.len() as u32,
                address: m.address.clone(),
                pair_token: Bytes::from(m.pair_token.clone()),
            })
            .collect(),
        reduction: match v.reduction {
            Reduction::Direct => pb::Reduction::Direct,
            Reduction::ScatterGather => pb::Reduction::ScatterGather,
        } as i32,
        chunks: v.chunks as u32,
        update: Some(update_rule(&v.update)),
        depth: v.depth as u32,
        params,
        adam_m,
        adam_v,
        adam_t,
        digest: v.digest,
        h: Some(h),
        c: Some(c),
        simulate_ms_per_slot: v.simulate_ms_per_slot,
    }
}

/// Reads a view (its blobs fetched) for a model `cfg`: members must be numbered in order, their
/// slot ranges contiguous from 0, the receiver among them, and every tensor of the right shape.
pub fn view_in(v: &pb::View, cfg: &ModelConfig) -> Result<View, WireError> {
    let n = model::params::ParamLayout::new(cfg).len();
    if v.members.is_empty() {
        return Err(invalid("view.members", "at least one member", "none"));
    }
    let mut members = Vec::with_capacity(v.members.len());
    let mut next = 0u64;
    for (i, m) in v.members.iter().enumerate() {
        if m.index as usize != i || m.first_slot != next || m.slots == 0 {
            return Err(invalid(
                "view.members",
                format!("member {i} with slots from {next}"),
                format!(
                    "member {} with {} slots from {}",
                    m.index, m.slots, m.first_slot
                ),
            ));
        }
        let end = next + u64::from(m.slots);
        members.push(Member {
            index: i,
            slots: next as usize..end as usize,
            address: m.address.clone(),
            pair_token: m.pair_token.to_vec(),
        });
        next = end;
    }
    let member = v.member as usize;
    if member >= members.len() {
        return Err(invalid(
            "view.member",
            format!("an index below {}", members.len()),
            member.to_string(),
        ));
    }
    let reduction = match pb::Reduction::try_from(v.reduction) {
        Ok(pb::Reduction::Direct) => Reduction::Direct,
        Ok(pb::Reduction::ScatterGather) => Reduction::ScatterGather,
        _ => {
            return Err(invalid(
                "view.reduction",
                "REDUCTION_DIRECT or REDUCTION_SCATTER_GATHER",
                v.reduction.to_string(),
            ));
        }
    };
    let chunks = v.chunks as usize;
    if chunks == 0 || chunks > n.max(1) {
        return Err(invalid(
            "view.chunks",
            format!("1 to {n} chunks of {n} parameters"),
            chunks.to_string(),
        ));
    }
    let state = match &v.params {
        Some(_) => Some(Replica {
            params: decode(v.params.as_ref(), "view.params", &[n])?,
            adam: AdamState {
                m: decode(v.adam_m.as_ref(), "view.adam_m", &[n])?,
                v: decode(v.adam_v.as_ref(), "view.adam_v", &[n])?,
                t: v.adam_t,
            },
        }),
        None => None,
    };
    let slots = members[member].slots.len();
    let states = decode_states(v.h.as_ref(), v.c.as_ref(), [cfg.layers, slots, cfg.hidden])?;
    if !(v.simulate_ms_per_slot.is_finite() && v.simulate_ms_per_slot >= 0.0) {
        return Err(invalid(
            "view.simulate_ms_per_slot",
            "a finite value >= 0",
            v.simulate_ms_per_slot.to_string(),
        ));
    }
    Ok(View {
        id: v.id,
        start_step: v.start_step,
        member,
        members,
        reduction,
        chunks,
        update: update_rule_in(v.update.as_ref())?,
        depth: (v.depth as usize).max(1),
        state,
        digest: v.digest,
        states,
        simulate_ms_per_slot: v.simulate_ms_per_slot,
    })
}

/// A directive as the coordinator sends it.
#[derive(Debug, Clone)]
pub enum DirectiveOut {
    /// A view (its tensors possibly moved to blobs).
    View(Box<pb::View>),
    /// One step's work.
    Work(Box<pb::Assignment>),
    /// Upload the gradient of a step.
    Upload(u64),
    /// The job is over.
    Finished(String),
    /// Not in a view yet.
    Wait(String),
}

/// The wire form of a directive.
pub fn directive(d: DirectiveOut) -> pb::Directive {
    use pb::directive::Kind;
    pb::Directive {
        kind: Some(match d {
            DirectiveOut::View(v) => Kind::View(*v),
            DirectiveOut::Work(a) => Kind::Work(*a),
            DirectiveOut::Upload(step) => Kind::Upload(pb::GradientRequest { step }),
            DirectiveOut::Finished(message) => Kind::Finished(pb::Finished { message }),
            DirectiveOut::Wait(reason) => Kind::Wait(pb::Wait { reason }),
        }),
    }
}

/// Reads a directive (views and work are decoded once their blobs are fetched).
pub fn directive_in(d: pb::Directive) -> Result<DirectiveOut, WireError> {
    use pb::directive::Kind;
    Ok(match d.kind {
        Some(Kind::View(v)) => DirectiveOut::View(Box::new(v)),
        Some(Kind::Work(a)) => DirectiveOut::Work(Box::new(a)),
        Some(Kind::Upload(u)) => DirectiveOut::Upload(u.step),
        Some(Kind::Finished(f)) => DirectiveOut::Finished(f.message),
        Some(Kind::Wait(w)) => DirectiveOut::Wait(w.reason),
        None => {
            return Err(WireError::Missing {
                what: "directive".into(),
            });
        }
    })
}

/// A follow request of worker `id`.
pub fn follow_request(id: &str) -> pb::FollowRequest {
    pb::FollowRequest {
        worker_id: id.to_string(),
    }
}

fn record(r: &StepRecord) -> pb::Record {
    use pb::record::Kind;
    let kind = match &r.record {
        Record::Computed(c) => {
            let (h, cc) = states_tensors(&c.finals);
            Kind::Computed(pb::Computed {
                loss_sum: c.loss_sum,
                h: Some(h),
                c: Some(cc),
                grad_norm: c.grad_norm,
                compute_ms: c.compute_ms,
            })
        }
        Record::Reduced(d) => Kind::Reduced(pb::Reduced {
            chunks: d.chunks.iter().map(|v| tensor(&[v.len()], v)).collect(),
            digest: d.digest,
            reduce_ms: d.reduce_ms,
            wait_ms: d.wait_ms,
            update_ms: d.update_ms,
            bytes_sent: d.bytes_sent,
            bytes_received: d.bytes_received,
        }),
        Record::Gradient(g) => Kind::Gradient(pb::Gradient {
            grad: Some(tensor(&[g.len()], g)),
        }),
        Record::Failure(reason) => Kind::Failure(pb::Failure {
            reason: reason.clone(),
        }),
        Record::PeerFault { member, reason } => Kind::PeerFault(pb::PeerFault {
            member: *member as u32,
            reason: reason.clone(),
        }),
    };
    pb::Record {
        step: r.step,
        kind: Some(kind),
    }
}

/// A report of worker `id` in view `view`.
pub fn report_request(id: &str, view: u64, records: &[StepRecord]) -> pb::ReportRequest {
    pb::ReportRequest {
        worker_id: id.to_string(),
        view,
        records: records.iter().map(record).collect(),
    }
}

/// The sizes a member's records must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// Final states: `[layers, slots, hidden]`.
    pub state: [usize; 3],
    /// Parameters.
    pub params: usize,
    /// Chunks of the parameter vector.
    pub chunks: usize,
    /// Members of the view.
    pub members: usize,
    /// The member's index.
    pub member: usize,
}

/// Longest free text kept from a report.
const MAX_REASON: usize = 1024;

fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON)
        .collect()
}

/// Reads the records of a report (its blobs resolved), each checked against `expect`; the first
/// one that does not fit is an error naming its step.
pub fn records(
    r: &pb::ReportRequest,
    expect: &Expect,
) -> Vec<Result<StepRecord, (u64, WireError)>> {
    use pb::record::Kind;
    r.records
        .iter()
        .map(|rec| {
            let step = rec.step;
            let at = |e: WireError| (step, e);
            let record = match &rec.kind {
                Some(Kind::Computed(c)) => {
                    let finals =
                        decode_states(c.h.as_ref(), c.c.as_ref(), expect.state).map_err(at)?;
                    for (what, v) in [("grad_norm", c.grad_norm), ("compute_ms", c.compute_ms)] {
                        if !(v.is_finite() && v >= 0.0) {
                            return Err(at(invalid(what, "a finite value >= 0", v.to_string())));
                        }
                    }
                    Record::Computed(Computed {
                        loss_sum: c.loss_sum,
                        finals,
                        grad_norm: c.grad_norm,
                        compute_ms: c.compute_ms,
                    })
                }
                Some(Kind::Reduced(d)) => {
                    let owned: Vec<usize> =
                        owned_chunks(expect.chunks, expect.members, expect.member).collect();
                    if d.chunks.len() != owned.len() {
                        return Err(at(invalid(
                            "reduced.chunks",
                            format!(
                                "{} chunks (those member {} owns)",
                                owned.len(),
                                expect.member
                            ),
                            format!("{} chunks", d.chunks.len()),
                        )));
                    }
                    let mut chunks = Vec::with_capacity(owned.len());
                    for (t, &k) in d.chunks.iter().zip(&owned) {
                        let len = chunk_range(expect.params, expect.chunks, k).len();
                        chunks.push(
                            decode(Some(t), &format!("summed gradient chunk {k}"), &[len])
                                .map_err(at)?,
                        );
                    }
                    let times = [d.reduce_ms, d.wait_ms, d.update_ms];
                    if times.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                        return Err(at(invalid(
                            "reduced times",
                            "finite values >= 0",
                            format!("{times:?}"),
                        )));
                    }
                    Record::Reduced(Reduced {
                        chunks,
                        digest: d.digest,
                        reduce_ms: d.reduce_ms,
                        wait_ms: d.wait_ms,
                        update_ms: d.update_ms,
                        bytes_sent: d.bytes_sent,
                        bytes_received: d.bytes_received,
                    })
                }
                Some(Kind::Gradient(g)) => {
                    Record::Gradient(decode(g.grad.as_ref(), "grad", &[expect.params]).map_err(at)?)
                }
                Some(Kind::Failure(f)) => Record::Failure(clean(&f.reason)),
                Some(Kind::PeerFault(p)) => {
                    let member = p.member as usize;
                    if member >= expect.members || member == expect.member {
                        return Err(at(invalid(
                            "peer_fault.member",
                            format!("another member of the {} in the view", expect.members),
                            member.to_string(),
                        )));
                    }
                    Record::PeerFault {
                        member,
                        reason: clean(&p.reason),
                    }
                }
                None => {
                    return Err(at(WireError::Missing {
                        what: "record".into(),
                    }));
                }
            };
            Ok(StepRecord { step, record })
        })
        .collect()
}

/// The phase of a chunk exchanged between members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The sender's own gradient for the chunk.
    Contribution,
    /// The summed gradient of a chunk the sender owns.
    Reduced,
}

/// A chunk exchanged between members.
#[derive(Debug, Clone)]
pub struct PeerChunk {
    /// The step.
    pub step: u64,
    /// Contribution or sum.
    pub phase: Phase,
    /// Which chunk.
    pub chunk: usize,
    /// Its values.
    pub values: Vec<f32>,
}

/// The wire form of a chunk.
pub fn peer_chunk(step: u64, phase: Phase, chunk: usize, values: &[f32]) -> pb::PeerChunk {
    pb::PeerChunk {
        step,
        phase: match phase {
            Phase::Contribution => pb::Phase::Contribution,
            Phase::Reduced => pb::Phase::Reduced,
        } as i32,
        chunk: chunk as u32,
        values: Some(tensor(&[values.len()], values)),
    }
}

/// Reads a chunk of a vector of `len` values cut into `chunks`.
pub fn peer_chunk_in(c: &pb::PeerChunk, len: usize, chunks: usize) -> Result<PeerChunk, WireError> {
    let phase = match pb::Phase::try_from(c.phase) {
        Ok(pb::Phase::Contribution) => Phase::Contribution,
        Ok(pb::Phase::Reduced) => Phase::Reduced,
        _ => {
            return Err(invalid(
                "phase",
                "PHASE_CONTRIBUTION or PHASE_REDUCED",
                c.phase.to_string(),
            ));
        }
    };
    let k = c.chunk as usize;
    if k >= chunks {
        return Err(invalid(
            "chunk",
            format!("an index below {chunks}"),
            k.to_string(),
        ));
    }
    let n = chunk_range(len, chunks, k).len();
    Ok(PeerChunk {
        step: c.step,
        phase,
        chunk: k,
        values: decode(c.values.as_ref(), &format!("chunk {k}"), &[n])?,
    })
}

/// A frame of a peer connection: `0`, the message's length (4 bytes, big-endian), the message.
pub fn frame(f: &pb::PeerFrame) -> Vec<u8> {
    let n = f.encoded_len();
    let mut out = Vec::with_capacity(5 + n);
    out.push(0);
    out.extend_from_slice(&(n as u32).to_be_bytes());
    f.encode(&mut out).expect("a Vec grows");
    out
}

/// The frame of a chunk.
pub fn chunk_frame(c: pb::PeerChunk) -> Vec<u8> {
    frame(&pb::PeerFrame {
        kind: Some(pb::peer_frame::Kind::Chunk(c)),
    })
}

/// Reads one frame of at most `max` bytes; `Ok(None)` at a clean end of the connection.
pub fn read_frame(r: &mut impl std::io::Read, max: usize) -> Result<Option<pb::PeerFrame>, String> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    r.read_exact(&mut head[1..]).map_err(|e| e.to_string())?;
    if head[0] != 0 {
        return Err(format!(
            "frame: expected compression flag 0, got {}",
            head[0]
        ));
    }
    let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if n > max {
        return Err(format!("frame: expected at most {max} bytes, got {n}"));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    pb::PeerFrame::decode(body.as_slice())
        .map(Some)
        .map_err(|e| format!("frame: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_view(cfg: &ModelConfig) -> View {
        let n = model::params::ParamLayout::new(cfg).len();
        View {
            id: 7,
            start_step: 12,
            member: 1,
            members: vec![
                Member {
                    index: 0,
                    slots: 0..3,
                    address: "127.0.0.1:1".into(),
                    pair_token: vec![1, 2],
                },
                Member {
                    index: 1,
                    slots: 3..10,
                    address: "127.0.0.1:2".into(),
                    pair_token: vec![],
                },
            ],
            reduction: Reduction::Direct,
            chunks: 2,
            update: UpdateRule {
                adam: AdamConfig {
                    lr: 0.0,
                    ..AdamConfig::default()
                },
                compat: Compat::Torch,
                clip_norm: Some(1.5),
            },
            depth: 4,
            state: Some(Replica {
                params: vec![0.5; n],
                adam: AdamState {
                    m: vec![0.25; n],
                    v: vec![0.125; n],
                    t: 12,
                },
            }),
            digest: 99,
            states: SlotStates::zeros(cfg.layers, 7, cfg.hidden),
            simulate_ms_per_slot: 0.0,
        }
    }

    #[test]
    fn views_round_trip_and_are_checked() {
        let cfg = ModelConfig::seed();
        let v = a_view(&cfg);
        let back = view_in(&view(&v), &cfg).unwrap();
        assert_eq!(
            (
                back.id,
                back.start_step,
                back.member,
                back.chunks,
                back.depth
            ),
            (7, 12, 1, 2, 4)
        );
        assert_eq!(back.members, v.members);
        assert_eq!(back.update, v.update);
        assert_eq!(back.state, v.state);
        assert_eq!(back.states, v.states);
        let mut bad = view(&v);
        bad.members[1].first_slot = 4;
        assert!(
            view_in(&bad, &cfg)
                .unwrap_err()
                .to_string()
                .contains("members")
        );
        let mut bad = view(&v);
        bad.member = 2;
        assert!(
            view_in(&bad, &cfg)
                .unwrap_err()
                .to_string()
                .contains("member")
        );
        let mut bad = view(&v);
        bad.h = Some(tensor(&[2, 3, 8], &[0.0; 48]));
        let e = view_in(&bad, &cfg).unwrap_err().to_string();
        assert!(e.contains("h: expected shape (2, 7, 8)"), "{e}");
        let mut bad = view(&v);
        bad.update.as_mut().unwrap().beta1 = 1.5;
        assert!(
            view_in(&bad, &cfg)
                .unwrap_err()
                .to_string()
                .contains("beta1")
        );
    }

    #[test]
    fn records_round_trip_and_are_checked() {
        let expect = Expect {
            state: [2, 3, 8],
            params: 10,
            chunks: 3,
            members: 2,
            member: 1,
        };
        let recs = vec![
            StepRecord {
                step: 4,
                record: Record::Computed(Computed {
                    loss_sum: 2.5,
                    finals: SlotStates::zeros(2, 3, 8),
                    grad_norm: 1.0,
                    compute_ms: 3.0,
                }),
            },
            StepRecord {
                step: 4,
                record: Record::Reduced(Reduced {
                    // member 1 of 2 owns chunk 1 of 3 (values 4..8)
                    chunks: vec![vec![1.0; 4]],
                    digest: 5,
                    ..Default::default()
                }),
            },
            StepRecord {
                step: 5,
                record: Record::PeerFault {
                    member: 0,
                    reason: "bad\nchunk".into(),
                },
            },
        ];
        let wire = report_request("id", 3, &recs);
        let back: Vec<StepRecord> = records(&wire, &expect)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(
            matches!(&back[1].record, Record::Reduced(d) if d.chunks == vec![vec![1.0; 4]] && d.digest == 5)
        );
        assert!(
            matches!(&back[2].record, Record::PeerFault { member: 0, reason } if reason == "badchunk")
        );
        let mut bad = wire.clone();
        if let Some(pb::record::Kind::Reduced(d)) = bad.records[1].kind.as_mut() {
            d.chunks[0] = tensor(&[3], &[1.0; 3]);
        }
        let r = records(&bad, &expect);
        let (step, e) = r[1].as_ref().unwrap_err();
        assert_eq!(*step, 4);
        assert!(
            e.to_string()
                .contains("summed gradient chunk 1: expected shape (4,)"),
            "{e}"
        );
        let mut bad = wire;
        if let Some(pb::record::Kind::PeerFault(p)) = bad.records[2].kind.as_mut() {
            p.member = 1;
        }
        assert!(
            records(&bad, &expect)[2].is_err(),
            "a member cannot accuse itself"
        );
    }

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let f = chunk_frame(peer_chunk(3, Phase::Contribution, 1, &[1.0, 2.0]));
        assert_eq!(f[0], 0);
        let mut r = std::io::Cursor::new([f.clone(), f.clone()].concat());
        for _ in 0..2 {
            let got = read_frame(&mut r, 1 << 20).unwrap().unwrap();
            assert!(matches!(got.kind, Some(pb::peer_frame::Kind::Chunk(c)) if c.chunk == 1));
        }
        assert!(
            read_frame(&mut r, 1 << 20).unwrap().is_none(),
            "a clean end"
        );
        let e = read_frame(&mut std::io::Cursor::new(f.clone()), 8).unwrap_err();
        assert!(e.contains("at most 8 bytes"), "{e}");
        let mut bad = f.clone();
        bad[0] = 1;
        assert!(
            read_frame(&mut std::io::Cursor::new(bad), 1 << 20)
                .unwrap_err()
                .contains("flag")
        );
        let e = read_frame(&mut std::io::Cursor::new(&f[..f.len() - 1]), 1 << 20).unwrap_err();
        assert!(!e.is_empty(), "a cut frame is an error, not an end");
    }

    #[test]
    fn peer_chunks_round_trip_and_are_checked() {
        let c = peer_chunk(3, Phase::Reduced, 2, &[1.0, 2.0]);
        let back = peer_chunk_in(&c, 8, 4).unwrap();
        assert_eq!((back.step, back.phase, back.chunk), (3, Phase::Reduced, 2));
        assert_eq!(back.values, vec![1.0, 2.0]);
        assert!(
            peer_chunk_in(&c, 8, 2)
                .unwrap_err()
                .to_string()
                .contains("below 2")
        );
        assert!(
            peer_chunk_in(&c, 12, 4)
                .unwrap_err()
                .to_string()
                .contains("expected shape (3,)")
        );
        let nan = peer_chunk(3, Phase::Contribution, 0, &[f32::NAN, 1.0]);
        assert!(
            peer_chunk_in(&nan, 8, 4)
                .unwrap_err()
                .to_string()
                .contains("finite")
        );
    }
}
