# Device call (twenty-fifth session): the submitted main's build in .devbin (carry .devbin), and
# `kiln_q40` (branch gpu-q40: Q4_0 rows without their offsets, which are -8 times the scales)
# with its tests (`*_q40`). PARTS names what runs, in order (default: all of them):
# spec:   the issue "Speculative decoding" on the GPU: what a step of the SmolLM2-135M shape
#         costs as F16 (the pair's target), as Q4_1 read in place (its draft), and with
#         SmolLM2's 30 layers but almost no weights (the narrow shape: what the depth costs
#         beyond the bytes); the pair through `kiln bench --draft`; 64 streams that do not
#         speculate beside 4 that do (scripts/spec_mix.sh).
# rows:   the issue "GPU kernels at the bandwidth limit": 1 / 5 / 8 rows, after 2,048 tokens,
#         prefill of 2,048 (Qwen2.5-0.5B and Llama-3.2-1B shapes).
# quant:  weights read in place against dequantized / the f16 file; kiln_q40 against main on
#         the Llama-1B-shape Q4_0 file, and greedy text of both builds.
# checks: main's tests without the sanitizer (its kernels are the twenty-third session's,
#         sanitizer-clean then), the engine on the Qwen shape, kiln_q40's tests with it.
# q40tests: kiln_q40's tests with weights read in place (no sanitizer).
# ncu:    time and DRAM bytes per kernel, Llama-1B-shape Q4_0 read in place, both builds.
# Usage: PARTS="spec rows quant checks ncu" bash scripts/gpu/s25_call.sh
set -u
. scripts/gpu/setup.sh; K=$B/kiln
nvidia-smi --query-gpu=name --format=csv,noheader
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "prefill", round(d["prefill_tok_s"]), "decode", round(d["decode_tok_s"],1))' "$1"; }
g() { $B/$1 run --device cuda -m "${@:2}" -n 48 --temperature 0 --raw "hello world, the five boxing wizards" 2>/dev/null | md5sum | cut -c1-12; }
el "== random models"
random_models s135:smollm2-135m s135n:smollm2-135m-narrow q05:qwen2.5-0.5b l1b:llama3.2-1b
$K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 >/dev/null 2>&1
$K quantize /tmp/s135n /tmp/s135n-q4_1.gguf --type q4_1 >/dev/null 2>&1
( for q in q4_0 q8_0 q4_k; do $K quantize /tmp/l1b /tmp/l1b-$q.gguf --type $q; done ) >/tmp/quant.log 2>&1 &
QPID=$!
el "== copy bandwidth"; python3 scripts/gpu/copy_bw.py

part_spec() {
  el "== a step: SmolLM2 shape F16, Q4_1 in place, the narrow shape (-p 32 -g 256)"
  for r in 1 2; do
    $K bench --device cuda -m /tmp/s135.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r s135 f16"
    $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r s135-q4_1 in-place"
    $K bench --device cuda -m /tmp/s135n.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r s135n f16"
    $K bench --device cuda -m /tmp/s135n-q4_1.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r s135n-q4_1 in-place"
  done
  el "== the pair: F16 target, Q4_1 draft read in place (kiln bench --draft, -p 32 -g 256)"
  for k in 2 8; do
    $K bench --device cuda -m /tmp/s135.gguf --draft /tmp/s135-q4_1.gguf --gpu-weights quantized \
      --draft-max $k -p 32 -g 256 --json 2>/dev/null > /tmp/spec$k.json
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("draft-max", sys.argv[2], "decode", round(d["decode_tok_s"],1), json.dumps(d.get("speculation")))' /tmp/spec$k.json $k
  done
  el "== 64 streams that do not speculate, beside 4 that do"
  KILN_ARGS="--device cuda --gpu-weights quantized" CYCLES=2 ROUNDS=3 STREAMS=64 SIDE=4 MAXTOK=128 PROCS=8 \
    timeout 150 bash scripts/spec_mix.sh $K /tmp/s135.gguf /tmp/s135-q4_1.gguf
}

part_rows() {
  el "== 1, 5 and 8 rows (-p 32 -g 128); after 2,048 tokens (-p 2048 -g 128)"
  for m in q05 l1b; do
    for b in 1 5 8 1; do $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 128 -b $b --json 2>/dev/null | j "$m b$b"; done
    $K bench --device cuda -m /tmp/$m.gguf -p 2048 -g 128 --json 2>/dev/null | j "$m p2048"
  done
}

part_quant() {
  el "== waiting for the quantized files"; wait $QPID; tail -3 /tmp/quant.log
  for k in kiln kiln_q40; do
    echo "greedy $k: l1b q4_0 in place $(g $k /tmp/l1b-q4_0.gguf --gpu-weights quantized) dequantized $(g $k /tmp/l1b-q4_0.gguf)" \
      "q8_0 in place $(g $k /tmp/l1b-q8_0.gguf --gpu-weights quantized) s135-q4_1 in place $(g $k /tmp/s135-q4_1.gguf --gpu-weights quantized)"
  done
  el "== weights read in place (-p 32 -g 256)"
  for r in 1 2; do for k in kiln_q40 kiln; do
    $B/$k bench --device cuda -m /tmp/l1b-q4_0.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r $k l1b-q4_0 in-place"
  done; done
  for m in l1b-q8_0 l1b-q4_k; do
    $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "$m in-place"
  done
  $K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 256 --json 2>/dev/null | j "l1b f16"
}

part_checks() {
  el "== checks"
  SAN=0 checks
  KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 t $B/real_model
  checks _q40
}

# kiln_q40's tests with weights read in place, no sanitizer: the short form of part_checks.
part_q40tests() {
  el "== kiln_q40's tests, weights read in place"
  KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t $B/backend_ops_q40 | sed 's/^/backend_ops_q40 quantized: /'
  KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t $B/arch_fixtures_q40 | sed 's/^/arch_fixtures_q40 quantized: /'
}

part_ncu() {
  el "== ncu: Llama-1B-shape Q4_0 read in place (-p 8 -g 2)"
  for k in kiln kiln_q40; do
    timeout 90 ncu --clock-control none --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum \
      $B/$k bench --dev cuda-graphs=0 --device cuda -m /tmp/l1b-q4_0.gguf -p 8 -g 2 --gpu-weights quantized \
      --json > /tmp/ncu_$k.csv 2>/dev/null
    echo "$k:"; python3 scripts/gpu/kernel_times.py /tmp/ncu_$k.csv --by-grid | head -12
  done
}

for p in ${PARTS:-spec rows quant checks ncu}; do "part_$p"; done
el done
