# Device calls (twenty-fifth session), the submitted main's build in .devbin (carry .devbin).
# PART=a: checks, then the issue "GPU kernels at the bandwidth limit" figures: 1 / 5 / 8 rows,
#   after 2,048 tokens, prefill of 2,048, weights read in place against dequantized / f16;
#   `kiln_q40` (Q4_0 rows without their offsets, which are -8 times the scales) against it:
#   its tests (`*_q40`), greedy text, and the Llama-1B-shape Q4_0 file in place.
# PART=b: the issue "Speculative decoding" on the GPU: what a step of the SmolLM2-135M shape
#   costs as F16 (the target), as Q4_1 read in place (the draft) and with SmolLM2's 30 layers
#   but almost no weights (the narrow shape: the fixed cost of the depth); the pair through
#   `kiln bench --draft`; 64 streams that do not speculate beside 4 that do
#   (scripts/spec_mix.sh); and ncu's time per kernel of the Q4_1 file read in place against
#   dequantized.
# Usage: PART=a bash scripts/gpu/s25_call.sh; then PART=b on the same warm machine.
set -u
. scripts/gpu/setup.sh; K=$B/kiln
nvidia-smi --query-gpu=name --format=csv,noheader
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "prefill", round(d["prefill_tok_s"]), "decode", round(d["decode_tok_s"],1))' "$1"; }
if [ "${PART:-a}" = a ]; then
  random_models q05:qwen2.5-0.5b l1b:llama3.2-1b s135:smollm2-135m
  ( $K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1
    for q in q4_0 q8_0 q4_k; do $K quantize /tmp/l1b /tmp/l1b-$q.gguf --type $q; done ) >/tmp/quant.log 2>&1 &
  QPID=$!
  el "== copy bandwidth"; python3 scripts/gpu/copy_bw.py
  el "== checks"
  # main's kernels are those of the twenty-third session's checks (sanitizer-clean then).
  SAN=0 checks
  KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 t $B/real_model
  checks _q40
  el "== 1, 5 and 8 rows (-p 32 -g 128); after 2,048 tokens (-p 2048 -g 128)"
  for r in 1 2; do for m in q05 l1b; do
    for b in 1 5 8; do $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 128 -b $b --json 2>/dev/null | j "r$r $m b$b"; done
    $K bench --device cuda -m /tmp/$m.gguf -p 2048 -g 128 --json 2>/dev/null | j "r$r $m p2048"
  done; done
  el "== waiting for the quantized files"; wait $QPID; tail -3 /tmp/quant.log
  g() { $B/$1 run --device cuda -m "${@:2}" -n 48 --temperature 0 --raw "hello world, the five boxing wizards" 2>/dev/null | md5sum | cut -c1-12; }
  for k in kiln kiln_q40; do
    echo "greedy $k: l1b q4_0 in place $(g $k /tmp/l1b-q4_0.gguf --gpu-weights quantized) dequantized $(g $k /tmp/l1b-q4_0.gguf)" \
      "q8_0 $(g $k /tmp/l1b-q8_0.gguf --gpu-weights quantized) s135-q4_1 $(g $k /tmp/s135-q4_1.gguf --gpu-weights quantized)"
  done
  el "== weights read in place (-p 32 -g 256)"
  for r in 1 2; do
    for k in kiln_q40 kiln; do
      $B/$k bench --device cuda -m /tmp/l1b-q4_0.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r $k l1b-q4_0 in-place"
    done
    $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r s135-q4_1 dequantized"
    for m in s135-q4_1 l1b-q8_0 l1b-q4_k; do
      $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r $m in-place"
    done
    $K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r l1b f16"
  done
  el done
  exit 0
fi
[ -e /tmp/s135.gguf ] || random_models s135:smollm2-135m
[ -e /tmp/s135-q4_1.gguf ] || $K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 >/dev/null 2>&1
random_models s135n:smollm2-135m-narrow
$K quantize /tmp/s135n /tmp/s135n-q4_1.gguf --type q4_1 >/dev/null 2>&1
el "== a step: SmolLM2 shape F16, Q4_1 in place and dequantized, the narrow shape (-p 32 -g 256)"
for r in 1 2; do
  $K bench --device cuda -m /tmp/s135.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r s135 f16"
  $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r s135-q4_1 in-place"
  $K bench --device cuda -m /tmp/s135n.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r s135n f16"
  $K bench --device cuda -m /tmp/s135n-q4_1.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r s135n-q4_1 in-place"
done
el "== passes of several rows of one sequence (prefill of P tokens in one pass, -g 1)"
for P in 1 2 3 5 9; do
  $K bench --device cuda -m /tmp/s135.gguf -p $P -g 2 --json 2>/dev/null | j "s135 f16 p$P"
done
el "== the pair: F16 target, Q4_1 draft read in place (kiln bench --draft, -p 32 -g 256)"
for k in 2 4 8; do
  $K bench --device cuda -m /tmp/s135.gguf --draft /tmp/s135-q4_1.gguf --gpu-weights quantized \
    --draft-max $k -p 32 -g 256 --json 2>/dev/null > /tmp/spec$k.json
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); s=d.get("speculation"); print("draft-max", sys.argv[2], "decode", round(d["decode_tok_s"],1), json.dumps(s))' /tmp/spec$k.json $k
done
el "== 64 streams that do not speculate, beside 4 that do"
KILN_ARGS="--device cuda --gpu-weights quantized" CYCLES=2 ROUNDS=3 STREAMS=64 SIDE=4 MAXTOK=128 PROCS=8 \
  timeout 200 bash scripts/spec_mix.sh $K /tmp/s135.gguf /tmp/s135-q4_1.gguf
el "== ncu: Q4_1 read in place against dequantized (-p 8 -g 4)"
for w in quantized f16; do
  timeout 150 ncu --clock-control none --csv --metrics gpu__time_duration.sum $K bench --dev cuda-graphs=0 \
    --device cuda -m /tmp/s135-q4_1.gguf -p 8 -g 4 --gpu-weights $w --json > /tmp/ncu_$w.csv 2>/dev/null
  echo "gpu-weights $w:"; python3 scripts/gpu/kernel_times.py /tmp/ncu_$w.csv --by-grid | head -14
done
el done
