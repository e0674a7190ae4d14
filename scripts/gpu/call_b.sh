# Device call B (right after A, on the same machine): the default model, carried in two parts,
# on the GPU: golden greedy continuations, refinement, compute-sanitizer.
set -u
. scripts/gpu/setup.sh
mkdir -p /root/.cache/kiln/models
cat /tmp/m/part1 .devm2/part > /root/.cache/kiln/models/SmolLM2-135M-Instruct.Q4_1.gguf
sha256sum /root/.cache/kiln/models/SmolLM2-135M-Instruct.Q4_1.gguf
K="$B/kiln"
echo "== golden fixtures on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/golden --nocapture --test-threads 1 2>&1 | grep -v "^$" | tail -25
echo "== engine: batched equals alone, on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/engine_real_model --test-threads 1 --nocapture 2>&1 | grep -E "^test |result|largest|panicked" | tail -12
echo "== default model"
$K bench --device cuda -p 512 -g 256 --json
KILN_CUDA_QUANT=1 $K bench --device cuda -p 512 -g 256 --json
$K run --device cuda -n 40 --temperature 0 "Why is the sky blue?"
echo "== refinement, 5 candidates x 200 tokens"
$K profile --batch-ratio 5 --tokens 200 --repeat 3 --device cuda 2>&1 | tail -8
echo "== compute-sanitizer"
compute-sanitizer --tool memcheck --print-limit 5 "$B"/teacher_logits tests/fixtures/tiny-qwen2/hf cuda 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20 /tmp/t.bin 2>&1 | tail -4
compute-sanitizer --tool memcheck --print-limit 5 $K run --device cuda -m tests/fixtures/tiny-qwen2/model.gguf -n 12 --temperature 0 --raw "hello there" 2>&1 | tail -4
