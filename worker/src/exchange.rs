//! The gradient sum among the members of a view, on the compute thread: this member's gradient
//! goes out in chunks over its [`Link`]s, the chunks it needs come from the [`Inbox`], and every
//! sum is taken in member order, so every member (or under scatter-gather, each chunk's owner)
//! computes the same bits from the same contributions.
//!
//! - Direct: each member sends every chunk of its gradient to every other member and sums all of
//!   them itself: one message delay.
//! - Scatter-gather: chunk `k` is owned by member `k % members`; members send their part of it
//!   to the owner, which sums and sends the sum to everyone: two message delays, and about twice
//!   the parameters in and out per member whatever the number of members.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use model::replica::{Reduction, chunk_range};
use proto::step::{Phase, chunk_frame, peer_chunk};

use crate::peer::{Inbox, Link, Missing};

/// The summed gradient of a step and what it cost.
#[derive(Debug)]
pub(crate) struct Summed {
    /// The sum over every member's gradient.
    pub(crate) grad: Vec<f32>,
    /// Milliseconds from the start of the sum to its end.
    pub(crate) ms: f64,
    /// Of which waiting for other members' chunks.
    pub(crate) wait_ms: f64,
    /// Peer bytes sent.
    pub(crate) sent: u64,
    /// Peer bytes received.
    pub(crate) received: u64,
}

/// One view's gradient sum.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// The view.
    pub(crate) view: u64,
    /// This member's index.
    pub(crate) me: usize,
    /// Members.
    pub(crate) members: usize,
    /// Parameters.
    pub(crate) len: usize,
    /// Chunks of the parameter vector.
    pub(crate) chunks: usize,
    /// How the sum is taken.
    pub(crate) reduction: Reduction,
    /// A link to every other member (`None` for this one).
    pub(crate) links: Vec<Option<Link>>,
    /// Where their chunks arrive.
    pub(crate) inbox: Arc<Inbox>,
    /// The view the session is in now: a newer one ends every wait.
    pub(crate) current: Arc<AtomicU64>,
}

impl Exchange {
    fn owner(&self, k: usize) -> usize {
        k % self.members
    }

    /// Sums `mine` with the other members' gradients of `step`. `short` sends every chunk one
    /// value short (an injected fault: a broken client).
    pub(crate) fn sum(&self, step: u64, mine: &[f32], short: bool) -> Result<Summed, Missing> {
        let t0 = Instant::now();
        self.inbox.advance(self.view, step);
        let mut sent = 0u64;
        let mut wait = 0.0f64;
        let mut grad = vec![0.0f32; self.len];
        if self.members == 1 {
            grad.copy_from_slice(mine);
            return Ok(Summed {
                grad,
                ms: ms(t0),
                wait_ms: 0.0,
                sent: 0,
                received: 0,
            });
        }
        let current = || self.current.load(Ordering::Acquire);
        let live = || current() == self.view;
        // a link that fails (its member died) leaves the sum waiting until the view ends
        let send = |l: &Link, f: &[u8]| match l.send(f, &live) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(step, cause = %e, "could not send a chunk to a peer");
                0
            }
        };
        let mut take = |phase: Phase, k: usize, from: usize| {
            let w = Instant::now();
            let r = self.inbox.take(self.view, (step, phase, k, from), &current);
            wait += ms(w);
            r
        };
        match self.reduction {
            Reduction::Direct => {
                for k in 0..self.chunks {
                    let f = chunk_frame(peer_chunk(
                        step,
                        Phase::Contribution,
                        k,
                        trim(&mine[self.range(k)], short),
                    ));
                    for l in self.links.iter().flatten() {
                        sent += send(l, &f);
                    }
                }
                for k in 0..self.chunks {
                    let r = self.range(k);
                    self.sum_chunk(
                        &mut grad[r.clone()],
                        k,
                        &mine[r],
                        Phase::Contribution,
                        &mut take,
                    )?;
                }
            }
            Reduction::ScatterGather => {
                for k in (0..self.chunks).filter(|&k| self.owner(k) != self.me) {
                    let f = chunk_frame(peer_chunk(
                        step,
                        Phase::Contribution,
                        k,
                        trim(&mine[self.range(k)], short),
                    ));
                    if let Some(l) = &self.links[self.owner(k)] {
                        sent += send(l, &f);
                    }
                }
                for k in (0..self.chunks).filter(|&k| self.owner(k) == self.me) {
                    let r = self.range(k);
                    self.sum_chunk(
                        &mut grad[r.clone()],
                        k,
                        &mine[r.clone()],
                        Phase::Contribution,
                        &mut take,
                    )?;
                    let f = chunk_frame(peer_chunk(step, Phase::Reduced, k, trim(&grad[r], short)));
                    for l in self.links.iter().flatten() {
                        sent += send(l, &f);
                    }
                }
                for k in (0..self.chunks).filter(|&k| self.owner(k) != self.me) {
                    let r = self.range(k);
                    grad[r].copy_from_slice(&take(Phase::Reduced, k, self.owner(k))?);
                }
            }
        }
        Ok(Summed {
            grad,
            ms: ms(t0),
            wait_ms: wait,
            sent,
            received: self.inbox.received(step),
        })
    }

    fn range(&self, k: usize) -> std::ops::Range<usize> {
        chunk_range(self.len, self.chunks, k)
    }

    /// `out = sum over members m in order of their chunk k` (this member's is `mine`).
    fn sum_chunk(
        &self,
        out: &mut [f32],
        k: usize,
        mine: &[f32],
        phase: Phase,
        take: &mut dyn FnMut(Phase, usize, usize) -> Result<Vec<f32>, Missing>,
    ) -> Result<(), Missing> {
        for m in 0..self.members {
            let theirs;
            let c: &[f32] = if m == self.me {
                mine
            } else {
                theirs = take(phase, k, m)?;
                &theirs
            };
            if m == 0 {
                out.copy_from_slice(c);
            } else {
                for (o, v) in out.iter_mut().zip(c) {
                    *o += v;
                }
            }
        }
        Ok(())
    }
}

/// `v`, one value short when `short` (an injected fault).
fn trim(v: &[f32], short: bool) -> &[f32] {
    if short && !v.is_empty() {
        &v[..v.len() - 1]
    } else {
        v
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
