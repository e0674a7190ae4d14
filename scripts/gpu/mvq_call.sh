# Device call (thirty-first session): products of 2 to 8 rows of weights read in place by
# k_mvqr against dequantizing to f16 first (`--dev cuda-mvq=0`) and against the f16 file.
# Checks: the products of quantized matrices against float64 for 1 to 9 rows read in place
# (backend_ops), the fixtures read in place, compute-sanitizer over `kiln bench -b 5|8`
# read in place with k_mvqr for every product (`--dev cuda-mvq=all`). Then `kiln bench -p 32
# -g 64`, tok/s: the Llama-1B shape's Q4_0, Q8_0 and Q4_K files at 2, 5 and 8 rows; the
# SmolLM2 shape's Q4_1 file at 2 to 8 rows with k_mvqr by size (the default), for every
# product, and never; with DEFAULT=1 (the default model joined first, as host_call.sh does),
# the default model read in place against f16 at 1 and 8 rows, three rounds alternated.
# Usage (device tool, carry .devbin from scripts/gpu/build.sh, or that folder moved to
# .devbin_mvq and DEVBIN=.devbin_mvq):   bash scripts/gpu/mvq_call.sh
set -u
. scripts/gpu/setup.sh
K=$B/kiln
nvidia-smi --query-gpu=name --format=csv,noheader
random_models l1b:llama3.2-1b s135:smollm2-135m
( for q in q4_0 q8_0 q4_k; do $K quantize /tmp/l1b /tmp/l1b-$q.gguf --type $q; done
  $K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 ) >/tmp/quant.log 2>&1 &
QPID=$!
el "== checks, weights read in place"
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/backend_ops" | sed 's/^/backend_ops quantized: /'
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/arch_fixtures" | sed 's/^/arch_fixtures quantized: /'
wait $QPID
for m in l1b-q4_0 s135-q4_1; do
  for b in 5 8; do
    r=$(timeout 150 compute-sanitizer --print-limit 5 $K bench --device cuda -m /tmp/$m.gguf --gpu-weights quantized \
      --dev cuda-mvq=all -p 8 -g 8 -b $b 2>&1 | grep -E "ERROR SUMMARY" | head -1)
    echo "sanitizer $m -b $b: ${r:-no summary}"
  done
done
qb() { $K bench --device cuda -m "/tmp/$1.gguf" --gpu-weights quantized "${@:3}" -p 32 -g 64 -b "$2" --json 2>/dev/null; }
fb() { $K bench --device cuda -m "/tmp/$1.gguf" -p 32 -g 64 -b "$2" --json 2>/dev/null; }
el "== tok/s, Llama-1B shape"
for b in 2 5 8; do
  fb l1b $b | bench_of "l1b f16 b$b"
  for m in l1b-q4_0 l1b-q8_0 l1b-q4_k; do
    qb $m $b | bench_of "$m mvq b$b"
    qb $m $b --dev cuda-mvq=0 | bench_of "$m deq b$b"
  done
done
el "== tok/s, SmolLM2 shape Q4_1: k_mvqr by size / for all / never, and f16"
for b in 2 3 4 5 6 7 8; do
  qb s135-q4_1 $b | bench_of "s135-q4_1 sized b$b"
  qb s135-q4_1 $b --dev cuda-mvq=all | bench_of "s135-q4_1 all b$b"
  qb s135-q4_1 $b --dev cuda-mvq=0 | bench_of "s135-q4_1 deq b$b"
  fb s135 $b | bench_of "s135 f16 b$b"
done
if [ "${DEFAULT:-0}" = 1 ]; then
  el "== the default model, read in place against f16"
  for r in 1 2 3; do
    for b in 1 8; do
      $K bench --device cuda -m /tmp/smol.gguf --gpu-weights quantized -p 32 -g 64 -b $b --json 2>/dev/null | bench_of "r$r default in-place b$b"
      $K bench --device cuda -m /tmp/smol.gguf -p 32 -g 64 -b $b --json 2>/dev/null | bench_of "r$r default f16 b$b"
    done
  done
fi
el "done"
