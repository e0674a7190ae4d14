# Device call: quantized weights read in place (`--gpu-weights quantized`) against f16, at
# batch 1, on random models of three real shapes; the base build (.devbin/kiln_base, when
# there) alongside. Correctness first: the backend operations with weights kept quantized,
# against float64 references, and compute-sanitizer over them.
# Usage (device tool, carry .devbin, built by scripts/gpu/build.sh): bash scripts/gpu/quant_call.sh
# MODELS="..." picks the files timed (default: all below); Q4K=0 skips writing the Q4_K file
# (five minutes of the call); ROUNDS=N (default 2).
set -u
. scripts/gpu/setup.sh
K="$B/kiln"
t() { timeout 300 "$@" --test-threads 1 2>&1 | grep -E "^test .*(FAILED|panicked)|test result|panicked at" | head -8; }
echo "== backend operations, weights kept quantized"
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B"/backend_ops
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 300 compute-sanitizer --print-limit 5 "$B"/backend_ops quantized --test-threads 1 2>&1 | grep -E "ERROR SUMMARY|test result" | head -3
echo "== quantized files decoded one token a pass against the prompt pass (weights in place, the same with cuda-qx=0, then f16)"
for w in quantized: quantized:cuda-qx=0 f16:; do
  KILN_TEST_DEV=${w#*:} KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=${w%%:*} timeout 300 "$B"/arch_fixtures quantized_files_decoded --nocapture 2>&1 | grep -E "a pass|test result|panicked" | tr '\n' ';'; echo
done
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 300 compute-sanitizer --print-limit 5 "$B"/arch_fixtures quantized_files_decoded 2>&1 | grep -E "ERROR SUMMARY|test result" | head -3
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
"$B"/random_hf_model /tmp/l1b f16 llama3.2-1b >/dev/null
"$B"/random_hf_model /tmp/s135 f16 smollm2-135m >/dev/null
$K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 | tail -1
$K quantize /tmp/q05 /tmp/q05-q8.gguf --type q8_0 | tail -1
$K quantize /tmp/l1b /tmp/l1b-q8.gguf --type q8_0 | tail -1
[ "${Q4K:-1}" = 0 ] || $K quantize /tmp/l1b /tmp/l1b-q4k.gguf --type q4_k | tail -1
$K quantize /tmp/l1b /tmp/l1b-q40.gguf --type q4_0 | tail -1
echo "== greedy text, quantized in place against dequantized to f16 (md5 of 48 tokens; both round the same weights)"
for m in /tmp/s135-q4_1.gguf /tmp/q05-q8.gguf; do
  a=$($K run --device cuda -m $m -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum | cut -c1-12)
  b=$($K run --device cuda -m $m -n 48 --temperature 0 --raw "hello world" --gpu-weights quantized 2>/dev/null | md5sum | cut -c1-12)
  echo "$m: f16 $a quantized $b"
done
j() { python3 -c '
import json, sys
t = sys.stdin.read()
try:
    print(sys.argv[1], round(json.loads(t)["decode_tok_s"], 1))
except Exception:
    print(sys.argv[1], "failed:", open("/tmp/bench.err").read()[-300:])
' "$1"; }
echo "== batch-1 decode tok/s (kiln bench -p 32 -g 256), rounds alternated"
for r in $(seq 1 ${ROUNDS:-2}); do
  for m in ${MODELS:-/tmp/s135-q4_1.gguf /tmp/q05 /tmp/q05-q8.gguf /tmp/l1b /tmp/l1b-q8.gguf /tmp/l1b-q4k.gguf /tmp/l1b-q40.gguf}; do
    $K bench --device cuda -m $m -p 32 -g 256 --json 2>/tmp/bench.err | j "r$r $m f16"
    case $m in *.gguf)
      $K bench --device cuda -m $m -p 32 -g 256 --gpu-weights quantized --json 2>/tmp/bench.err | j "r$r $m quantized"
      [ -x "$B/kiln_base" ] && "$B"/kiln_base bench --device cuda -m $m -p 32 -g 256 --gpu-weights quantized --json 2>/tmp/bench.err | j "r$r $m quantized(base)"
      [ -n "${DEV:-}" ] && $K bench --device cuda -m $m -p 32 -g 256 --gpu-weights quantized --dev "$DEV" --json 2>/tmp/bench.err | j "r$r $m quantized --dev $DEV";;
    esac
  done
done
