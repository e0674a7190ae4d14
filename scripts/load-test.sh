#!/usr/bin/env bash
# Bounded load test of `kiln serve` on loopback with wrk: C connections for D seconds of
# short chat completions, twice, with the server's resident memory read before, between and
# after. Usage: scripts/load-test.sh [CONNECTIONS] [SECONDS] [MAX_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-8}; D=${2:-20}; N=${3:-16}
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q
PORT=18181
./target/release/kiln serve --port $PORT --threads "${THREADS:-2}" --max-running 16 2>/tmp/kiln-load-serve.log &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.2; done
LUA=$(mktemp --suffix .lua)
cat >"$LUA" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"default","messages":[{"role":"user","content":"Give me one short fact about the sea."}],"max_tokens":$N,"temperature":0.7}'
LUA
rss() { awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$PID/status; }
curl -s -o /dev/null http://127.0.0.1:$PORT/v1/chat/completions -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"warm up"}],"max_tokens":4}'
echo "RSS before: $(rss)"
for round in 1 2; do
  echo "== round $round: wrk -t2 -c$C -d${D}s, max_tokens $N"
  wrk -t2 -c"$C" -d"${D}s" --timeout 120s --latency -s "$LUA" http://127.0.0.1:$PORT/v1/chat/completions
  sleep 1
  echo "RSS after round $round: $(rss)"
done
curl -s http://127.0.0.1:$PORT/metrics | grep -E '^kiln_requests_total|^kiln_generation_tokens_total|^kiln_kv_blocks_used|^kiln_running'
