//! Replicated training: the view a set of workers computes in, the replica of the parameters and
//! Adam state each member holds, how the parameter vector is cut into chunks for the gradient sum,
//! and what a member reports about each step. Pure data and arithmetic, shared by the coordinator
//! (which keeps the authoritative copy) and the workers; the wire forms are in `proto::convert`.
//!
//! Invariant: two replicas that start from the same state and apply the same summed gradients
//! with [`Replica::apply`] stay identical bit for bit, which [`digest`] checks after every step.

use std::ops::Range;

use crate::adam::AdamState;
use crate::config::ModelConfig;
use crate::error::{ModelError, check_finite};
use crate::params::ParamLayout;
use crate::state::SlotStates;
pub use crate::trainer::{UpdateRule, digest};

/// How the members of a view sum their gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Every member sends its whole gradient to every other member, which sums all of them in
    /// member order: one message delay, `(members - 1) * params` values sent per member.
    Direct,
    /// Chunk `k` is owned by member `k % members`: members send their part of each chunk to its
    /// owner, which sums them in member order and sends the sum to everyone: two message delays,
    /// about `2 * params` values sent per member whatever the number of members.
    ScatterGather,
}

impl Reduction {
    /// Direct for a sum whose full exchange stays small (`(members - 1) * params * 4` bytes per
    /// member up to [`DIRECT_MAX_BYTES`]): then one message delay beats two. Scatter-gather
    /// otherwise, so that no member's traffic grows with the number of members.
    pub fn for_view(members: usize, params: usize) -> Self {
        if members.saturating_sub(1) * params * 4 <= DIRECT_MAX_BYTES {
            Self::Direct
        } else {
            Self::ScatterGather
        }
    }
}

/// Largest exchange per member (bytes) that is summed directly.
pub const DIRECT_MAX_BYTES: usize = 256 << 10;

/// Largest chunk (bytes) of the gradient sum: small enough for any message limit and for one
/// chunk's sum to overlap the next chunk's transfer.
pub const CHUNK_MAX_BYTES: usize = 1 << 20;

/// How many chunks a parameter vector of `len` values is cut into for `members` members: none
/// larger than [`CHUNK_MAX_BYTES`] or `max_message / 2` bytes, and under scatter-gather at least
/// one per member (which spreads the summing over all of them).
pub fn chunk_count(len: usize, members: usize, reduction: Reduction, max_message: usize) -> usize {
    let max_values = (CHUNK_MAX_BYTES.min(max_message / 2) / 4).max(1);
    let least = match reduction {
        Reduction::Direct => 1,
        Reduction::ScatterGather => members,
    };
    len.div_ceil(max_values).max(least).max(1).min(len.max(1))
}

/// Values `range` of chunk `k` of `len` values cut into `chunks`.
pub fn chunk_range(len: usize, chunks: usize, k: usize) -> Range<usize> {
    let size = len.div_ceil(chunks.max(1));
    (k * size).min(len)..((k + 1) * size).min(len)
}

/// The chunks member `m` of `members` owns under scatter-gather (and reports under both
/// reductions): `m, m + members, ...`.
pub fn owned_chunks(chunks: usize, members: usize, m: usize) -> impl Iterator<Item = usize> {
    (m..chunks).step_by(members.max(1))
}

/// The parameters and Adam state one process holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    /// Parameters, flat layout.
    pub params: Vec<f32>,
    /// Adam's moments and step count.
    pub adam: AdamState,
}

impl Replica {
    /// Applies a step's update (see [`UpdateRule::apply`]) and returns the digest of the new
    /// parameters. An update that would make a parameter or moment non-finite is an error, and
    /// the replica is then unusable: its holder drops it (the coordinator, whose own copy refuses
    /// the same update, fails the job; nothing non-finite is ever sent).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        rule: &UpdateRule,
        model: &ModelConfig,
        layout: &ParamLayout,
        step: u64,
        lr: f64,
        outputs: usize,
        grad_sum: &[f32],
    ) -> Result<u64, ModelError> {
        if grad_sum.len() != self.params.len() {
            return Err(ModelError::shape(
                "summed gradient",
                &[self.params.len()],
                &[grad_sum.len()],
            ));
        }
        check_finite(&format!("summed gradient of step {step}"), grad_sum)?;
        rule.apply(
            model,
            layout,
            lr,
            outputs,
            grad_sum,
            &mut self.params,
            &mut self.adam,
        );
        check_finite(
            &format!("parameters after the update of step {step}"),
            &self.params,
        )?;
        check_finite(&format!("Adam moments after step {step}"), &self.adam.m)?;
        check_finite(&format!("Adam moments after step {step}"), &self.adam.v)?;
        Ok(digest(&self.params))
    }
}

/// One member of a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its index (the order of sums).
    pub index: usize,
    /// Its slots.
    pub slots: Range<usize>,
    /// Where it accepts connections from the other workers.
    pub address: String,
    /// The secret it shares with the receiver of the view (empty for the receiver itself).
    pub pair_token: Vec<u8>,
}

