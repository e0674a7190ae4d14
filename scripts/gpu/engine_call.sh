# Device call: the one engine on the GPU. Correctness first (backend operations including
# device sampling against the host reference, tiny fixtures, the engine's batch independence
# on a Qwen2.5-0.5B-shaped random model, compute-sanitizer on sampling), then speed: `kiln
# bench` (the engine path, greedy and sampled), `kiln serve` driven by N concurrent openai
# streams (scripts/serve_bench.py), and refinement. Usage (device tool, carry .devbin and
# .whl): bash scripts/gpu/engine_call.sh [quick|speed]
set -u
. scripts/gpu/setup.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site
K="$B/kiln"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
if [ "${1:-}" != speed ]; then
echo "== backend operations and sampling on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/backend_ops --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert" | head -20
echo "== tiny fixtures on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/arch_fixtures --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -8
echo "== engine on CUDA: batched equals alone (seeded sampling), scoring (Qwen 0.5B shape)"
KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 timeout 200 "$B"/real_model --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert" | head -10
echo "== compute-sanitizer, sampling"
KILN_TEST_DEVICE=cuda timeout 200 compute-sanitizer --print-limit 5 "$B"/backend_ops sample 2>&1 | grep -E "ERROR SUMMARY|test result" | head -3
fi
[ "${1:-}" = quick ] && exit 0
echo "== kiln bench (engine path), Qwen2.5-0.5B shape"
for b in 1 5 8 64 256; do
  $K bench --device cuda -m /tmp/q05 -p 32 -g 128 -b $b --json > $OUT/bench_b$b.json 2>&1
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("batch", d["batch"], "greedy", round(d["decode_tok_s"],1), "sampled", round(d["decode_sampled_tok_s"],1), "prefill", round(d["prefill_tok_s"]))' $OUT/bench_b$b.json || tail -3 $OUT/bench_b$b.json
done
echo "== kiln serve + serve_bench.py (openai streams)"
$K serve --device cuda -m /tmp/q05 --max-running 256 --max-batch-tokens 512 --max-memory-mb 60000 --max-queue 1024 --port 8181 > /tmp/serve.log 2>&1 &
SP=$!
for i in $(seq 1 120); do curl -sf http://127.0.0.1:8181/health >/dev/null && break; sleep 0.5; done
timeout 300 python3 scripts/serve_bench.py --port 8181 --streams 1,8,64,256 --temperatures 0.7,0 --procs 12 2>&1 | tee $OUT/serve_bench.jsonl
curl -s http://127.0.0.1:8181/metrics | grep -E "^kiln_engine" | head -12
kill $SP; wait $SP 2>/dev/null
tail -3 /tmp/serve.log
echo "== refinement, 5 candidates x 200 tokens against 1"
timeout 120 $K profile --batch-ratio 5 --tokens 200 --repeat 3 --device cuda -m /tmp/q05 2>&1 | tail -4
