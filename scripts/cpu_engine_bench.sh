# The engine's CPU figures of docs/PERF.md ("One engine for every path", CPU): kiln bench decode
# of an older build against this one (alternating), 8 sampled streams through kiln serve against
# one (a raw HTTP/SSE client: the openai package's own CPU cost per request competes with the
# server on 2 cores), and refinement's 5 candidates against 1. Default model, 2 threads.
# usage: bash scripts/cpu_engine_bench.sh NEW_KILN [OLD_KILN]
set -u
NEW=$1; OLD=${2:-}
echo "== kiln bench -p 512 -g 128 --threads 2 (decode tok/s; alternating, 3 rounds)"
for i in 1 2 3; do
  for k in "$OLD" "$NEW"; do
    [ -n "$k" ] || continue
    $k bench --threads 2 -p 512 -g 128 --json 2>/dev/null |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "decode", round(d["decode_tok_s"],1), "sampled", round(d.get("decode_sampled_tok_s", float("nan")),1), "prefill", round(d["prefill_tok_s"],1))' "$k"
  done
done
echo "== kiln serve --threads 2: 1 and 8 streams at temperature 0.7, 64 tokens each"
for k in "$OLD" "$NEW"; do
  [ -n "$k" ] || continue
  $k serve --threads 2 --port 8282 > /tmp/cpu_serve.log 2>&1 &
  SP=$!
  for i in $(seq 1 120); do curl -sf http://127.0.0.1:8282/health >/dev/null && break; sleep 0.5; done
  echo "$k"
  python3 "$(dirname "$0")/serve_bench.py" --port 8282 --streams 1,8 --temperatures 0.7 --max-tokens 64 --procs 2 --client raw
  kill $SP; wait $SP 2>/dev/null
done
echo "== refinement: kiln profile --batch-ratio 5 --tokens 96 --threads 2 (alternating, 2 rounds)"
for i in 1 2; do
  for k in "$OLD" "$NEW"; do
    [ -n "$k" ] || continue
    $k profile --batch-ratio 5 --tokens 96 --threads 2 --repeat 3 2>/dev/null |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "one", round(d["one_candidate_s"],3), "five", round(d["batch_s"],3), "ratio", round(d["ratio"],2))' "$k"
  done
done
