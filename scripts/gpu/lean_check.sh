# Device call, the short check after a change to the one-row quantized path: backend operations and
# the one-token-a-pass test with weights read in place (compute-sanitizer over the latter), the
# SmolLM2-shape Q4_1 file's greedy text in place and as f16, and two rounds of its batch-1 speed
# (f16, in place, then in place with --dev cuda-qx=0).
# Usage (device tool, carry .devbin, built by scripts/gpu/build.sh): bash scripts/gpu/lean_check.sh
set -u
. scripts/gpu/setup.sh; K=$B/kiln
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 120 "$B"/backend_ops --test-threads 1 2>&1 | grep -E "test result|panicked" | head -3
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 120 "$B"/arch_fixtures quantized_files_decoded --nocapture 2>&1 | grep -E "a pass|test result|panicked" | tr '\n' ';'; echo
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 120 compute-sanitizer --print-limit 5 "$B"/arch_fixtures quantized_files_decoded 2>&1 | grep -E "ERROR SUMMARY|test result" | head -2
"$B"/random_hf_model /tmp/s135 f16 smollm2-135m >/dev/null; $K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 >/dev/null 2>&1
for w in f16 quantized; do echo "md5 $w $($K run --device cuda -m /tmp/s135-q4_1.gguf -n 48 --temperature 0 --raw 'hello world' --gpu-weights $w 2>/dev/null | md5sum | cut -c1-12)"; done
for r in 1 2; do for w in f16 quantized; do echo "r$r $w $($K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --gpu-weights $w --json 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["decode_tok_s"],1))')"; done; done
for r in 1 2; do echo "r$r --dev cuda-qx=0 $($K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --gpu-weights quantized --dev cuda-qx=0 --json 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["decode_tok_s"],1))')"; done
