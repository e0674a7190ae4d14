# Device call (twenty-third session), branch gpu-mv1q (`kiln`) against main (`kiln_base`):
# - k_mv1q (one row, weights read in place) reads each lane's first two half groups before
#   the wait, held to 64 registers (gpu-mvt2's version took 77: Llama-1B 12% slower);
# - k_mvt (3 to 8 rows): the RMSNorm's sum of squares with eight float4 loads a lane in flight
#   (row_sumsq) where a scalar loop waited for each load; `kiln_nonorm` skips that pass (its
#   output is wrong: timing only, what the pass still costs).
# Checks first; k_mv1q keeps its sums' order (greedy text as main's); row_sumsq adds in
# another order, so the several-row products' last bits may move.
# Usage (carry .devbin): bash scripts/gpu/mvn_call.sh
. scripts/gpu/setup.sh; K=$B/kiln
random_models q05:qwen2.5-0.5b l1b:llama3.2-1b s135:smollm2-135m
$K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 >/dev/null 2>&1
( for q in q4_0 q8_0 q4_k; do $K quantize /tmp/l1b /tmp/l1b-$q.gguf --type $q; done ) >/dev/null 2>&1 &
QPID=$!
el "== checks"
checks
KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 t $B/real_model
g() { $B/$1 run --device cuda -m "${@:2}" -n 48 --temperature 0 --raw "hello world, the five boxing wizards" 2>/dev/null | md5sum | cut -c1-12; }
el "== waiting for the quantized files"; wait $QPID
for k in kiln kiln_base; do
  echo "greedy $k: q05 $(g $k /tmp/q05.gguf) s135-q4_1 in place $(g $k /tmp/s135-q4_1.gguf --gpu-weights quantized)" \
    "l1b q4_0 $(g $k /tmp/l1b-q4_0.gguf --gpu-weights quantized) q8_0 $(g $k /tmp/l1b-q8_0.gguf --gpu-weights quantized)" \
    "q4_k $(g $k /tmp/l1b-q4_k.gguf --gpu-weights quantized)"
done
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "decode", round(d["decode_tok_s"],1))' "$1"; }
el "== 1, 5 and 8 rows (-p 32 -g 128)"
for r in 1 2; do for m in q05 l1b; do for k in kiln kiln_nonorm kiln_base; do for b in 1 5 8; do
  $B/$k bench --device cuda -m /tmp/$m.gguf -p 32 -g 128 -b $b --json 2>/dev/null | j "r$r $k $m b$b"
done; done; done; done
el "== weights read in place (-p 32 -g 256), against dequantized and the f16 file"
for r in 1 2; do for m in s135-q4_1 l1b-q4_0 l1b-q8_0 l1b-q4_k; do
  for k in kiln kiln_base; do
    $B/$k bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r $k $m in-place"
  done
done
$K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r kiln s135-q4_1 dequantized"
$K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r kiln l1b f16"; done
el "== ncu, 8 rows"
for k in kiln kiln_base; do
  timeout 100 ncu --clock-control none --csv --metrics gpu__time_duration.sum $B/$k bench --dev cuda-graphs=0 \
    --device cuda -m /tmp/q05.gguf -p 8 -g 8 -b 8 --json > /tmp/ncu8.csv 2>/dev/null
  echo "$k:"; python3 scripts/gpu/kernel_times.py /tmp/ncu8.csv --by-grid | head -6
done
el done
