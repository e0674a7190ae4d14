#!/bin/bash
# Where a served step's time goes, task by task: builds kiln with the pool's timing (feature
# kiln-cpu/pool-timing, into target-instr so that it replaces no other build), runs 8 streams
# of 256 tokens four times through `kiln serve` on the default model (temperature 0.7), and
# prints the throughput and the timing's tables (every 40,000 tasks, about 260 steps of 8 rows).
# Usage: bash scripts/pool_tasks.sh [STREAMS]   (default 8,8,8,8)
set -eu
M=${MODEL:-$HOME/.cache/kiln/models/SmolLM2-135M-Instruct.Q4_1.gguf}
CARGO_TARGET_DIR=$PWD/target-instr cargo build --release -q -p kiln --features kiln-cpu/pool-timing
K=$PWD/target-instr/release/kiln
"$K" serve -m "$M" --port 8392 2> /tmp/pool_tasks.log > /dev/null &
P=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:8392/v1/models | grep -q '"id"' && break; sleep 0.1; done
python3 scripts/serve_bench.py --port 8392 --streams "${1:-8,8,8,8}" --temperatures 0.7 \
    --max-tokens 256 --procs 1 --client raw | python3 -c "
import json, sys
for l in sys.stdin:
    d = json.loads(l); e = d['engine']
    print(f\"{d['streams']} streams: {d['aggregate_tok_s']} tok/s, {e['steps']:.0f} steps, {1e3 * e['model_s'] / e['steps']:.2f} ms model a step, {1e3 * e['host_s'] / e['steps']:.3f} ms host\")"
kill $P; wait $P 2>/dev/null || true
grep -A5 "^pool tasks" /tmp/pool_tasks.log | grep -v request_id
