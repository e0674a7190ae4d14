"""Sums `ncu --csv --metrics gpu__time_duration.sum` output by kernel: python3 kernel_times.py LOG"""
import collections
import csv
import signal
import sys

signal.signal(signal.SIGPIPE, signal.SIG_DFL)

rows = list(csv.reader(open(sys.argv[1])))
# Other output (the profiled program's own) may come first: start at ncu's header row.
rows = rows[next(i for i, r in enumerate(rows) if "Kernel Name" in r):]
head = rows[0]
ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
tot = collections.defaultdict(float)
cnt = collections.Counter()
for r in rows[1:]:
    try:
        v = float(r[vi].replace(",", ""))
    except ValueError:
        continue
    scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}[r[ui]]
    name = r[ki].split("(")[0]
    tot[name] += v * scale
    cnt[name] += 1
all_us = sum(tot.values())
for k, v in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"{k[:60]:<60} {cnt[k]:>5} launches {v:>10.1f} us {v / cnt[k]:>8.1f} us each {100 * v / all_us:5.1f}%")
print(f"total {all_us:.1f} us")
