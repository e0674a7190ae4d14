# Device call for branch gpu-mvq (written in the thirtieth session, not yet run): products of 2
# to 8 rows of weights read in place by k_mvqr against dequantizing to f16 first
# (`--dev cuda-mvq=0`) and against the f16 file. Checks: the products of quantized matrices
# against float64 for 1, 2, 3, 8 and 9 rows read in place (backend_ops), the fixtures read in
# place, compute-sanitizer over `kiln bench -b 5` read in place; then `kiln bench -p 32 -g 64
# -b 1|2|5|8`, tok/s, two rounds alternated, for the Llama-1B shape's Q4_0, Q8_0 and Q4_K files
# and the SmolLM2 shape's Q4_1 file.
# Usage (device tool, carry the .devbin that scripts/gpu/build.sh made on the branch, or that
# folder moved to .devbin_mvq and DEVBIN=.devbin_mvq):
#   bash scripts/gpu/mvq_call.sh
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
  r=$(timeout 150 compute-sanitizer --print-limit 5 $K bench --device cuda -m /tmp/$m.gguf --gpu-weights quantized \
    -p 8 -g 8 -b 5 2>&1 | grep -E "ERROR SUMMARY" | head -1)
  echo "sanitizer $m -b 5: ${r:-no summary}"
done
el "== tok/s"
for r in 1 2; do
  for b in 1 2 5 8; do
    $K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 64 -b $b --json 2>/dev/null | bench_of "r$r l1b f16 b$b"
    for m in l1b-q4_0 l1b-q8_0 l1b-q4_k s135-q4_1; do
      $K bench --device cuda -m /tmp/$m.gguf --gpu-weights quantized -p 32 -g 64 -b $b --json 2>/dev/null | bench_of "r$r $m mvq b$b"
      $K bench --device cuda -m /tmp/$m.gguf --gpu-weights quantized --dev cuda-mvq=0 -p 32 -g 64 -b $b --json 2>/dev/null | bench_of "r$r $m deq b$b"
    done
    $K bench --device cuda -m /tmp/s135.gguf -p 32 -g 64 -b $b --json 2>/dev/null | bench_of "r$r s135 f16 b$b"
  done
done
el "done"
