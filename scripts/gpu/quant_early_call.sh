# Device call: k_mv1q reading its first weights before the wait, against the
# build before (.devbin/kiln_base); checks with weights kept quantized, then greedy text and
# batch-1 decode of three quantized files. Usage (carry .devbin): bash scripts/gpu/quant_early_call.sh
. scripts/gpu/setup.sh; K=$B/kiln
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "decode", round(d["decode_tok_s"],1))' "$1"; }
t() { timeout 200 "$@" --test-threads 1 2>&1 | grep -E "test result|panicked" | head -3; }
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t $B/backend_ops
KILN_TEST_DEVICE=cuda t $B/backend_ops
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized KILN_TEST_DEV=cuda-mvpf=1 t $B/backend_ops | sed 's/^/mvpf=1: /'
r=$(KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 300 compute-sanitizer --print-limit 5 $B/backend_ops quantized --test-threads 1 2>&1 | grep -E "ERROR SUMMARY" | head -2)
echo "${r:-compute-sanitizer: no summary (timed out?)}"
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 100 $B/arch_fixtures quantized_files_decoded --nocapture 2>&1 | grep -E "test result|panicked" | head -2
$B/random_hf_model /tmp/s135 f16 smollm2-135m >/dev/null; $B/random_hf_model /tmp/l1b f16 llama3.2-1b >/dev/null
$K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 >/dev/null; $K quantize /tmp/l1b /tmp/l1b-q8.gguf --type q8_0 >/dev/null; $K quantize /tmp/l1b /tmp/l1b-q40.gguf --type q4_0 >/dev/null
for m in s135-q4_1 l1b-q8 l1b-q40; do
  a=$($K run --device cuda -m /tmp/$m.gguf -n 32 --temperature 0 --raw "hello world" --gpu-weights quantized 2>/dev/null | md5sum | cut -c1-12)
  b=$($B/kiln_base run --device cuda -m /tmp/$m.gguf -n 32 --temperature 0 --raw "hello world" --gpu-weights quantized 2>/dev/null | md5sum | cut -c1-12)
  echo "greedy $m quantized: new $a before $b"
done
for r in 1; do for m in s135-q4_1 l1b-q8 l1b-q40; do
  $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r $m f16"
  $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r $m quantized"
  $B/kiln_base bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r $m quantized(before)"
done; done
