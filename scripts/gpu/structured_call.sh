# Device call for structured output (issue "Structured outputs, tool calling"): the sampling
# kernels with token masks against the host reference (and compute-sanitizer), then what
# constrained decoding costs through kiln serve at 1, 8 and 64 streams and the time to first
# token with a new schema (scripts/structured_bench.py), on the Qwen2.5-0.5B shape.
# Usage (device tool, carry .devbin): bash scripts/gpu/structured_call.sh
# MODEL=FILE runs another model (default: the Qwen shape, written here); SERVE_FLAGS are
# added to kiln serve's; OPS=0 skips the sampling kernels' tests.
set -u
. scripts/gpu/setup.sh
K="$B/kiln"
M=${MODEL:-/tmp/q05}
[ -n "${MODEL:-}" ] || "$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
if [ "${OPS:-1}" = 1 ]; then
echo "== sampling with token masks on CUDA against the host reference"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/backend_ops sample 2>&1 | grep -E "^test |test result|panicked|assert" | head -10
KILN_TEST_DEVICE=cuda timeout 200 compute-sanitizer --print-limit 5 "$B"/backend_ops sample 2>&1 | grep -E "ERROR SUMMARY|test result" | head -3
fi
echo "== a constrained answer on the GPU"
echo '{"type":"object","properties":{"n":{"type":"integer"},"ok":{"type":"boolean"}},"required":["n","ok"],"additionalProperties":false}' > /tmp/s.json
$K run --device cuda -m "$M" --temperature 0.7 --max-tokens 40 --json-schema /tmp/s.json "x" 2>/dev/null; echo
echo "== constrained against free decoding through kiln serve (scripts/structured_bench.py)"
$K serve --device cuda -m "$M" --max-running 256 --max-batch-tokens 512 --max-memory-mb 60000 --port 8181 ${SERVE_FLAGS:-} > /tmp/serve.log 2>&1 &
P=$!
for i in $(seq 1 120); do curl -sf http://127.0.0.1:8181/health >/dev/null && break; sleep 0.5; done
timeout 400 python3 scripts/structured_bench.py --port 8181 --streams ${STREAMS:-1,8,64} --rounds ${ROUNDS:-3} --max-tokens 192 --ttft 20
curl -s http://127.0.0.1:8181/metrics | grep -E "^kiln_engine_(mask|masks|unmasked|host|model|stream|launch|sampling_launch|finish|steps)"
kill $P; wait $P 2>/dev/null
tail -3 /tmp/serve.log
