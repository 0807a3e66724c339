#!/usr/bin/env python3
"""carry against PyTorch and Keras on this machine, in one run.

Runs carry's benchmark (target/release/bench: in-process engines and the distributed path with
1 and 2 local workers) and bench/peers.py (PyTorch CPU, PyTorch DDP over gloo with 2 processes,
Keras, whichever are installed), one after the other on an otherwise idle machine, then prints
sequences per second side by side with the ratios the project tracks:

  seed  in-process carry / PyTorch CPU        (target >= 2)
  seed  carry with 2 workers / PyTorch DDP-2  (target >= 1)
  large in-process carry / PyTorch CPU        (target >= 1)
  seed  carry 2 workers / in-process carry     (target >= 0.8)
  large carry 2 workers / in-process carry     (target >= 1)
  both  carry 2 workers / carry 1 worker       (target >= 1)
  both  PyTorch DDP-2 / PyTorch CPU            (for reference)

carry's measurements are repeated (--reps, default 3) interleaved, and their medians compared.

Usage: python3 bench/compare.py [--seconds 4] [--reps 3] [--json-out bench/results.json]
Build first: cargo build --release --workspace
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd):
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, cwd=ROOT).stdout
    return json.loads(out)


def rate(results, engine, config):
    for r in results:
        if r.get("engine") == engine and r.get("config") == config and "seq_per_s" in r:
            return r["seq_per_s"]
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per carry measurement")
    p.add_argument("--carry-only", default="fused-cpu,burn-cpu,fused-wgpu,burn-wgpu,dist-1,dist-2",
                   help="what carry's bench measures (see bench --help)")
    p.add_argument("--reps", type=int, default=3,
                   help="interleaved repetitions of each carry measurement (medians are compared)")
    p.add_argument("--json-out", help="write both result sets here")
    a = p.parse_args()
    bench = os.path.join(ROOT, "target", "release", "bench")
    if not os.path.exists(bench):
        sys.exit("target/release/bench is missing: run `cargo build --release --workspace` first")
    carry = run_json([bench, "--seconds", str(a.seconds), "--reps", str(a.reps), "--only", a.carry_only])
    peers = run_json([sys.executable, os.path.join(ROOT, "bench", "peers.py")])
    results = carry["results"] + peers["results"]
    print(f"\n{'engine':<22} {'config':<6} {'seq/s':>10}")
    for r in results:
        if "engine" not in r or "config" not in r:
            continue  # bench's own ratio lines: the checks below use them
        v = r.get("seq_per_s")
        shown = f"{v:>10.1f}" if v is not None else f"{'-':>10}  " + str(r.get("skipped") or r.get("error", ""))
        print(f"{r['engine']:<22} {r['config']:<6} {shown}")
    print()
    checks = [
        ("seed", "carry-fused-cpu", "pytorch-cpu", 2.0),
        ("seed", "carry-dist-2", "pytorch-ddp-2", 1.0),
        ("large", "carry-fused-cpu", "pytorch-cpu", 1.0),
        ("large", "carry-dist-2", "pytorch-ddp-2", 1.0),
        # Scale-out on the same cores: 2 workers against the in-process trainer and 1 worker.
        ("seed", "carry-dist-2", "carry-fused-cpu", 0.8),
        ("large", "carry-dist-2", "carry-fused-cpu", 1.0),
        ("seed", "carry-dist-2", "carry-dist-1", 1.0),
        ("large", "carry-dist-2", "carry-dist-1", 1.0),
        # For reference: what PyTorch's second process gains on the same machine.
        ("seed", "pytorch-ddp-2", "pytorch-cpu", 0.0),
        ("large", "pytorch-ddp-2", "pytorch-cpu", 0.0),
    ]
    for config, ours, theirs, target in checks:
        # two carry engines: bench's median of the repetitions' own ratios (each repetition ran
        # both side by side); otherwise the ratio of the two medians
        paired = next((r["value"] for r in carry["results"]
                       if r.get("ratio") == f"{ours}/{theirs}" and r.get("config") == config), None)
        x, y = rate(results, ours, config), rate(results, theirs, config)
        if paired is not None:
            x, y = paired, 1.0
        if x is None or y is None:
            print(f"{config:<6} {ours} / {theirs}: not measured")
            continue
        verdict = "reference" if target == 0 else "ok" if x / y >= target else "BELOW TARGET"
        print(f"{config:<6} {ours} / {theirs} = {x / y:5.2f}x  (target >= {target:g}x) {verdict}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"carry": carry, "peers": peers}, f, indent=1)


if __name__ == "__main__":
    main()
