#!/usr/bin/env bash
# Builds carry and trains the seed model (2 x LSTM(8), dropout 0.2, dense head) on the built-in
# synthetic trajectories with a coordinator and 2 local worker processes. Each run gets its own
# directory runs/<date>-<time> (checkpoint, metrics.csv, loss.svg); runs/latest links to the
# newest. Extra arguments go to `coordinator train` (e.g. --out DIR, --epochs 3).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo not found; install Rust 1.95 or newer with rustup, then rerun ./run.sh" >&2
    exit 1
fi
cargo build --release --workspace --bins
exec target/release/coordinator train --spawn-workers 2 --listen 127.0.0.1:0 "$@"
