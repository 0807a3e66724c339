#!/usr/bin/env python3
"""Writes examples/monthly.csv: 26 monthly series of 60 to 200 months, shaped like the public
monthly panels forecasters benchmark on (retail and tourism counts, M4 Monthly): each series has
its own level, a trend that may bend, a yearly pattern of its own strength and shape, noise
that is partly persistent, and its own start month. Standard library only; seeded, so the file
is the same on every run.
"""
import math
import os
import random

random.seed(20)
rows = []
for s in range(26):
    name = f"m{s + 1:02d}"
    length = random.randint(60, 200)
    start = random.randint(0, 240)  # months after 1990-01
    level = random.uniform(200, 5000)
    slope = random.uniform(-0.002, 0.008) * level
    bend = random.uniform(-0.00002, 0.00002) * level
    amp = random.uniform(0.05, 0.35)
    phase = random.uniform(0, 2 * math.pi)
    second = random.uniform(0, 0.4)  # a second harmonic: peaks that are not sine-shaped
    noise = random.uniform(0.02, 0.07)
    ar = 0.0
    for k in range(length):
        month = start + k
        ar = 0.5 * ar + random.gauss(0, noise)
        season = 1 + amp * (
            math.sin(2 * math.pi * month / 12 + phase)
            + second * math.sin(4 * math.pi * month / 12 + 2 * phase)
        )
        value = max(1.0, (level + slope * k + bend * k * k) * season * (1 + ar))
        y, m = 1990 + month // 12, month % 12 + 1
        rows.append((name, f"{y:04d}-{m:02d}-01", round(value, 1)))

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "monthly.csv")
with open(out, "w", encoding="utf-8") as f:
    f.write("series,month,value\n")
    for r in rows:
        f.write(f"{r[0]},{r[1]},{r[2]}\n")
print(f"wrote {len(rows)} rows of 26 series to {out}")
