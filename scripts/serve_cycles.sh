#!/bin/bash
# 8 sampled streams through `kiln serve` against one: for each cycle and each kiln binary
# given (alternated, so that drift falls on all alike), a fresh server on the default model
# runs scripts/serve_bench.py with streams 1,8,1,8,1,8 at temperature 0.7; prints the
# 1- and 8-stream rounds and the ratio of their medians.
# Usage: CYCLES=3 MAXTOK=64 bash scripts/serve_cycles.sh ./target/release/kiln [OTHER_KILN ...]
set -u
M=${MODEL:-$HOME/.cache/kiln/models/SmolLM2-135M-Instruct.Q4_1.gguf}
PORT=${PORT:-8391}
for c in $(seq "${CYCLES:-3}"); do
  for K in "$@"; do
    "$K" serve -m "$M" --port "$PORT" > /tmp/serve_cycles.log 2>&1 &
    P=$!
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$PORT/v1/models" | grep -q '"id"' && break
      sleep 0.1
    done
    python3 scripts/serve_bench.py --port "$PORT" --streams 1,8,1,8,1,8 --temperatures 0.7 \
        --max-tokens "${MAXTOK:-64}" --procs 1 --client raw | python3 -c "
import json, statistics as s, sys
one, eight = [], []
for l in sys.stdin:
    d = json.loads(l)
    (one if d['streams'] == 1 else eight).append(d['aggregate_tok_s'])
print(f'cycle $c $K: one {one} eight {eight} ratio of medians {s.median(eight) / s.median(one):.2f}')"
    kill $P
    wait $P 2>/dev/null
  done
done
