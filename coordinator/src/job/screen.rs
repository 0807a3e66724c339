//! What a result must satisfy before it can be committed, and when two results of one shard
//! agree. Pure functions of the results and the run's statistics; no I/O.
//!
//! - Bounds no LSTM can break: `|h| <= 1` (`h = o * tanh(c)`), and `|c|` grows by at most 1 per
//!   time step (`c_t = f * c_{t-1} + i * g` with `f, i` in `(0, 1)` and `g` in `(-1, 1)`). A
//!   result outside them is corrupt: refused at once.
//! - The gradient norm per slot against the median of recently accepted results: far above it
//!   is suspicious (a flipped exponent bit, a flaky GPU) but may be a real spike, so the result
//!   waits for a second opinion (the coordinator computes the shard itself) instead of being
//!   refused.

use std::collections::VecDeque;

use model::state::SlotStates;
use model::trainer::l2_norm;

/// A shard result, as two opinions of it are compared.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Result<'a> {
    /// Sum of the loss.
    pub(crate) loss_sum: f64,
    /// The shard's gradient.
    pub(crate) grad: &'a [f32],
    /// Its final states.
    pub(crate) finals: &'a SlotStates,
}

/// Slack on `|h| <= 1` for rounding.
const H_SLACK: f32 = 1e-4;
/// Results kept for the running statistics.
const WINDOW: usize = 64;
/// A gradient norm per slot this many times the median is suspicious.
pub(crate) const SPIKE_RATIO: f64 = 20.0;

/// Checks the bounds every LSTM result satisfies; `init` are the states the shard started from
/// and `t` its time steps.
pub(crate) fn check_bounds(
    loss_sum: f64,
    finals: &SlotStates,
    init: &SlotStates,
    t: usize,
) -> std::result::Result<(), String> {
    if let Some((i, v)) = finals
        .h()
        .iter()
        .enumerate()
        .find(|(_, v)| v.abs() > 1.0 + H_SLACK)
    {
        return Err(format!(
            "final h: expected |h| <= 1 (h = o * tanh(c)), got {v} at index {i}"
        ));
    }
    let steps = t as f32;
    for (i, (c, c0)) in finals.c().iter().zip(init.c()).enumerate() {
        let bound = c0.abs() + steps;
        if c.abs() > bound * (1.0 + 1e-5) + 1e-4 {
            return Err(format!(
                "final c: expected |c| <= |c0| + T = {bound} after {t} steps, got {c} at index {i}"
            ));
        }
    }
    if !loss_sum.is_finite() || loss_sum < 0.0 {
        return Err(format!(
            "loss_sum: expected a finite non-negative value, got {loss_sum}"
        ));
    }
    Ok(())
}

/// The last [`WINDOW`] values in arrival order and the same values sorted, so that recording
/// one costs a binary search and a short move rather than a sort (it runs for every member's
/// result of every step).
#[derive(Debug, Default)]
struct Window {
    arrived: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl Window {
    fn push(&mut self, x: f64) {
        if self.arrived.len() == WINDOW
            && let Some(old) = self.arrived.pop_front()
            && let Ok(i) = self.sorted.binary_search_by(|v| v.total_cmp(&old))
        {
            self.sorted.remove(i);
        }
        self.arrived.push_back(x);
        let at = self.sorted.partition_point(|v| v.total_cmp(&x).is_lt());
        self.sorted.insert(at, x);
    }

    fn median(&self) -> Option<f64> {
        self.sorted.get(self.sorted.len() / 2).copied()
    }
}

/// Running statistics of accepted results: gradient norms per slot and shard times per slot,
/// with their medians (read at every step).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    norms: Window,
    ms_per_slot: Window,
}

impl Stats {
    /// Records an accepted result.
    pub(crate) fn record(&mut self, norm_per_slot: f64, ms_per_slot: Option<f64>) {
        self.norms.push(norm_per_slot);
        if let Some(ms) = ms_per_slot {
            self.ms_per_slot.push(ms);
        }
    }

    /// Why a result with this gradient norm per slot needs a second opinion, if it does.
    pub(crate) fn suspicion(&self, norm: f64) -> Option<String> {
        let m = self.norms.median()?;
        (norm > SPIKE_RATIO * m).then(|| {
            format!(
                "its gradient norm per slot {norm:.3e} is {:.0}x the median {m:.3e} of recent results",
                norm / m.max(f64::MIN_POSITIVE)
            )
        })
    }

