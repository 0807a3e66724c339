#!/usr/bin/env python3
"""Series data with carry's defaults against carry tuned as in the README, on two tables.

For each table, trains twice in this process (`--spawn-workers 0`): once with only the flags that
say what the table is (its id and time columns) and which steps are held out for the evaluation
(`--val-steps H`, so that neither run trains on them), once tuned as the README tunes
`examples/stores.csv`. Then `coordinator evaluate` forecasts the held-out H steps of every series
from the rest, and this prints both runs' overall MAE and MASE and their ratio (defaults / tuned).

Tables: `examples/stores.csv` (24 daily series, H = 14, season 7) and `examples/monthly.csv` (26
monthly series of 60 to 200 months with trend, yearly seasonality and noise, written by
`examples/make_monthly.py`; H = 12, season 12).

Usage: python3 scripts/defaults_check.py [--coordinator target/release/coordinator] [--keep DIR]
       [--seeds 42,1,2]
With several seeds, both runs of a table use each seed in turn (training is seeded, so one seed's
figures repeat exactly; other seeds show how much they vary). Exits non-zero when a ratio of
MASE exceeds --limit (default 1.1).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the README's tuning of a series model, apart from the chunk length
TUNING = ["--batch-size", "8", "--hidden", "32", "--epochs", "150", "--lr", "0.005",
          "--lr-schedule", "cosine", "--warmup-steps", "20", "--loss", "huber",
          "--dropout", "0.1", "--patience", "10"]

TABLES = [
    {
        "name": "stores (daily)",
        "data": "examples/stores.csv",
        "columns": ["--id-column", "shop", "--time-column", "date"],
        "holdout": 14,
        "season": 7,
        # the README's tuned command, less its --val-steps (given to both runs) and workers
        "tuned": ["--timesteps", "28"] + TUNING,
    },
    {
        "name": "monthly",
        "data": "examples/monthly.csv",
        "columns": ["--id-column", "series", "--time-column", "month"],
        "holdout": 12,
        "season": 12,
        # the same tuning, with a chunk of two years
        "tuned": ["--timesteps", "24"] + TUNING,
    },
]


def run(cmd):
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coordinator", default=os.path.join(ROOT, "target/release/coordinator"))
    ap.add_argument("--keep", help="keep the runs in this directory")
    ap.add_argument("--limit", type=float, default=1.1)
    ap.add_argument("--seeds", default="42", help="comma-separated seeds (default: 42)")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="carry-defaults-")
    os.makedirs(work, exist_ok=True)
    worst = 0.0
    print(f"{'table':<16} {'seed':>5} {'run':<9} {'MAE':>10} {'MASE':>8}")
    for t in TABLES:
        for seed in args.seeds.split(","):
            scores = {}
            for kind in ["defaults", "tuned"]:
                out = os.path.join(work, f"{t['data'].split('/')[-1]}-{seed}-{kind}")
                train = [args.coordinator, "train", "--data", t["data"], *t["columns"],
                         "--val-steps", str(t["holdout"]), "--seed", seed, "--spawn-workers", "0",
                         "--progress", "off", "--overwrite", "--out", out]
                if kind == "tuned":
                    train += t["tuned"]
                log = run(train)
                chosen = [line for line in log.splitlines() if "series data:" in line]
                # the tuned run is scored as the README scores it, at its best epoch; the
                # defaults run at its end (it has no early stopping)
                model = os.path.join(out, "best.safetensors") if kind == "tuned" else out
                js = out + ".json"
                run([args.coordinator, "evaluate", "--model", model, "--data", t["data"],
                     "--holdout", str(t["holdout"]), "--season", str(t["season"]),
                     "--json-out", js])
                with open(js, encoding="utf-8") as f:
                    overall = json.load(f)["overall"]
                scores[kind] = overall
                m = overall["model"]
                print(f"{t['name']:<16} {seed:>5} {kind:<9} {m['mae']:>10.3f} {m['mase']:>8.4f}")
                for line in chosen:
                    print(f"    {line.split('series data: ', 1)[-1].strip()}")
            d, u = scores["defaults"]["model"], scores["tuned"]["model"]
            ratio = d["mase"] / u["mase"]
            worst = max(worst, ratio)
            p = scores["defaults"]["persistence"]
            print(f"{t['name']:<16} {seed:>5} defaults/tuned: MASE {ratio:.3f}x, "
                  f"MAE {d['mae'] / u['mae']:.3f}x (persistence MASE {p['mase']:.4f})")
    print(f"worst MASE ratio {worst:.3f} (limit {args.limit})")
    return 0 if worst <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
