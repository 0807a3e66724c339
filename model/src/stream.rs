//! Keras `stateful=True, shuffle=False` stream layout, and the step cursor.
//!
//! With `B` streams, batch `n` holds sequences `n*B .. n*B+B-1`, so slot `s` of batch `n+1`
//! continues the sequence that slot `s` of batch `n` ended. A trailing partial batch is dropped.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// How `N` sequences map onto `B` parallel streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    /// `N`, sequences in the data.
    pub sequences: usize,
    /// `B`, slots per batch.
    pub batch: usize,
    /// Full batches per epoch, `N / B`.
    pub steps_per_epoch: u64,
    /// Sequences of the trailing partial batch, left out of every epoch.
    pub dropped: usize,
}

impl Streams {
    /// The layout of `sequences` over `batch` streams; `what` names the data in errors.
    pub fn new(sequences: usize, batch: usize, what: &str) -> Result<Self, ModelError> {
        if batch == 0 || sequences < batch {
            return Err(ModelError::Data {
                source_name: what.into(),
                msg: format!(
                    "expected at least one full batch of {batch} sequences, got {sequences} sequences"
                ),
            });
        }
        Ok(Self {
            sequences,
            batch,
            steps_per_epoch: (sequences / batch) as u64,
            dropped: sequences % batch,
        })
    }

    /// The sequence index in slot `slot` of batch `step`.
    pub fn sequence(&self, step: u64, slot: usize) -> usize {
        step as usize * self.batch + slot
    }
}

/// Position of the next step to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Cursor {
    /// Epoch (from 0).
    pub epoch: u64,
    /// Step within the epoch (from 0).
    pub step: u64,
    /// Steps committed so far over all epochs (the global step id of the next step).
    pub global: u64,
}

impl Cursor {
    /// The cursor after the current step of an epoch of `steps_in_epoch` steps.
    pub fn next(self, steps_in_epoch: u64) -> Self {
        let step = self.step + 1;
        if step >= steps_in_epoch {
            Self {
                epoch: self.epoch + 1,
                step: 0,
                global: self.global + 1,
            }
        } else {
            Self {
                step,
                global: self.global + 1,
                ..self
            }
        }
    }
}

/// Total steps of a run of `epochs` epochs, capped by `max_steps`.
pub fn total_steps(streams: &Streams, epochs: u64, max_steps: Option<u64>) -> u64 {
    let full = streams.steps_per_epoch * epochs;
    max_steps.map_or(full, |m| m.min(full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_s_continues_slot_s_for_several_shapes() {
        for (n, b) in [(20, 10), (25, 10), (7, 3), (5, 5), (100, 1), (64, 8)] {
            let s = Streams::new(n, b, "t").unwrap();
            assert_eq!(s.steps_per_epoch as usize, n / b);
            assert_eq!(s.dropped, n % b);
            // every kept sequence appears exactly once per epoch
            let mut seen = vec![0; n];
            for step in 0..s.steps_per_epoch {
                for slot in 0..b {
                    seen[s.sequence(step, slot)] += 1;
                }
            }
            assert!(seen[..n - n % b].iter().all(|&c| c == 1));
            assert!(seen[n - n % b..].iter().all(|&c| c == 0));
            // slot s of batch k+1 is the sequence B after slot s of batch k
            for step in 1..s.steps_per_epoch {
                for slot in 0..b {
                    assert_eq!(s.sequence(step, slot), s.sequence(step - 1, slot) + b);
                }
            }
        }
    }

    #[test]
    fn too_few_sequences_is_an_error() {
        let e = Streams::new(9, 10, "data.npz").unwrap_err().to_string();
        assert!(
            e.contains("data.npz") && e.contains("10") && e.contains("got 9"),
            "{e}"
        );
    }

    #[test]
    fn cursor_wraps_epochs() {
        let s = Streams::new(30, 10, "t").unwrap();
        let mut c = Cursor::default();
        let mut seen = vec![];
        for _ in 0..7 {
            seen.push((c.epoch, c.step, c.global));
            c = c.next(s.steps_per_epoch);
        }
        assert_eq!(
            seen,
            [
                (0, 0, 0),
                (0, 1, 1),
                (0, 2, 2),
                (1, 0, 3),
                (1, 1, 4),
                (1, 2, 5),
                (2, 0, 6)
            ]
        );
        assert_eq!(total_steps(&s, 4, None), 12);
        assert_eq!(total_steps(&s, 4, Some(5)), 5);
    }
}