    /// Median milliseconds per slot of accepted shards, once there is one.
    pub(crate) fn ms_per_slot(&self) -> Option<f64> {
        self.ms_per_slot.median()
    }
}

/// Whether two results of the same shard agree within what different engines and devices
/// produce (about 1e-5 relative); the error says where they differ.
pub(crate) fn agree(a: &Result<'_>, b: &Result<'_>) -> std::result::Result<(), String> {
    let loss_tol = 1e-4 * a.loss_sum.abs().max(b.loss_sum.abs()) + 1e-9;
    if (a.loss_sum - b.loss_sum).abs() > loss_tol {
        return Err(format!("loss_sum {} vs {}", a.loss_sum, b.loss_sum));
    }
    let diff: Vec<f32> = a.grad.iter().zip(b.grad).map(|(x, y)| x - y).collect();
    let (na, nb, nd) = (l2_norm(a.grad), l2_norm(b.grad), l2_norm(&diff));
    if nd > 1e-3 * na.max(nb) + 1e-12 {
        return Err(format!(
            "gradient norms {na:.6e} vs {nb:.6e}, difference {nd:.3e}"
        ));
    }
    for (what, x, y) in [
        ("h", a.finals.h(), b.finals.h()),
        ("c", a.finals.c(), b.finals.c()),
    ] {
        if let Some((i, (p, q))) = x
            .iter()
            .zip(y)
            .enumerate()
            .find(|(_, (p, q))| (*p - *q).abs() > 1e-3 * (1.0 + p.abs().max(q.abs())))
        {
            return Err(format!("final {what}[{i}] {p} vs {q}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(h: f32, c: f32) -> SlotStates {
        SlotStates::from_flat(1, 2, 2, vec![h; 4], vec![c; 4]).unwrap()
    }

    #[test]
    fn bounds_no_lstm_can_break_are_refused() {
        let init = SlotStates::zeros(1, 2, 2);
        check_bounds(1.0, &states(0.99, 3.0), &init, 4).unwrap();
        let e = check_bounds(1.0, &states(1.5, 0.0), &init, 4).unwrap_err();
        assert!(e.contains("|h| <= 1") && e.contains("1.5"), "{e}");
        let e = check_bounds(1.0, &states(0.0, 4.5), &init, 4).unwrap_err();
        assert!(e.contains("|c0| + T = 4") && e.contains("4.5"), "{e}");
        assert!(check_bounds(-1.0, &states(0.0, 0.0), &init, 4).is_err());
    }

    #[test]
    fn spikes_are_suspicious_and_agreement_has_a_tolerance() {
        let mut s = Stats::default();
        assert_eq!(s.suspicion(1e30), None, "no statistic yet");
        for v in [1.0, 1.2, 0.8, 1.1] {
            s.record(v, Some(2.0));
        }
        assert_eq!(s.suspicion(5.0), None);
        let why = s.suspicion(1e30).unwrap();
        assert!(why.contains("median"), "{why}");
        assert_eq!(s.ms_per_slot(), Some(2.0));
        let f = states(0.5, 0.5);
        let g = vec![1.0, 2.0];
        let a = Result {
            loss_sum: 1.0,
            grad: &g,
            finals: &f,
        };
        let mut g2 = g.clone();
        g2[1] += 1e-6;
        agree(&a, &Result { grad: &g2, ..a }).unwrap();
        g2[1] = 1e30;
        assert!(
            agree(&a, &Result { grad: &g2, ..a })
                .unwrap_err()
                .contains("gradient")
        );
        let f2 = states(0.5, 0.9);
        assert!(
            agree(&a, &Result { finals: &f2, ..a })
                .unwrap_err()
                .contains("final c")
        );
    }

    #[test]
    fn the_running_median_is_the_median_of_the_last_window_of_values() {
        let mut w = Window::default();
        let mut all = Vec::new();
        let mut x = 7u64;
        for i in 0..5 * WINDOW {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            // repeated values and a NaN now and then, as a broken gradient norm would be
            let v = match i % 17 {
                0 => f64::NAN,
                1 | 2 => 0.5,
                _ => (x >> 11) as f64 / (1u64 << 53) as f64,
            };
            w.push(v);
            all.push(v);
            let mut last: Vec<f64> = all[all.len().saturating_sub(WINDOW)..].to_vec();
            last.sort_by(f64::total_cmp);
            let want = last[last.len() / 2];
            assert_eq!(
                w.median().map(f64::to_bits),
                Some(want.to_bits()),
                "after {} values",
                i + 1
            );
            assert_eq!(w.sorted.len(), last.len());
        }
    }
}
