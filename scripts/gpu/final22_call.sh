# Device call (twenty-second session, the end of its device time): the submitted main against
# llama.cpp on the same files and the issue "GPU kernels at the bandwidth limit" figures, one
# round each (batch 1 two): copy bandwidth, batch 1 / 5 / 8, after 2,048 tokens, prefill, and
# weights read in place against dequantized. Usage (carry .devbin and .devlcpp):
# bash scripts/gpu/final22_call.sh    (QUANT=0: without the part read in place)
set -u
. scripts/gpu/setup.sh; K=$B/kiln
unpack_lcpp
random_models q05:qwen2.5-0.5b l1b:llama3.2-1b s135:smollm2-135m
[ "${QUANT:-1}" = 1 ] && ( $K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1; $K quantize /tmp/l1b /tmp/l1b-q40.gguf --type q4_0
  $K quantize /tmp/l1b /tmp/l1b-q8.gguf --type q8_0 ) >/dev/null 2>&1 &
QPID=$!
el "== copy bandwidth"; python3 scripts/gpu/copy_bw.py
for m in q05 l1b; do
  for b in 1 1 5 8; do $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 128 -b $b --json 2>/dev/null | bench_of "$m b$b"; done
  $K bench --device cuda -m /tmp/$m.gguf -p 2048 -g 128 --json 2>/dev/null | bench_of "$m p2048"
  for P in 32 2048; do echo "llama.cpp $m p$P $(timeout 120 /tmp/peer/lcpp_bench /tmp/$m.gguf $P 128 1 2 2>/dev/null | tail -1)"; done
done
[ "${QUANT:-1}" = 1 ] || { el done; exit 0; }
el "== waiting for the quantized files"; wait $QPID
for m in s135-q4_1 l1b-q40 l1b-q8; do
  $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --json 2>/dev/null | bench_of "$m dequantized"
  $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | bench_of "$m in-place"
done
$K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 256 --json 2>/dev/null | bench_of "l1b f16 -g 256"
el done
