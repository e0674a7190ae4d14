# Short device call (the end of a session's device time): k_attn rounding its output for W_o
# read in place (branch gpu-next2) against the build before (.devbin/kiln_base), on the
# SmolLM2-135M shape in Q4_1: checks first, then greedy text and batch-1 decode, then the
# sanitizer. Usage (carry .devbin): bash scripts/gpu/attn_round_call.sh
. scripts/gpu/setup.sh; K=$B/kiln
$B/random_hf_model /tmp/s135 f16 smollm2-135m >/dev/null
$K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 >/dev/null 2>&1
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t $B/arch_fixtures quantized_files_decoded
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t $B/backend_ops
for k in kiln kiln_base; do
  echo "greedy $k in place: $($B/$k run --device cuda -m /tmp/s135-q4_1.gguf -n 48 --temperature 0 --raw "hello world" --gpu-weights quantized 2>/dev/null | md5sum | cut -c1-12)"
done
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "decode", round(d["decode_tok_s"],1))' "$1"; }
for r in 1 2; do
  $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r kiln in place"
  $B/kiln_base bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r kiln_base in place"
  $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r kiln dequantized"
done
r=$(KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 100 compute-sanitizer --print-limit 5 $B/arch_fixtures quantized_files_decoded --test-threads 1 2>&1 | grep -E "ERROR SUMMARY" | head -2)
echo "sanitizer: ${r:-no summary}"
