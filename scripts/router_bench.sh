# The routing benchmark of docs/DEPLOY.md: two `kiln serve` replicas (one thread each; a KV
# budget of about 8,400 tokens each, so both together hold about half of the workload's 32
# prefixes of about 1,000 tokens)
# behind vllm-router, with --policy cache_aware and then round_robin (fresh replicas each time),
# driven by scripts/router_bench.py (32 sessions x 4 turns). Usage: bash scripts/router_bench.sh
# [KILN] [POLICIES]; needs vllm-router and the openai package.
set -u
K=${1:-./target/release/kiln}
POLICIES=${2:-cache_aware round_robin}
D=$(dirname "$0")
T=$(mktemp -d)
P1=8441; P2=8442; VR=8440
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$T"; }
trap cleanup EXIT
ready() { for _ in $(seq 1 150); do curl -sf "$1/health" >/dev/null && return 0; sleep 0.2; done; echo "not ready: $1"; return 1; }
for policy in $POLICIES; do
  $K serve --port $P1 --threads 1 --max-memory-mb ${MEM_MB:-295} > "$T/r1.log" 2>&1 & R1=$!
  $K serve --port $P2 --threads 1 --max-memory-mb ${MEM_MB:-295} > "$T/r2.log" 2>&1 & R2=$!
  pids+=("$R1" "$R2")
  ready http://127.0.0.1:$P1 && ready http://127.0.0.1:$P2 || exit 1
  grep -h "KV cache" "$T/r1.log" | head -1
  vllm-router --host 127.0.0.1 --port $VR --policy "$policy" \
    --worker-urls http://127.0.0.1:$P1 http://127.0.0.1:$P2 > "$T/vr.log" 2>&1 & V=$!
  pids+=("$V")
  ready http://127.0.0.1:$VR || { tail -5 "$T/vr.log"; exit 1; }
  echo "== vllm-router --policy $policy"
  timeout 1500 python3 "$D/router_bench.py" http://127.0.0.1:$VR "${@:3}"
  for p in $P1 $P2; do
    curl -s http://127.0.0.1:$p/metrics | grep -E "^(kiln_prompt_tokens_total|vllm:prefix_cache_hits_total)" | tr '\n' ' '
    echo "(replica $p)"
  done
  kill $V $R1 $R2; wait $V $R1 $R2 2>/dev/null
done
