# Device call (twenty-first session): k_mvt (3 to 8 rows on the tensor cores) reading its first
# step of weights before the wait instead of sending them all towards L2, against the build
# before (.devbin/kiln_base); with the checks of issue "GPU kernels at the bandwidth limit", its
# batch-1, 5- and 8-sequence, long-context and quantized figures, and llama.cpp on the same files.
# Usage (carry .devbin and .devlcpp): bash scripts/gpu/mvt_early_call.sh
# BASE_QUANT=1: kiln_base's in-place figures too (for a change to the quantized path).
set -u
. scripts/gpu/setup.sh; K=$B/kiln
unpack_lcpp
random_models q05:qwen2.5-0.5b l1b:llama3.2-1b s135:smollm2-135m
# The quantized files in the background while the checks run (on the twenty-first session's
# call, written before the checks, they and the random models took 364 s).
( $K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1; $K quantize /tmp/l1b /tmp/l1b-q8.gguf --type q8_0
  $K quantize /tmp/l1b /tmp/l1b-q40.gguf --type q4_0; $K quantize /tmp/l1b /tmp/l1b-q4k.gguf --type q4_k ) >/dev/null 2>&1 &
QPID=$!
el "== checks"
KILN_TEST_DEVICE=cuda t $B/backend_ops
KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-mvpf=1 t $B/backend_ops | sed 's/^/mvpf=1: /'
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t $B/backend_ops | sed 's/^/quantized: /'
KILN_TEST_DEVICE=cuda t $B/arch_fixtures
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t $B/arch_fixtures | sed 's/^/quantized: /'
r=$(KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 200 compute-sanitizer --print-limit 5 $B/arch_fixtures quantized_files_decoded --test-threads 1 2>&1 | grep -E "ERROR SUMMARY" | head -2); echo "sanitizer, quantized files one token a pass: ${r:-no summary}"
KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 t $B/real_model
r=$(KILN_TEST_DEVICE=cuda timeout 300 compute-sanitizer --print-limit 5 $B/backend_ops --test-threads 1 2>&1 | grep -E "ERROR SUMMARY" | head -2); echo "sanitizer: ${r:-no summary}"
p=$(printf 'word %.0s' $(seq 600))
el "== waiting for the quantized files"; wait $QPID
for k in kiln kiln_base; do
  echo "greedy $k: q05 $($B/$k run --device cuda -m /tmp/q05.gguf -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum | cut -c1-12)" \
    "after 1,200 $($B/$k run --device cuda -m /tmp/q05.gguf -n 32 --temperature 0 --raw "$p" 2>/dev/null | md5sum | cut -c1-12)" \
    "s135-q4_1 quantized $($B/$k run --device cuda -m /tmp/s135-q4_1.gguf -n 32 --temperature 0 --raw "hello world" --gpu-weights quantized 2>/dev/null | md5sum | cut -c1-12)" \
    "l1b-q40 quantized $($B/$k run --device cuda -m /tmp/l1b-q40.gguf -n 32 --temperature 0 --raw "hello world" --gpu-weights quantized 2>/dev/null | md5sum | cut -c1-12)" \
    "l1b-q8 quantized $($B/$k run --device cuda -m /tmp/l1b-q8.gguf -n 32 --temperature 0 --raw "hello world" --gpu-weights quantized 2>/dev/null | md5sum | cut -c1-12)"
done
el "== copy bandwidth"; python3 scripts/gpu/copy_bw.py
el "== batch 1, 5, 8 (kiln, kiln_base alternated) and llama.cpp"
for r in 1 2; do for m in q05 l1b; do
  for k in kiln kiln_base; do for b in 1 5 8; do $B/$k bench --device cuda -m /tmp/$m.gguf -p 32 -g 128 -b $b --json 2>/dev/null | bench_of "r$r $k $m b$b"; done; done
  $K bench --device cuda -m /tmp/$m.gguf -p 2048 -g 128 --json 2>/dev/null | bench_of "r$r kiln $m p2048"
  for P in 32 2048; do echo "r$r llama.cpp $m p$P $(timeout 120 /tmp/peer/lcpp_bench /tmp/$m.gguf $P 128 1 2 2>/dev/null | tail -1)"; done
done; done
el "== weights read in place against dequantized to f16 (-p 32 -g 256)"
for r in 1 2; do for m in s135-q4_1 l1b-q8 l1b-q40 l1b-q4k; do
  $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --json 2>/dev/null | bench_of "r$r $m dequantized"
  $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | bench_of "r$r $m in-place"
  [ "${BASE_QUANT:-0}" = 1 ] && $B/kiln_base bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | bench_of "r$r $m in-place(kiln_base)"
done; $K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 256 --json 2>/dev/null | bench_of "r$r l1b f16-file"; done
el done
