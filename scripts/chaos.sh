#!/usr/bin/env bash
# A long chaos drill against the real programs: one run while workers are killed and replaced,
# frozen past their lease and thawed, corrupting participants join, and the coordinator is killed
# and resumed, at random steps drawn from a seed. Prints every injection, then checks that the
# run ends equal to the in-process reference with every step in metrics.csv exactly once.
#
#   scripts/chaos.sh [SEED] [ROUNDS]     (defaults: a random seed, 8 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-$RANDOM}
rounds=${2:-8}
echo "chaos.sh: seed $seed, $rounds injections"
cargo build --release --workspace --bins
CHAOS_SEED=$seed CHAOS_ROUNDS=$rounds \
    cargo test --release -p carry-it --test it chaos_long -- --ignored --nocapture
