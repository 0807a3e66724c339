#!/usr/bin/env bash
# Scale-out by simulation: the real coordinator and W real worker processes, each in its own
# network namespace, joined through a bridge by veth pairs whose links are shaped to a rate
# (tc tbf) and delayed in user space (--link-delay-us on both ends: this kernel has no netem).
# Each worker's compute is replaced by a sleep proportional to its slots, calibrated on this
# machine's fused CPU engine (`bench --only calibrate`), so W up to 32 fits on a small box while
# views, the gradient sum among workers, updates and commits all run for real.
#
# Prints, per W: the median step time, the ideal step (the calibrated compute of B/W slots),
# the per-step overhead (step - ideal), the scaling efficiency (ideal / step) and the bytes the
# busiest process moves per step (the coordinator's link, or one worker's peer plus
# coordinator share, whichever is larger).
#
# Usage (root; needs iproute2): scripts/simulate.sh [--workers "1 2 4 8 16 32"]
#        [--configs "1024x128 64x64"] [--steps 60] [--rate 10gbit] [--delay-us 200]
# Build first: cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS="1 2 4 8 16 32"
CONFIGS="1024x128 64x64"
STEPS=60
RATE=10gbit
DELAY_US=200
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) WORKERS="$2"; shift 2 ;;
        --configs) CONFIGS="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --delay-us) DELAY_US="$2"; shift 2 ;;
        *) echo "simulate.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "simulate.sh: needs root (ip netns, tc)" >&2; exit 1; }
for b in coordinator worker bench; do
    [ -x "target/release/$b" ] || { echo "simulate.sh: target/release/$b missing: cargo build --release --workspace --bins" >&2; exit 1; }
done
BIN="$PWD/target/release"
PREFIX="carrysim"
WORK="$(mktemp -d)"
TOKEN="sim-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
PIDS=()

net_down() {
    for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
}

cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    net_down
    rm -rf "$WORK"
}
trap cleanup EXIT

# One namespace per process plus a switch namespace holding the bridge; every link shaped.
net_up() {
    local n=$1
    ip netns add "${PREFIX}sw"
    ip -n "${PREFIX}sw" link add br0 type bridge
    ip -n "${PREFIX}sw" link set br0 up
    ip -n "${PREFIX}sw" link set lo up
    for i in $(seq 0 "$n"); do
        local ns="${PREFIX}$i"
        ip netns add "$ns"
        ip link add "sim$i" netns "$ns" type veth peer name "port$i" netns "${PREFIX}sw"
        ip -n "${PREFIX}sw" link set "port$i" master br0 up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "10.77.$((i / 250)).$((i % 250 + 1))/16" dev "sim$i"
        ip -n "$ns" link set "sim$i" up
        tc -n "$ns" qdisc add dev "sim$i" root tbf rate "$RATE" burst 1mb latency 10ms
        tc -n "${PREFIX}sw" qdisc add dev "port$i" root tbf rate "$RATE" burst 1mb latency 10ms
    done
}
addr() { echo "10.77.$(($1 / 250)).$(($1 % 250 + 1))"; }

run_one() {
    local b=$1 h=$2 w=$3 ms_slot=$4
    local out="$WORK/run-$b-$h-$w"
    net_up "$w"
    ip netns exec "${PREFIX}0" "$BIN/coordinator" train --listen "$(addr 0):7000" --workers "$w" \
        --token "$TOKEN" --batch-size "$b" --hidden "$h" --sequences $((b * 4)) --steps "$STEPS" \
        --simulate-ms-per-slot "$ms_slot" --link-delay-us "$DELAY_US" --out "$out" \
        >"$WORK/coordinator.log" 2>&1 &
    local coord=$!
    PIDS=("$coord")
    for i in $(seq 1 "$w"); do
        ip netns exec "${PREFIX}$i" "$BIN/worker" --coordinator "http://$(addr 0):7000" --token "$TOKEN" \
            --name "sim-$i" --device cpu --threads 1 --peer-listen "$(addr "$i"):7100" \
            --peer-advertise "$(addr "$i"):7100" --link-delay-us "$DELAY_US" \
            >"$WORK/worker-$i.log" 2>&1 &
        PIDS+=("$!")
    done
    if ! wait "$coord"; then
        echo "simulate.sh: the coordinator failed for B=$b H=$h W=$w; its log:" >&2
        tail -20 "$WORK/coordinator.log" >&2
        exit 1
    fi
    for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    net_down
    # Medians over the steps after the first 10 (connection set-up).
    python3 - "$b" "$h" "$w" "$ms_slot" "$out/metrics.csv" <<'EOF'
import csv, sys
b, h, w = (int(x) for x in sys.argv[1:4])
ms_slot = float(sys.argv[4])
rows = list(csv.DictReader(open(sys.argv[5])))[10:]
if not rows:
    sys.exit(f"simulate.sh: {sys.argv[5]} has no steps past the first 10: raise --steps")
def median(col):
    v = sorted(float(r[col]) for r in rows)
    return v[len(v) // 2]
step, coord_b, peer_b = median("step_ms"), median("coord_bytes"), median("peer_bytes")
ideal = ms_slot * b / w
busiest = max(coord_b, (peer_b + coord_b) / w)
print(f"B={b:<5} H={h:<4} W={w:<3} step {step:9.2f} ms  ideal {ideal:9.2f} ms  "
      f"overhead {step - ideal:7.2f} ms  efficiency {100 * ideal / step:5.1f}%  "
      f"busiest process {busiest / 1e3:9.1f} KB/step")
EOF
}

echo "simulate.sh: links $RATE with ${DELAY_US} us delay each way, $STEPS steps per run"
for c in $CONFIGS; do
    b=${c%x*}
    h=${c#*x}
    ms_slot=$("$BIN/bench" --only calibrate --batch "$b" --hidden "$h" 2>/dev/null |
        python3 -c 'import json,sys; print(next(r["ms_per_slot"] for r in json.load(sys.stdin)["results"] if r.get("engine") == "calibrate"))')
    echo "B=$b H=$h: calibrated $ms_slot ms per slot per step (fused CPU engine, 1 thread)"
    for w in $WORKERS; do
        run_one "$b" "$h" "$w" "$ms_slot"
    done
done
