#!/usr/bin/env python3
"""Writes examples/stores.csv: daily sales and visitors of 24 shops, each with its own length.

Each shop opens on its own day and has its own level, trend, weekly pattern and noise; a few
close early. Standard library only; seeded, so the file is the same on every run.
"""
import datetime
import math
import os
import random

random.seed(7)
start = datetime.date(2024, 1, 1)
rows = []
for s in range(24):
    shop = f"shop-{s + 1:02d}"
    opened = random.randint(0, 150)
    length = random.randint(90, 330)
    level = random.uniform(80, 400)
    trend = random.uniform(-0.15, 0.35)
    weekly = [random.uniform(0.7, 1.35) for _ in range(7)]
    weekly[5] *= 1.25  # Saturdays
    noise = random.uniform(0.03, 0.09)
    per_visit = random.uniform(8, 25)
    ar = 0.0
    for k in range(length):
        day = start + datetime.timedelta(days=opened + k)
        ar = 0.6 * ar + random.gauss(0, noise)
        season = 1 + 0.15 * math.sin(2 * math.pi * (opened + k) / 365.25)
        visitors = max(0.0, (level + trend * k) * weekly[day.weekday()] * season * (1 + ar))
        sales = visitors * per_visit * (1 + random.gauss(0, 0.04)) / 10
        rows.append((shop, day.isoformat(), round(sales, 1), round(visitors, 1)))

# the file lists rows by date, shops interleaved, as exports from a till system do
rows.sort(key=lambda r: (r[1], r[0]))
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stores.csv")
with open(out, "w", encoding="utf-8") as f:
    f.write("shop,date,sales,visitors\n")
    for r in rows:
        f.write(f"{r[0]},{r[1]},{r[2]},{r[3]}\n")
print(f"wrote {len(rows)} rows of 24 shops to {out}")
