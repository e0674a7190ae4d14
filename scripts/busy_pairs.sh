#!/bin/bash
# The default thread count against `--threads 1` with one core taken (a shell loop spinning):
# N alternated pairs (default 16) of `kiln bench -p 64 -g GEN` (default 256), the order swapped
# every other pair; prints each pair, then the median and mean of the pairs' ratios
# (default / one thread) and how many the default won.
# Usage: N=30 bash scripts/busy_pairs.sh [./target/release/kiln]
set -u
K=${1:-./target/release/kiln}
M=${MODEL:-$HOME/.cache/kiln/models/SmolLM2-135M-Instruct.Q4_1.gguf}
dec() {
  "$K" bench -m "$M" -p 64 -g "${GEN:-256}" --threads "$1" --json 2>/dev/null |
    python3 -c "import json,sys; print(round(json.load(sys.stdin)['decode_tok_s'], 1))"
}
(while :; do :; done) &
SPIN=$!
trap 'kill $SPIN 2>/dev/null' EXIT
sleep 0.3
for i in $(seq "${N:-16}"); do
  if [ $((i % 2)) -eq 1 ]; then a=$(dec 1); b=$(dec 0); else b=$(dec 0); a=$(dec 1); fi
  echo "pair $i: one thread $a, default $b"
done | tee /dev/stderr | python3 -c "
import statistics as s, sys
r = [float(l.split()[-1]) / float(l.split()[-3].rstrip(',')) for l in sys.stdin]
print(f'{len(r)} pairs: ratio median {s.median(r):.3f}, mean {s.mean(r):.3f}, default won {sum(x >= 1 for x in r)}')"
