"""Sums `ncu --csv --metrics gpu__time_duration.sum[,dram__bytes_read.sum]` output by kernel:
python3 kernel_times.py LOG [--by-grid]. With --by-grid, launches of one kernel are told apart
by grid size (a product's shape); with the DRAM metric, bytes read and GB/s are shown too."""
import collections
import csv
import signal
import sys

signal.signal(signal.SIGPIPE, signal.SIG_DFL)

rows = list(csv.reader(open(sys.argv[1])))
by_grid = "--by-grid" in sys.argv[2:]
# Other output (the profiled program's own) may come first: start at ncu's header row.
rows = rows[next(i for i, r in enumerate(rows) if "Kernel Name" in r):]
head = rows[0]
col = {name: head.index(name) for name in ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value")}
gi = head.index("Grid Size") if "Grid Size" in head else None
if by_grid and gi is None:
    sys.exit(f"{sys.argv[1]}: --by-grid, but ncu's output has no Grid Size column")
UNIT = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
        "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}
launch = {}
for r in rows[1:]:
    try:
        v = float(r[col["Metric Value"]].replace(",", ""))
    except (ValueError, IndexError):
        continue  # not a metric row
    unit = r[col["Metric Unit"]]
    if unit not in UNIT:
        sys.exit(f"{sys.argv[1]}: unit {unit!r} of {r[col['Metric Name']]} is not one this script knows")
    v *= UNIT[unit]
    name = r[col["Kernel Name"]].split("(")[0]
    if by_grid:
        name = f"{name} {r[gi]}"
    d = launch.setdefault(r[col["ID"]], {"name": name})
    d["us" if r[col["Metric Name"]].startswith("gpu__time") else "bytes"] = v
tot = collections.defaultdict(float)
byt = collections.defaultdict(float)
cnt = collections.Counter()
for d in launch.values():
    tot[d["name"]] += d.get("us", 0.0)
    byt[d["name"]] += d.get("bytes", 0.0)
    cnt[d["name"]] += 1
all_us = sum(tot.values())
for k, v in sorted(tot.items(), key=lambda kv: -kv[1]):
    extra = ""
    if byt[k]:
        extra = f" {byt[k] / cnt[k] / 1e6:8.2f} MB each {byt[k] / max(v, 1e-9) / 1e3:7.0f} GB/s"
    print(f"{k[:60]:<60} {cnt[k]:>5} launches {v:>10.1f} us {v / cnt[k]:>8.1f} us each {100 * v / all_us:5.1f}%{extra}")
print(f"total {all_us:.1f} us")
