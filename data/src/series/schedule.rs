//! Slot scheduling of many series of any length over `B` stateful slots.
//!
//! Each series runs on one slot from its start, chunk after chunk of `T` steps, with the state
//! carried between chunks. When a series ends, that slot alone resets and takes the next series
//! of the epoch's order (the slot that frees first takes it; ties go to the lowest slot). A slot
//! with nothing left idles, masked, until the epoch's longest slot is done.

use crate::rng::Rng;

/// What one slot does in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotWork {
    /// Chunk `chunk` of series `series`; `reset` when it is the series' first chunk.
    Chunk {
        /// Series index.
        series: usize,
        /// Chunk index within the series.
        chunk: usize,
    },
    /// Nothing left for this slot in this epoch.
    Idle,
}

impl SlotWork {
    /// Whether the slot starts from a reset (the first chunk of a series).
    pub fn resets(&self) -> bool {
        matches!(self, Self::Chunk { chunk: 0, .. })
    }
}

/// The schedule of one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochPlan {
    /// Steps in the epoch (the longest slot's chunk count).
    pub steps: u64,
    /// Per slot, the series it runs in order: `(first step, series, chunks)`.
    slots: Vec<Vec<(u64, usize, u64)>>,
}

impl EpochPlan {
    /// Schedules series in `order` (chunk counts `chunks[series]`) over `b` slots.
    pub fn new(chunks: &[u64], order: &[usize], b: usize) -> Self {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        // (step the slot is free from, slot): the slot that frees first, ties to the lowest
        let mut free: BinaryHeap<Reverse<(u64, usize)>> = (0..b).map(|i| Reverse((0, i))).collect();
        let mut slots = vec![Vec::new(); b];
        for &s in order {
            if chunks[s] == 0 {
                continue;
            }
            let Reverse((start, slot)) = free.pop().expect("b > 0");
            slots[slot].push((start, s, chunks[s]));
            free.push(Reverse((start + chunks[s], slot)));
        }
        Self {
            steps: free.iter().map(|Reverse((f, _))| *f).max().unwrap_or(0),
            slots,
        }
    }

    /// What `slot` does at `step`.
    pub fn at(&self, step: u64, slot: usize) -> SlotWork {
        let runs = &self.slots[slot];
        let i = runs.partition_point(|&(start, _, _)| start <= step);
        if i == 0 {
            return SlotWork::Idle;
        }
        let (start, series, chunks) = runs[i - 1];
        if step < start + chunks {
            SlotWork::Chunk {
                series,
                chunk: (step - start) as usize,
            }
        } else {
            SlotWork::Idle
        }
    }
}

/// The order series are taken in epoch `epoch`: as given, or a seeded shuffle per epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = Rng::new(
            seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            "series-order",
        );
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_series_runs_whole_on_one_slot_and_slots_refill_when_free() {
        // chunks per series: 3, 1, 2, 4, 1 over 2 slots
        let chunks = [3, 1, 2, 4, 1];
        let p = EpochPlan::new(&chunks, &[0, 1, 2, 3, 4], 2);
        // slot 0: s0 at 0..3, then s3 at 3..7; slot 1: s1 at 0, s2 at 1..3, s4 at 3
        let row = |slot| (0..p.steps).map(|t| p.at(t, slot)).collect::<Vec<_>>();
        let c = |series, chunk| SlotWork::Chunk { series, chunk };
        assert_eq!(p.steps, 7);
        assert_eq!(
            row(0),
            [
                c(0, 0),
                c(0, 1),
                c(0, 2),
                c(3, 0),
                c(3, 1),
                c(3, 2),
                c(3, 3)
            ]
        );
        use SlotWork::Idle;
        assert_eq!(
            row(1),
            [c(1, 0), c(2, 0), c(2, 1), c(4, 0), Idle, Idle, Idle]
        );
        let resets: Vec<u64> = (0..p.steps).filter(|&t| p.at(t, 1).resets()).collect();
        assert_eq!(resets, [0, 1, 3]);
    }

    #[test]
    fn every_chunk_of_every_series_appears_once_for_many_shapes() {
        for (n, b, seed) in [(7, 3, 1), (1, 4, 2), (40, 8, 3), (5, 5, 4), (13, 1, 5)] {
            let chunks: Vec<u64> = (0..n).map(|i| 1 + (i * 7 + seed) as u64 % 5).collect();
            for epoch in 0..3 {
                let order = epoch_order(n, seed as u64, epoch, true);
                let p = EpochPlan::new(&chunks, &order, b);
                let mut seen = vec![vec![0; 5]; n];
                for t in 0..p.steps {
                    for s in 0..b {
                        if let SlotWork::Chunk { series, chunk } = p.at(t, s) {
                            seen[series][chunk] += 1;
                            // a series continues on the same slot at the next step
                            if (chunk as u64) + 1 < chunks[series] {
                                assert_eq!(
                                    p.at(t + 1, s),
                                    SlotWork::Chunk {
                                        series,
                                        chunk: chunk + 1
                                    }
                                );
                            }
                        }
                    }
                }
                for (i, c) in chunks.iter().enumerate() {
                    assert!(seen[i][..*c as usize].iter().all(|&k| k == 1));
                }
            }
        }
    }

    #[test]
    fn orders_are_seeded_permutations() {
        let a = epoch_order(50, 7, 0, true);
        assert_eq!(a, epoch_order(50, 7, 0, true));
        assert_ne!(a, epoch_order(50, 7, 1, true));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(epoch_order(5, 7, 3, false), [0, 1, 2, 3, 4]);
    }
}
