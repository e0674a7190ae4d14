#!/bin/bash
# Two kiln builds on one `kiln bench` command: N alternated pairs (default 8), the order swapped
# every other pair so that the machine's drift falls on both alike; prints each pair's decode
# tok/s (the bench's greedy figure) and new / old, then the median and range of the ratios.
# Usage: N=8 bash scripts/ab_pairs.sh NEW_KILN OLD_KILN BENCH_ARGS...
#   e.g. bash scripts/ab_pairs.sh ./target/release/kiln /tmp/kiln_old -p 8 -g 256 -b 8
set -u
[ $# -ge 2 ] || { echo "usage: [N=8] bash scripts/ab_pairs.sh NEW_KILN OLD_KILN BENCH_ARGS..." >&2; exit 2; }
case ${N:-8} in ''|*[!0-9]*|0) echo "N: \"${N}\" is not a number of pairs (1 or more)" >&2; exit 2 ;; esac
NEW=$1 OLD=$2
shift 2
M=${MODEL:-$HOME/.cache/kiln/models/SmolLM2-135M-Instruct.Q4_1.gguf}
dec() {
  "$1" bench -m "$M" "${@:2}" --json 2>/dev/null |
    python3 -c "import json,sys; print(round(json.load(sys.stdin)['decode_tok_s'], 1))"
}
ratios=""
for i in $(seq "${N:-8}"); do
  if [ $((i % 2)) = 1 ]; then n=$(dec "$NEW" "$@"); o=$(dec "$OLD" "$@"); else o=$(dec "$OLD" "$@"); n=$(dec "$NEW" "$@"); fi
  [ -n "$n" ] && [ -n "$o" ] || { echo "pair $i: a bench run failed (check the arguments)" >&2; exit 1; }
  r=$(python3 -c "print(round($n / $o, 3))")
  echo "pair $i: new $n old $o new/old $r"
  ratios="$ratios $r"
done
python3 -c "
import statistics as s, sys
r = [float(x) for x in sys.argv[1:]]
print(f'new/old: median {s.median(r):.3f}, range {min(r):.3f} to {max(r):.3f}, new faster in {sum(x > 1 for x in r)} of {len(r)}')" $ratios
