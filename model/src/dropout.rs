//! Dropout masks as a pure function of `(seed, epoch, step, slot, element)`.
//!
//! Whether element `e` (index `t * H + j` within one slot's `[T, H]` output) of global slot `s`
//! is kept at step `step` of epoch `epoch` depends on nothing else, so splitting the slots of a
//! batch over any number of workers cannot change a single mask bit.

use crate::rng::{hash_words, mix64};

/// Identifies the masks of one training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutKey {
    /// Job seed.
    pub seed: u64,
    /// Epoch of the step.
    pub epoch: u64,
    /// Step within the epoch.
    pub step: u64,
}

/// Masks of one step for a dropout probability `p`.
#[derive(Debug, Clone, Copy)]
pub struct DropoutMask {
    key: DropoutKey,
    /// Keep when the 24-bit draw is at or above this threshold.
    threshold: u32,
    /// Inverted-dropout scale `1 / (1 - p)`.
    scale: f32,
}

impl DropoutMask {
    /// Masks for probability `p` in `[0, 1)`.
    pub fn new(key: DropoutKey, p: f32) -> Self {
        let threshold = (f64::from(p) * f64::from(1u32 << 24)).round() as u32;
        Self {
            key,
            threshold,
            scale: 1.0 / (1.0 - p),
        }
    }

    /// The per-slot base word: hashing is split so the per-element cost is one mix.
    pub fn slot_base(&self, slot: u64) -> u64 {
        hash_words(&[
            self.key.seed,
            self.key.epoch,
            self.key.step,
            slot,
            0x64726f70,
        ])
    }

    /// The multiplier (0 or `1/(1-p)`) of `element` given the slot's base word.
    #[inline]
    pub fn factor(&self, slot_base: u64, element: u64) -> f32 {
        let draw = (mix64(slot_base ^ element.wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 40) as u32;
        if draw >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }

    /// Writes the factors of one slot's `len` elements into `out`.
    pub fn fill_slot(&self, slot: u64, out: &mut [f32]) {
        let base = self.slot_base(slot);
        for (e, v) in out.iter_mut().enumerate() {
            *v = self.factor(base, e as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(step: u64) -> DropoutKey {
        DropoutKey {
            seed: 42,
            epoch: 1,
            step,
        }
    }

    #[test]
    fn keep_rate_matches_probability() {
        let m = DropoutMask::new(key(3), 0.2);
        let mut v = vec![0.0; 100_000];
        m.fill_slot(5, &mut v);
        let kept = v.iter().filter(|&&x| x > 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.8).abs() < 0.01, "kept fraction {kept}");
        assert!(v.iter().all(|&x| x == 0.0 || (x - 1.25).abs() < 1e-6));
    }

    #[test]
    fn masks_depend_on_every_key_part_only() {
        let m = DropoutMask::new(key(3), 0.5);
        let mut a = vec![0.0; 256];
        let mut b = vec![0.0; 256];
        m.fill_slot(2, &mut a);
        m.fill_slot(2, &mut b);
        assert_eq!(a, b);
        m.fill_slot(3, &mut b);
        assert_ne!(a, b, "slot must change the mask");
        DropoutMask::new(key(4), 0.5).fill_slot(2, &mut b);
        assert_ne!(a, b, "step must change the mask");
        DropoutMask::new(DropoutKey { seed: 43, ..key(3) }, 0.5).fill_slot(2, &mut b);
        assert_ne!(a, b, "seed must change the mask");
        DropoutMask::new(DropoutKey { epoch: 2, ..key(3) }, 0.5).fill_slot(2, &mut b);
        assert_ne!(a, b, "epoch must change the mask");
    }

    #[test]
    fn zero_probability_keeps_everything() {
        let m = DropoutMask::new(key(0), 0.0);
        let mut v = vec![0.0; 1000];
        m.fill_slot(0, &mut v);
        assert!(v.iter().all(|&x| x == 1.0));
    }
}
