# Device call (twenty-eighth session), issue "GPU kernels at the bandwidth limit": the head read
# in place with four outputs a warp (k_mv1q4, `kiln`) against two (`kiln_prev`, the build
# before it; and `kiln --dev cuda-qwide=0`, k_mv1q for every product). The head's sums are the
# same, so the greedy text must be too. The shipped default model (its first part left in /tmp/m
# by a call before this one, as scripts/gpu/sitout_call.sh says; this call carries .devbin and
# .devmodel2), then the Llama-3.2-1B shape's Q4_0 and Q8_0 files (random
# weights; a Q8_0 head), compute-sanitizer, and the default model's kernels by ncu.
# Usage: bash scripts/gpu/head_call.sh
set -u
. scripts/gpu/setup.sh
K=$B/kiln
nvidia-smi --query-gpu=name --format=csv,noheader
join_default_model || exit 1
( random_models l1b:llama3.2-1b; for q in q4_0 q8_0; do $K quantize /tmp/l1b /tmp/l1b-$q.gguf --type $q; done ) >/tmp/quant.log 2>&1 &
QPID=$!
el "== the default model: greedy md5 (48 tokens) in place, kiln / kiln_prev / qwide=0; f16"
echo "$(greedy_md5 kiln /tmp/smol.gguf --gpu-weights quantized) $(greedy_md5 kiln_prev /tmp/smol.gguf --gpu-weights quantized) $(greedy_md5 kiln /tmp/smol.gguf --gpu-weights quantized --dev cuda-qwide=0); $(greedy_md5 kiln /tmp/smol.gguf)"
r=$(timeout 100 compute-sanitizer --print-limit 5 $K run --device cuda -m /tmp/smol.gguf --gpu-weights quantized \
  -n 6 --temperature 0 "hello" 2>&1 | grep -E "ERROR SUMMARY" | head -1)
echo "compute-sanitizer, the default model read in place: ${r:-no summary}"
el "== the default model, -p 32 -g 256, three rounds alternated"
for r in 1 2 3; do
  $K bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --json 2>/dev/null | decode_of "r$r f16"
  $K bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | decode_of "r$r in place"
  $B/kiln_prev bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | decode_of "r$r in place prev"
done
el "== Llama-1B shape (Q8_0 head), -p 32 -g 256"
wait $QPID; tail -1 /tmp/quant.log
echo "greedy md5 q4_0: $(greedy_md5 kiln /tmp/l1b-q4_0.gguf --gpu-weights quantized) $(greedy_md5 kiln_prev /tmp/l1b-q4_0.gguf --gpu-weights quantized)"
for r in 1 2; do
  $K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 256 --json 2>/dev/null | decode_of "r$r l1b f16"
  for m in l1b-q4_0 l1b-q8_0; do
    $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | decode_of "r$r $m in place"
    $B/kiln_prev bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | decode_of "r$r $m in place prev"
  done
done
el "== ncu: the default model read in place (-p 8 -g 2)"
timeout 80 ncu --clock-control none --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum \
  $K bench --dev cuda-graphs=0 --device cuda -m /tmp/smol.gguf -p 8 -g 2 --gpu-weights quantized \
  --json > /tmp/ncu_h.csv 2>/dev/null
python3 scripts/gpu/kernel_times.py /tmp/ncu_h.csv --by-grid | grep "mv1q" | head -8
el done
