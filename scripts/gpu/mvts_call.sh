# Device call (thirty-third session), issue "GPU kernels at the bandwidth limit": how k_mvt's
# blocks that share a tile add their sums (`--dev cuda-mvts=memory|cluster|none`: through a
# scratch buffer and a counter, the default; in a thread block cluster's shared memory; no
# tile shared by blocks), then the rest of the issue's targets on this machine.
# Checks with clusters and with no shared tiles: the products against float64 (backend_ops,
# 1 to 9 rows); with clusters, the engine on the Qwen2.5-0.5B shape (batched equals alone) and
# compute-sanitizer over the products. Then `kiln bench -p 32 -g 128 -b 1|5|8`, tok/s, two rounds with
# the three switches alternated (one row: once), Qwen2.5-0.5B and Llama-3.2-1B shapes (random f16 weights);
# then 8 rows with at least 1 or 4 warps a tile (`--dev cuda-mvtks`, one round); then after 2,048 tokens, the prefill of 2,048, and weights read in place against f16 (one round)
# (`-p 32 -g 128`), as scripts/gpu/targets16_call.sh.
# MIN=1: the backend operations with each switch and the rows' tok/s only (a call that must be
# short).
# Usage (device tool, carry .devbin from scripts/gpu/build.sh): [MIN=1] bash scripts/gpu/mvts_call.sh
set -u
. scripts/gpu/setup.sh
K=$B/kiln
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${MIN:-0}" = 1 ]; then random_models q05:qwen2.5-0.5b l1b:llama3.2-1b; else
random_models q05:qwen2.5-0.5b l1b:llama3.2-1b s135:smollm2-135m; fi
[ "${MIN:-0}" = 1 ] || ( for q in q4_0 q8_0 q4_k; do $K quantize /tmp/l1b /tmp/l1b-$q.gguf --type $q; done
  $K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 ) >/tmp/quant.log 2>&1 &
QPID=$!
el "== copy bandwidth"; python3 scripts/gpu/copy_bw.py
el "== checks"
for s in cluster none; do
  KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-mvts=$s t "$B/backend_ops" | sed "s/^/backend_ops $s: /"
done
[ "${MIN:-0}" = 1 ] || KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-mvts=cluster KILN_TEST_MODEL=/tmp/q05 t "$B/real_model" batched | sed "s/^/real_model q05 cluster: /"
[ "${MIN:-0}" = 1 ] || r=$(KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-mvts=cluster timeout 150 compute-sanitizer --print-limit 5 "$B/backend_ops" matmul --test-threads 1 2>&1 | grep -E "ERROR SUMMARY" | head -2)
echo "sanitizer, backend_ops matmul cluster: ${r:-no summary}"
el "== rows, -p 32 -g 128 (memory / cluster / none; one row takes no k_mvt)"
for r in 1 2; do
  for m in q05 l1b; do
    $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 128 -b 1 --json 2>/dev/null | bench_of "r$r $m b1"
    for b in 5 8; do
      for s in memory cluster none; do
        $K bench --device cuda -m /tmp/$m.gguf --dev cuda-mvts=$s -p 32 -g 128 -b $b --json 2>/dev/null | bench_of "r$r $m b$b $s"
      done
    done
  done
done
[ "${MIN:-0}" = 1 ] && { el "done (MIN=1)"; exit 0; }
el "== 8 rows with at least 1 or 4 warps a tile (cuda-mvtks; the default, 2, is 'memory' above)"
for r in 1; do
  for m in q05 l1b; do
    for s in 1 4; do
      $K bench --device cuda -m /tmp/$m.gguf --dev cuda-mvtks=$s -p 32 -g 128 -b 8 --json 2>/dev/null | bench_of "r$r $m b8 ks$s"
    done
  done
done
el "== after 2,048 and the prefill of 2,048 (default switches)"
for m in q05 l1b; do
  $K bench --device cuda -m /tmp/$m.gguf -p 2048 -g 128 --json 2>/dev/null | bench_of "$m p2048"
done
wait $QPID
el "== weights read in place against f16, -p 32 -g 128"
for r in 1; do
  $K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 128 --json 2>/dev/null | bench_of "r$r l1b f16"
  for q in q4_0 q8_0 q4_k; do
    $K bench --device cuda -m /tmp/l1b-$q.gguf -p 32 -g 128 --gpu-weights quantized --json 2>/dev/null | bench_of "r$r l1b-$q in-place"
  done
  $K bench --device cuda -m /tmp/s135.gguf -p 32 -g 128 --json 2>/dev/null | bench_of "r$r s135 f16"
  $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 128 --gpu-weights quantized --json 2>/dev/null | bench_of "r$r s135-q4_1 in-place"
done
el "done"
