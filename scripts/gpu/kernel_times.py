"""Sums `ncu --csv --metrics gpu__time_duration.sum` output by kernel: python3 kernel_times.py LOG"""
import collections
import csv
import signal
import sys

signal.signal(signal.SIGPIPE, signal.SIG_DFL)

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]
ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
tot = collections.defaultdict(float)
cnt = collections.Counter()
for r in rows[1:]:
    try:
        v = float(r[vi].replace(",", ""))
    except ValueError:
        continue
    scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(r[ui], 1.0)
    name = r[ki].split("(")[0]
    tot[name] += v * scale
    cnt[name] += 1
all_us = sum(tot.values())
for k, v in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"{k:<40} {cnt[k]:>5} launches {v:>10.1f} us {100 * v / all_us:5.1f}%")
print(f"total {all_us:.1f} us")
