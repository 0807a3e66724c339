#!/usr/bin/env python3
"""CPU time and context switches per training step of every thread of the running carry
programs (coordinator and workers), from /proc (Linux).

On a machine whose cores are shared by the coordinator and the workers, whatever runs beside the
compute threads takes a core from one of them; this shows what each thread costs per step:

    coordinator train --spawn-workers 2 --batch-size 10 --hidden 8 --epochs 1000 --steps 40000 \
        --val-sequences 0 --progress off --out /tmp/run &
    sleep 3; python3 scripts/thread_costs.py --seconds 5 /tmp/run/metrics.csv

Steps are counted from the rows metrics.csv gains meanwhile. Per thread (threads of one name in
one process added up): its share of a core, its voluntary context switches per step (it blocked:
each is a wake-up later) and involuntary ones (it was preempted), and its CPU time per step.
"""
import argparse
import collections
import os
import re
import time

PROGRAMS = ("coordinator", "worker")


def snapshot():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm not in PROGRAMS:
            continue
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    status = f.read()
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = re.sub(r"\d+$", "#", stat[stat.index("(") + 1:stat.rindex(")")])
            fields = stat[stat.rindex(")") + 2:].split()
            vol = int(re.search(r"^voluntary_ctxt_switches:\s*(\d+)", status, re.M).group(1))
            invol = int(re.search(r"^nonvoluntary_ctxt_switches:\s*(\d+)", status, re.M).group(1))
            ticks = int(fields[11]) + int(fields[12])  # utime + stime
            out[(comm, pid, name, tid)] = (vol, invol, ticks)
    return out


def rows(path):
    with open(path) as f:
        return sum(1 for _ in f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", help="metrics.csv of the running job")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to watch")
    a = p.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    before, r0, t0 = snapshot(), rows(a.metrics), time.time()
    time.sleep(a.seconds)
    after, r1, dt = snapshot(), rows(a.metrics), time.time() - t0
    steps = r1 - r0
    if steps <= 0 or not after:
        raise SystemExit("no steps committed meanwhile, or no coordinator/worker running")
    total = collections.defaultdict(lambda: [0, 0, 0])
    for key, now in after.items():
        was = before.get(key, (0, 0, 0))
        t = total[key[:3]]
        for i in range(3):
            t[i] += now[i] - was[i]
    print(f"{steps / dt:.0f} steps/s over {dt:.1f} s")
    print(f"{'program':<12} {'pid':>7} {'thread':<18} {'core':>6} {'blocked/step':>13} {'preempted/step':>15} {'CPU us/step':>12}")
    for (comm, pid, name), (vol, invol, ticks) in sorted(total.items(), key=lambda x: -x[1][2]):
        if vol + invol + ticks == 0:
            continue
        print(f"{comm:<12} {pid:>7} {name:<18} {100 * ticks / hz / dt:5.1f}% {vol / steps:13.2f} "
              f"{invol / steps:15.2f} {1e6 * ticks / hz / steps:12.1f}")


if __name__ == "__main__":
    main()
