# Device call (twenty-eighth session), issue "GPU kernels at the bandwidth limit": the one-row
# product of weights read in place (k_mv1q) with its columns split over 2 or 4 warps, in blocks
# of 16 or 32 warps that hold whole groups of 16 outputs and round them for the next product
# themselves (`kiln`), against blocks of 8 warps sharing a group, the last to finish rounding it
# (`kiln --dev cuda-qwide=0`, and `kiln_base`, the build before this session's changes).
# The sums and the rounding are the same, so the greedy text must be too. Random weights of the
# SmolLM2-135M shape (Q4_1, as the default model) and of the Llama-3.2-1B shape (f16, Q4_0, Q8_0,
# Q4_K); copy bandwidth; compute-sanitizer over runs read in place; then time and DRAM bytes per
# kernel of the Llama-1B Q4_0 file read in place (ncu).
# Usage (device tool, carry .devbin): bash scripts/gpu/qwide_call.sh      PARTS="checks time ncu"
# (the default), or with "default" (the shipped default model, from its parts: join_default_model).
set -u
. scripts/gpu/setup.sh
K=$B/kiln
nvidia-smi --query-gpu=name --format=csv,noheader
el "== random models"
random_models s135:smollm2-135m l1b:llama3.2-1b
$K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 >/dev/null 2>&1
( for q in q4_0 q8_0 q4_k; do $K quantize /tmp/l1b /tmp/l1b-$q.gguf --type $q; done ) >/tmp/quant.log 2>&1 &
QPID=$!
el "== copy bandwidth"; python3 scripts/gpu/copy_bw.py

part_checks() {
  el "== waiting for the quantized files"; wait $QPID; tail -2 /tmp/quant.log
  el "== greedy text (md5 of 48 tokens), weights read in place: kiln / cuda-qwide=0 / kiln_base"
  for m in s135-q4_1 l1b-q4_0 l1b-q8_0 l1b-q4_k; do
    echo "$m: $(greedy_md5 kiln /tmp/$m.gguf --gpu-weights quantized) $(greedy_md5 kiln /tmp/$m.gguf --gpu-weights quantized --dev cuda-qwide=0) $(greedy_md5 kiln_base /tmp/$m.gguf --gpu-weights quantized)"
  done
  el "== tests with weights read in place"
  KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/backend_ops" | sed 's/^/backend_ops quantized: /'
  KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/arch_fixtures" | sed 's/^/arch_fixtures quantized: /'
  el "== compute-sanitizer, weights read in place"
  for m in s135-q4_1 l1b-q4_0; do
    r=$(timeout 150 compute-sanitizer --print-limit 5 $K run --device cuda -m /tmp/$m.gguf --gpu-weights quantized \
      -n 6 --temperature 0 --raw "hello" 2>&1 | grep -E "ERROR SUMMARY" | head -1)
    echo "$m: ${r:-no summary}"
  done
}

part_time() {
  wait $QPID 2>/dev/null  # the quantized files (part_checks waits for them too)
  el "== decode, -p 32 -g 256, two rounds alternated"
  for r in 1 2; do
    for m in s135 l1b; do "$K" bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --json 2>/dev/null | decode_of "r$r $m f16"; done
    for m in s135-q4_1 l1b-q4_0 l1b-q8_0 l1b-q4_k; do
      "$K" bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | decode_of "r$r $m in place"
      "$K" bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --dev cuda-qwide=0 --json 2>/dev/null | decode_of "r$r $m in place qwide=0"
      "$B/kiln_base" bench --device cuda -m /tmp/$m.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | decode_of "r$r $m in place base"
    done
  done
}

part_ncu() {
  el "== ncu: Llama-1B-shape Q4_0 read in place (-p 8 -g 2)"
  timeout 120 ncu --clock-control none --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum \
    "$K" bench --dev cuda-graphs=0 --device cuda -m /tmp/l1b-q4_0.gguf -p 8 -g 2 --gpu-weights quantized \
    --json > /tmp/ncu_l1b.csv 2>/dev/null
  python3 scripts/gpu/kernel_times.py /tmp/ncu_l1b.csv --by-grid | grep -v "k_dequant\|k_mvt\|attn_mma" | head -14
}

# The shipped default model (joined from its parts, as scripts/gpu/sitout_call.sh says): f16 against read in place, by the shape's split (kiln),
# with every product's columns on one warp (cuda-qks=1), in blocks of 8 warps (cuda-qwide=0),
# and kiln_base; then compute-sanitizer over a run read in place. Three rounds alternated.
part_default() {
  join_default_model || return 1
  el "== the default model: sha256 $(sha256sum /tmp/smol.gguf | cut -c1-16)..., -p 32 -g 256"
  echo "greedy md5: f16 $(greedy_md5 kiln /tmp/smol.gguf) in place $(greedy_md5 kiln /tmp/smol.gguf --gpu-weights quantized)" \
    "qks=1 $(greedy_md5 kiln /tmp/smol.gguf --gpu-weights quantized --dev cuda-qks=1) base $(greedy_md5 kiln_base /tmp/smol.gguf --gpu-weights quantized)"
  for r in 1 2 3; do
    "$K" bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --json 2>/dev/null | decode_of "r$r default f16"
    "$K" bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | decode_of "r$r default in place"
    "$K" bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --dev cuda-qks=1 --json 2>/dev/null | decode_of "r$r default in place qks=1"
    "$K" bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --dev cuda-qwide=0 --json 2>/dev/null | decode_of "r$r default in place qwide=0"
    "$B/kiln_base" bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | decode_of "r$r default in place base"
  done
  r=$(timeout 150 compute-sanitizer --print-limit 5 $K run --device cuda -m /tmp/smol.gguf --gpu-weights quantized \
    -n 6 --temperature 0 "hello" 2>&1 | grep -E "ERROR SUMMARY" | head -1)
  echo "compute-sanitizer, the default model read in place: ${r:-no summary}"
}

for p in ${PARTS:-checks time ncu}; do "part_$p"; done
el done