/// A view as one member receives it.
#[derive(Debug, Clone)]
pub struct View {
    /// Increases with every view of the job.
    pub id: u64,
    /// Its first step.
    pub start_step: u64,
    /// The receiver's index.
    pub member: usize,
    /// Every member, in index order.
    pub members: Vec<Member>,
    /// How gradients are summed.
    pub reduction: Reduction,
    /// Chunks of the parameter vector.
    pub chunks: usize,
    /// How a summed gradient becomes the update.
    pub update: UpdateRule,
    /// Steps of work handed out past the last committed one.
    pub depth: usize,
    /// The committed replica at the first step, when the receiver does not hold it already.
    pub state: Option<Replica>,
    /// Digest of the committed parameters at the first step.
    pub digest: u64,
    /// Committed states of the receiver's slots at the first step.
    pub states: SlotStates,
    /// Benchmark aid: milliseconds to sleep per slot instead of computing (0: compute).
    pub simulate_ms_per_slot: f64,
}

impl View {
    /// The receiver.
    pub fn me(&self) -> &Member {
        &self.members[self.member]
    }
}

/// What a member reports about one step.
#[derive(Debug, Clone)]
pub enum Record {
    /// Its shard is computed.
    Computed(Computed),
    /// The gradient is summed and the update applied to its replica.
    Reduced(Reduced),
    /// The gradient of its shard, which a second opinion asked for.
    Gradient(Vec<f32>),
    /// It could not compute the step.
    Failure(String),
    /// Another member sent something unusable.
    PeerFault {
        /// That member's index.
        member: usize,
        /// What was wrong.
        reason: String,
    },
}

/// A computed shard.
#[derive(Debug, Clone)]
pub struct Computed {
    /// Sum of the loss over the shard's valid outputs.
    pub loss_sum: f64,
    /// Final `(h, c)` of the shard's slots.
    pub finals: SlotStates,
    /// L2 norm of the shard's gradient.
    pub grad_norm: f64,
    /// Milliseconds spent computing.
    pub compute_ms: f64,
}

/// A member's end of a step: its chunks of the summed gradient and its parameters' digest.
#[derive(Debug, Clone, Default)]
pub struct Reduced {
    /// The summed gradient of each chunk it owns ([`owned_chunks`]), in that order.
    pub chunks: Vec<Vec<f32>>,
    /// Digest of its parameters after the update.
    pub digest: u64,
    /// Milliseconds from the end of the compute to the summed gradient.
    pub reduce_ms: f64,
    /// Of which waiting for other members.
    pub wait_ms: f64,
    /// Milliseconds applying the update.
    pub update_ms: f64,
    /// Peer bytes sent for the step.
    pub bytes_sent: u64,
    /// Peer bytes received for the step.
    pub bytes_received: u64,
}

/// A record of one step.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// The step.
    pub step: u64,
    /// What happened.
    pub record: Record,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdamConfig, Compat};

    #[test]
    fn chunks_cover_the_vector_once_and_owners_take_every_chunk() {
        for (len, members) in [(10, 3), (978, 2), (1, 4), (200_000, 32), (7, 7)] {
            let n = chunk_count(len, members, Reduction::ScatterGather, 64 << 20);
            assert!(n >= members.min(len), "{len} {members}: {n}");
            assert_eq!(
                chunk_count(len, members, Reduction::Direct, 64 << 20),
                len.div_ceil(CHUNK_MAX_BYTES / 4)
            );
            let mut seen = vec![0u8; len];
            for k in 0..n {
                for i in chunk_range(len, n, k) {
                    seen[i] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{len} {members}");
            let mut owned: Vec<usize> = (0..members)
                .flat_map(|m| owned_chunks(n, members, m))
                .collect();
            owned.sort_unstable();
            assert_eq!(owned, (0..n).collect::<Vec<_>>());
        }
        // a small message limit cuts more chunks
        assert_eq!(chunk_count(1_000_000, 2, Reduction::Direct, 1 << 20), 8);
    }

    #[test]
    fn direct_for_small_exchanges_scatter_gather_for_large() {
        assert_eq!(Reduction::for_view(2, 978), Reduction::Direct);
        assert_eq!(Reduction::for_view(2, 50_000), Reduction::Direct);
        assert_eq!(Reduction::for_view(3, 50_000), Reduction::ScatterGather);
        assert_eq!(Reduction::for_view(32, 200_000), Reduction::ScatterGather);
    }

    #[test]
    fn a_non_finite_gradient_is_refused_and_updates_are_digested() {
        let model = ModelConfig::seed();
        let layout = ParamLayout::new(&model);
        let params = crate::params::init_params(&model, 1);
        let mut r = Replica {
            adam: AdamState::new(params.len()),
            params,
        };
        let rule = UpdateRule {
            adam: AdamConfig::default(),
            compat: Compat::Keras,
            clip_norm: None,
        };
        let before = r.clone();
        let mut g = vec![0.5f32; layout.len()];
        g[3] = f32::INFINITY;
        let e = r
            .apply(&rule, &model, &layout, 4, 1e-3, 10, &g)
            .unwrap_err();
        assert!(e.to_string().contains("step 4"), "{e}");
        assert_eq!(r, before, "the gradient is checked before anything changes");
        g[3] = 0.5;
        let d = r.apply(&rule, &model, &layout, 4, 1e-3, 10, &g).unwrap();
        assert_eq!(d, digest(&r.params));
        assert_ne!(d, digest(&before.params));
    }
}
