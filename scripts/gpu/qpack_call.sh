# Device calls (thirty-sixth session), issue "GPU kernels at the bandwidth limit": weights read
# in place with their scales and offsets at the file's size (`--dev cuda-qpack=1`, the
# default: f16 scales, Q4_0's offsets from its scales, Q4_K's 6-bit scales and minimums as
# bytes beside each super-block's f16 pair) against an f32 scale and offset a group
# (`cuda-qpack=0`, the layout before).
# PART=1 (carry .devbin and .devmodel2): copy bandwidth; greedy text of every quantized file
# read in place in both forms (the sums are the same by construction: the md5s must match);
# the backend operations and fixtures with weights in place in both forms, compute-sanitizer
# over the packed ones; then `kiln bench -p 32 -g 256` of the Llama-3.2-1B shape (f16, and
# Q4_0, Q8_0, Q4_K read in place) and the SmolLM2-135M shape (f16, Q4_1 in place), both forms
# alternated, two rounds; keeps .devmodel2's part of the default model in /tmp/m.
# PART=2 (carry .devmodel1, on the same warm machine, right after PART=1): the default model
# joined from its two parts, its golden test on the GPU with f16 weights and read in place,
# and its greedy text and speed read in place in both forms against f16.
# MIN=1 (carry .devbin): a short call instead of PART=1 (Q4_0, Q4_K and Q4_1 files only, one
# round, qpack=0's checks and compute-sanitizer last).
# MIN=2: shorter still, the SmolLM2-135M shape only (Q4_1 and Q4_0 in place, two rounds).
# Usage (device tool): PART=1 bash scripts/gpu/qpack_call.sh, then PART=2 bash scripts/gpu/qpack_call.sh
set -u
. scripts/gpu/setup.sh
K=$B/kiln
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 2 ]; then
  join_default_model || exit 1
  mkdir -p /tmp/kmodels && cp /tmp/smol.gguf /tmp/kmodels/SmolLM2-135M-Instruct.Q4_1.gguf
  el "== golden test of the default model on the GPU"
  KILN_MODELS=/tmp/kmodels KILN_TEST_DEVICE=cuda t "$B/golden" | sed "s/^/golden f16: /"
  KILN_MODELS=/tmp/kmodels KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/golden" | sed "s/^/golden in place: /"
  KILN_MODELS=/tmp/kmodels KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized KILN_TEST_DEV=cuda-qpack=0 t "$B/golden" | sed "s/^/golden in place qpack=0: /"
  el "== the default model: greedy text and speed"
  echo "greedy f16 $(greedy_md5 kiln /tmp/smol.gguf)"
  echo "greedy in place $(greedy_md5 kiln /tmp/smol.gguf --gpu-weights quantized)"
  echo "greedy in place qpack=0 $(greedy_md5 kiln /tmp/smol.gguf --gpu-weights quantized --dev cuda-qpack=0)"
  for r in 1 2 3; do
    $K bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --json 2>/dev/null | bench_of "r$r smol f16"
    $K bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | bench_of "r$r smol in-place"
    $K bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --dev cuda-qpack=0 --json 2>/dev/null | bench_of "r$r smol in-place qpack=0"
  done
  el "done"
  exit 0
fi
if [ "${MIN:-0}" = 2 ]; then
  # The shortest call: the SmolLM2-135M shape only (Q4_1 and Q4_0 read in place).
  random_models s135:smollm2-135m
  for q in q4_1 q4_0; do $K quantize /tmp/s135 /tmp/s135-$q.gguf --type $q >/dev/null 2>&1; done
  KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/backend_ops" quantized | sed "s/^/backend_ops quantized: /"
  for f in s135-q4_1 s135-q4_0; do
    echo "$f: packed $(greedy_md5 kiln /tmp/$f.gguf --gpu-weights quantized) qpack=0 $(greedy_md5 kiln /tmp/$f.gguf --gpu-weights quantized --dev cuda-qpack=0)"
  done
  for r in 1 2; do
    $K bench --device cuda -m /tmp/s135.gguf -p 32 -g 128 --json 2>/dev/null | bench_of "r$r s135 f16"
    for q in q4_1 q4_0; do
      $K bench --device cuda -m /tmp/s135-$q.gguf -p 32 -g 128 --gpu-weights quantized --json 2>/dev/null | bench_of "r$r s135-$q packed"
      $K bench --device cuda -m /tmp/s135-$q.gguf -p 32 -g 128 --gpu-weights quantized --dev cuda-qpack=0 --json 2>/dev/null | bench_of "r$r s135-$q qpack=0"
    done
  done
  el "done (MIN=2)"
  exit 0
