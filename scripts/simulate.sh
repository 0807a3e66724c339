#!/usr/bin/env bash
# Scale-out by simulation: the real coordinator and W real worker processes, each in its own
# network namespace, joined through a bridge by veth pairs whose links are shaped to a rate
# (tc tbf) and delayed in user space (--link-delay-us on both ends: this kernel has no netem).
# Each worker's compute is replaced by a sleep proportional to its slots, calibrated on this
# machine's fused CPU engine (`bench --only calibrate`), so W up to 32 fits on a small box while
# views, the gradient sum among workers, updates and commits all run for real.
#
# Time dilation. Everything but the compute runs for real, so W workers share this machine's
# cores where a cluster gives each its own: at W=32 on 2 cores each process gets a sixteenth of
# a core, and its real work (the gradient sum's copies and checks, the update, the codec) takes
# sixteen times as long as on a machine of its own. The run therefore slows the emulated world
# by a time dilation factor K (default: processes per core, ceil((W + 1) / cores)), as
# time-warped network emulation does: the compute sleeps K times as long, links run at rate / K
# with K times the delay, and leases are K times as long; measured times are divided by K. The
# real work then takes the share of the step it would take with a core per process. K = 1
# (--dilation 1) is the undilated run. Each line also says how busy the machine's cores were
# during the run: near 100% means the machine, not the protocol, set the pace (raise K).
#
# Prints, per W: the median step time, the ideal step (the calibrated compute of B/W slots),
# the per-step overhead (step - ideal), the scaling efficiency (ideal / step), the coordinator's
# own CPU time per step (decoding, screening, committing; measured in CPU time, so neither the
# dilation nor a wait for a core changes it), and the bytes the busiest process moves per step (the coordinator's link,
# or one worker's peer plus coordinator share, whichever is larger).
#
# Usage (root; needs iproute2): scripts/simulate.sh [--workers "1 2 4 8 16 32"]
#        [--configs "1024x128 64x64"] [--steps 60] [--rate 10gbit] [--delay-us 200]
#        [--dilation auto|K] [--keep DIR]
# --rate takes kbit, mbit or gbit; --keep DIR keeps every run's logs and run directory under DIR
# (for reading after a failure).
# Build first: cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS="1 2 4 8 16 32"
CONFIGS="1024x128 64x64"
STEPS=60
RATE=10gbit
DELAY_US=200
KEEP=""
DILATION=auto
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) WORKERS="$2"; shift 2 ;;
        --configs) CONFIGS="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --delay-us) DELAY_US="$2"; shift 2 ;;
        --keep) KEEP="$2"; shift 2 ;;
        --dilation) DILATION="$2"; shift 2 ;;
        *) echo "simulate.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
case "$RATE" in
    *gbit) RATE_KBIT=$(( ${RATE%gbit} * 1000000 )) ;;
    *mbit) RATE_KBIT=$(( ${RATE%mbit} * 1000 )) ;;
    *kbit) RATE_KBIT=${RATE%kbit} ;;
    *) echo "simulate.sh: --rate $RATE: expected a whole number of kbit, mbit or gbit" >&2; exit 2 ;;
esac
case "$DILATION" in
    auto) ;;
    ''|*[!0-9]*|0) echo "simulate.sh: --dilation $DILATION: expected auto or a whole number >= 1" >&2; exit 2 ;;
esac
CORES=$(nproc)
[ "$(id -u)" = 0 ] || { echo "simulate.sh: needs root (ip netns, tc)" >&2; exit 1; }
for b in coordinator worker bench; do
    [ -x "target/release/$b" ] || { echo "simulate.sh: target/release/$b missing: cargo build --release --workspace --bins" >&2; exit 1; }
done
BIN="$PWD/target/release"
PREFIX="carrysim"
if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP"
    WORK="$(cd "$KEEP" && pwd)"
else
    WORK="$(mktemp -d)"
fi
TOKEN="sim-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
PIDS=()

net_down() {
    for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
}

# The kernel's ARP table is one table for every namespace, with a hard limit of gc_thresh3
# entries (1024 by default) in all of them together: W+1 namespaces that each learn W neighbours
# overflow it from W=32 on ("neighbor table overflow" in dmesg), and the lost ARP entries stall
# connections for tens of seconds. The run raises the limits and puts them back afterwards.
NEIGH_SAVED=()
neigh_up() {
    local k
    for k in 1 2 3; do
        NEIGH_SAVED+=("$(sysctl -n "net.ipv4.neigh.default.gc_thresh$k")")
    done
    sysctl -qw net.ipv4.neigh.default.gc_thresh1=4096 net.ipv4.neigh.default.gc_thresh2=8192 \
        net.ipv4.neigh.default.gc_thresh3=16384
}
neigh_down() {
    [ "${#NEIGH_SAVED[@]}" = 3 ] || return 0
    sysctl -qw "net.ipv4.neigh.default.gc_thresh1=${NEIGH_SAVED[0]}" \
        "net.ipv4.neigh.default.gc_thresh2=${NEIGH_SAVED[1]}" \
        "net.ipv4.neigh.default.gc_thresh3=${NEIGH_SAVED[2]}"
}

cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    net_down
    neigh_down
    [ -n "$KEEP" ] || rm -rf "$WORK"
}
trap cleanup EXIT
neigh_up

# One namespace per process plus a switch namespace holding the bridge; every link shaped.
net_up() {
    local n=$1 rate=$2
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
        tc -n "$ns" qdisc add dev "sim$i" root tbf rate "$rate" burst 1mb latency 10ms
        tc -n "${PREFIX}sw" qdisc add dev "port$i" root tbf rate "$rate" burst 1mb latency 10ms
    done
}
addr() { echo "10.77.$(($1 / 250)).$(($1 % 250 + 1))"; }

# Busy and total jiffies of all cores so far.
cpu_now() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }

run_one() {
    local b=$1 h=$2 w=$3 ms_slot=$4
    local out="$WORK/run-$b-$h-$w"
    local logs="$WORK/logs-$b-$h-$w"
    local k=$DILATION
    [ "$k" = auto ] && k=$(( (w + 1 + CORES - 1) / CORES ))
    local rate_kbit=$(( RATE_KBIT / k ))
    [ "$rate_kbit" -ge 1 ] || rate_kbit=1
    local delay_us=$(( DELAY_US * k ))
    local ms_dilated
    ms_dilated=$(python3 -c "print($ms_slot * $k)")
    mkdir -p "$logs"
    net_up "$w" "${rate_kbit}kbit"
    local cpu0
    cpu0=$(cpu_now)
    ip netns exec "${PREFIX}0" "$BIN/coordinator" train --listen "$(addr 0):7000" --workers "$w" \
        --token "$TOKEN" --batch-size "$b" --hidden "$h" --sequences $((b * 4)) --val-sequences 0 --epochs "$STEPS" --steps "$STEPS" \
        --simulate-ms-per-slot "$ms_dilated" --link-delay-us "$delay_us" --lease-ms $((3000 * k)) \
        --out "$out" >"$logs/coordinator.log" 2>&1 &
    local coord=$!
    PIDS=("$coord")
    for i in $(seq 1 "$w"); do
        ip netns exec "${PREFIX}$i" "$BIN/worker" --coordinator "http://$(addr 0):7000" --token "$TOKEN" \
            --name "sim-$i" --device cpu --threads 1 --peer-listen "$(addr "$i"):7100" \
            --peer-advertise "$(addr "$i"):7100" --link-delay-us "$delay_us" \
            >"$logs/worker-$i.log" 2>&1 &
        PIDS+=("$!")
    done
    if ! wait "$coord"; then
        echo "simulate.sh: the coordinator failed for B=$b H=$h W=$w; its log:" >&2
        tail -20 "$logs/coordinator.log" >&2
        exit 1
    fi
    local cpu1
    cpu1=$(cpu_now)
    for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    net_down
    # Medians over the steps after the first 10 (connection set-up), in undilated time.
    python3 - "$b" "$h" "$w" "$ms_slot" "$k" "$cpu0" "$cpu1" "$out/metrics.csv" <<'EOF'
import csv, sys
b, h, w = (int(x) for x in sys.argv[1:4])
ms_slot, k = float(sys.argv[4]), int(sys.argv[5])
busy0, total0 = (float(x) for x in sys.argv[6].split())
busy1, total1 = (float(x) for x in sys.argv[7].split())
rows = list(csv.DictReader(open(sys.argv[8])))[10:]
if not rows:
    sys.exit(f"simulate.sh: {sys.argv[8]} has no steps past the first 10: raise --steps")
def median(col):
    v = sorted(float(r[col]) for r in rows)
    return v[len(v) // 2]
# coord_ms is CPU time (a wait for a core is not in it), so it is not dilated
step, coord_ms = median("step_ms") / k, median("coord_ms")
coord_b, peer_b = median("coord_bytes"), median("peer_bytes")
ideal = ms_slot * b / w
busiest = max(coord_b, (peer_b + coord_b) / w)
busy = 100 * (busy1 - busy0) / max(total1 - total0, 1)
print(f"B={b:<5} H={h:<4} W={w:<3} K={k:<3} step {step:8.2f} ms  ideal {ideal:8.2f} ms  "
      f"overhead {step - ideal:6.2f} ms  efficiency {100 * ideal / step:5.1f}%  "
      f"coordinator {coord_ms:5.2f} ms CPU/step  busiest process {busiest / 1e3:7.1f} KB/step  "
      f"cores busy {busy:3.0f}%")
EOF
}

echo "simulate.sh: links $RATE with ${DELAY_US} us delay each way, $STEPS steps per run, dilation $DILATION on $CORES cores"
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
