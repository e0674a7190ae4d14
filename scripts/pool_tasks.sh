#!/bin/bash
# Where a served step's time goes, task by task: builds kiln with scripts/pool_tasks.patch (the
# pool's tasks timed on both threads; never committed to the pool) in a worktree of HEAD, runs
# 8 streams of 256 tokens four times through `kiln serve` on the default model (temperature
# 0.7), and prints the patch's tables (every 40,000 tasks, about 260 steps of 8 rows).
# Usage: bash scripts/pool_tasks.sh [STREAMS]   (default 8,8,8,8)
set -eu
W=/tmp/kiln_pool_tasks
M=${MODEL:-$HOME/.cache/kiln/models/SmolLM2-135M-Instruct.Q4_1.gguf}
rm -rf "$W"; git worktree prune
git worktree add -q --detach "$W" HEAD
# A target folder of its own (target-instr), so that the instrumented build replaces no other.
T=$PWD/target-instr
(cd "$W" && git apply "$OLDPWD/scripts/pool_tasks.patch" &&
  CARGO_TARGET_DIR=$T cargo build --release -q -p kiln)
cp "$T/release/kiln" /tmp/kiln_pool_tasks_bin
git worktree remove --force "$W"
/tmp/kiln_pool_tasks_bin serve -m "$M" --port 8392 2> /tmp/pool_tasks.log > /dev/null &
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