fi
if [ "${MIN:-0}" = 1 ]; then
  # A short call: the packed form's checks and greedy text against qpack=0, one round of
  # timing, then compute-sanitizer last.
  random_models l1b:llama3.2-1b s135:smollm2-135m
  ( for q in q4_0 q4_k; do $K quantize /tmp/l1b /tmp/l1b-$q.gguf --type $q; done
    $K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 ) >/tmp/quant.log 2>&1 &
  QPID=$!
  el "== copy bandwidth"; python3 scripts/gpu/copy_bw.py
  KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/backend_ops" | sed "s/^/backend_ops quantized: /"
  wait $QPID
  el "== greedy text read in place: packed, qpack=0 (must match)"
  for f in l1b-q4_0 l1b-q4_k s135-q4_1; do
    echo "$f: packed $(greedy_md5 kiln /tmp/$f.gguf --gpu-weights quantized) qpack=0 $(greedy_md5 kiln /tmp/$f.gguf --gpu-weights quantized --dev cuda-qpack=0)"
  done
  el "== batch 1, -p 32 -g 128"
  $K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 128 --json 2>/dev/null | bench_of "l1b f16"
  for q in q4_0 q4_k; do
    $K bench --device cuda -m /tmp/l1b-$q.gguf -p 32 -g 128 --gpu-weights quantized --json 2>/dev/null | bench_of "l1b-$q packed"
    $K bench --device cuda -m /tmp/l1b-$q.gguf -p 32 -g 128 --gpu-weights quantized --dev cuda-qpack=0 --json 2>/dev/null | bench_of "l1b-$q qpack=0"
  done
  $K bench --device cuda -m /tmp/s135.gguf -p 32 -g 128 --json 2>/dev/null | bench_of "s135 f16"
  $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 128 --gpu-weights quantized --json 2>/dev/null | bench_of "s135-q4_1 packed"
  $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 128 --gpu-weights quantized --dev cuda-qpack=0 --json 2>/dev/null | bench_of "s135-q4_1 qpack=0"
  KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized KILN_TEST_DEV=cuda-qpack=0 t "$B/backend_ops" quantized | sed "s/^/backend_ops quantized qpack=0: /"
  r=$(KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 100 compute-sanitizer --print-limit 5 "$B/backend_ops" quantized --test-threads 1 2>&1 | grep -E "ERROR SUMMARY" | head -2)
  echo "sanitizer, backend_ops quantized (packed): ${r:-no summary}"
  el "done (MIN=1)"
  exit 0
fi
mkdir -p /tmp/m && cp .devmodel2/* /tmp/m/ 2>/dev/null
random_models l1b:llama3.2-1b s135:smollm2-135m
( for q in q4_0 q8_0 q4_k; do $K quantize /tmp/l1b /tmp/l1b-$q.gguf --type $q; done
  $K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 ) >/tmp/quant.log 2>&1 &
QPID=$!
el "== copy bandwidth"; python3 scripts/gpu/copy_bw.py
el "== checks, weights in place, packed (default) and qpack=0"
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/backend_ops" | sed "s/^/backend_ops quantized: /"
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized KILN_TEST_DEV=cuda-qpack=0 t "$B/backend_ops" | sed "s/^/backend_ops quantized qpack=0: /"
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/arch_fixtures" | sed "s/^/arch_fixtures quantized: /"
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized KILN_TEST_DEV=cuda-qpack=0 t "$B/arch_fixtures" | sed "s/^/arch_fixtures quantized qpack=0: /"
KILN_TEST_DEVICE=cuda t "$B/backend_ops" | sed "s/^/backend_ops f16: /"
r=$(KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 150 compute-sanitizer --print-limit 5 "$B/backend_ops" quantized --test-threads 1 2>&1 | grep -E "ERROR SUMMARY" | head -2)
echo "sanitizer, backend_ops quantized (packed): ${r:-no summary}"
wait $QPID
el "== greedy text read in place: packed, qpack=0 (must match), and dequantized to f16"
for f in l1b-q4_0 l1b-q8_0 l1b-q4_k s135-q4_1; do
  echo "$f: packed $(greedy_md5 kiln /tmp/$f.gguf --gpu-weights quantized) qpack=0 $(greedy_md5 kiln /tmp/$f.gguf --gpu-weights quantized --dev cuda-qpack=0) f16 $(greedy_md5 kiln /tmp/$f.gguf)"
done
el "== 5 rows read in place (k_mvqr), packed and qpack=0"
for f in l1b-q4_0 l1b-q4_k s135-q4_1; do
  $K bench --device cuda -m /tmp/$f.gguf -p 32 -g 128 -b 5 --gpu-weights quantized --json 2>/dev/null | bench_of "$f b5 packed"
  $K bench --device cuda -m /tmp/$f.gguf -p 32 -g 128 -b 5 --gpu-weights quantized --dev cuda-qpack=0 --json 2>/dev/null | bench_of "$f b5 qpack=0"
done
el "== batch 1, -p 32 -g 256: f16, then read in place packed and qpack=0"
for r in 1 2; do
  $K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 256 --json 2>/dev/null | bench_of "r$r l1b f16"
  for q in q4_0 q8_0 q4_k; do
    $K bench --device cuda -m /tmp/l1b-$q.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | bench_of "r$r l1b-$q packed"
    $K bench --device cuda -m /tmp/l1b-$q.gguf -p 32 -g 256 --gpu-weights quantized --dev cuda-qpack=0 --json 2>/dev/null | bench_of "r$r l1b-$q qpack=0"
  done
  $K bench --device cuda -m /tmp/s135.gguf -p 32 -g 256 --json 2>/dev/null | bench_of "r$r s135 f16"
  $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | bench_of "r$r s135-q4_1 packed"
  $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --gpu-weights quantized --dev cuda-qpack=0 --json 2>/dev/null | bench_of "r$r s135-q4_1 qpack=0"
done
el "done"
