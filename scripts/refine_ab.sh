#!/usr/bin/env bash
# Refinement's 5 candidates against 1 (`kiln profile --batch-ratio 5 --tokens 96 --threads 2
# --repeat 3`) for several builds, alternated round by round so that a machine whose speed
# drifts treats them alike; prints each build's medians and every round's ratio.
# usage: bash scripts/refine_ab.sh ROUNDS KILN [KILN...]
set -eu
rounds=$1; shift
out=$(mktemp)
for _ in $(seq "$rounds"); do
  for k in "$@"; do
    "$k" profile --batch-ratio 5 --tokens 96 --threads 2 --repeat 3 2>/dev/null |
      python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(sys.argv[1], d["one_candidate_s"], d["batch_s"], d["ratio"])' "$k" >> "$out"
  done
done
python3 - "$out" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, one, five, ratio = line.split()
    runs[k].append((float(one), float(five), float(ratio)))
for k, v in runs.items():
    med = lambda i: statistics.median(x[i] for x in v)
    print(f"{k}: one {med(0):.3f} s, five {med(1):.3f} s, ratio median {med(2):.2f}, rounds",
          " ".join(f"{x[2]:.2f}" for x in sorted(v, key=lambda x: x[2])))
PY
rm -f "$out"
