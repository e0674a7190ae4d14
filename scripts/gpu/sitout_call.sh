# Device call (twenty-eighth session), issue "Structured outputs, tool calling": sequences whose
# token masks are still being computed when the pass ends sit the step out. `kiln` (the build
# with that change) against `kiln_base` (the build before it, which waits for every mask),
# alternated, at 64 streams through `kiln serve` (scripts/gpu/structured_ab.sh), on the shipped
# default model and on the Qwen2.5-0.5B shape (random f16 weights); each build also with 8 host
# threads for the masks with VARIANTS="kiln_base kiln kiln_base:8 kiln:8" (masks slower, as on
# a slower host). Then, issue "GPU kernels at the bandwidth limit": weights read in place with
# the one-row product's columns split over more warps (qks, l1b), and time and DRAM bytes per
# kernel of the default model read in place (ncu).
# The default model travels in two parts (more than one call carries): a call before this one,
# within the machine's idle time, carries the first and copies it to /tmp/m
#   mkdir -p /tmp/m && cp .devmodel1/* /tmp/m/
# and this one carries .devbin and .devmodel2 (`join_default_model` in setup.sh).
# Usage: bash scripts/gpu/sitout_call.sh        PARTS="sitout qks l1b ncu" (the default: all);
# VARIANTS (the builds, BINARY[:THREADS]), PAIRS, QWEN=0 (the default model only).
set -u
. scripts/gpu/setup.sh
join_default_model || exit 1

part_sitout() {
  el "== compute-sanitizer over a constrained answer of each build"
  echo '{"type":"object","properties":{"n":{"type":"integer"},"s":{"type":"string","maxLength":12}},"required":["n","s"],"additionalProperties":false}' > /tmp/s.json
  for k in kiln_base kiln; do
    r=$(timeout 120 compute-sanitizer --print-limit 5 "$B/$k" run --device cuda -m /tmp/smol.gguf \
      --temperature 0.7 --max-tokens 40 --json-schema /tmp/s.json "x" 2>&1 | grep -E "ERROR SUMMARY" | head -1)
    echo "$k: ${r:-no summary}"
  done
  PAIRS=${PAIRS:-3} TTFT=5 ab64 "default model" /tmp/ab_smol.txt /tmp/smol.gguf
  [ "${QWEN:-1}" = 1 ] || return 0
  PAIRS=2 ab64 "Qwen2.5-0.5B shape" /tmp/ab_q05.txt
}


# The one-row product of weights read in place with its columns split over 1, 2, 4 or 8 warps
# (`--dev cuda-qks=N`) against the split chosen by shape and against f16: the default model,
# then the Llama-3.2-1B shape's Q4_0 file; `kiln bench -p 32 -g 256`, two rounds alternated.
part_qks() {
  el "== default model: greedy text md5 (48 tokens) by split"
  echo "f16 $(greedy_md5 kiln /tmp/smol.gguf) in place $(greedy_md5 kiln /tmp/smol.gguf --gpu-weights quantized)" \
    "$(for k in 1 2 4 8; do echo -n "qks=$k $(greedy_md5 kiln /tmp/smol.gguf --gpu-weights quantized --dev cuda-qks=$k) "; done)"
  el "== default model, -p 32 -g 256"
  for r in 1 2; do
    "$B/kiln" bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --json 2>/dev/null | decode_of "r$r f16"
    "$B/kiln" bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | decode_of "r$r in place"
    for k in 1 2 4 8; do
      "$B/kiln" bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --dev cuda-qks=$k --json 2>/dev/null | decode_of "r$r in place qks=$k"
    done
  done
}
part_l1b() {
  el "== Llama-3.2-1B shape: f16 and Q4_0 read in place by split"
  random_models l1b:llama3.2-1b
  "$B/kiln" quantize /tmp/l1b /tmp/l1b-q4_0.gguf --type q4_0 > /dev/null 2>&1
  for r in 1 2; do
    "$B/kiln" bench --device cuda -m /tmp/l1b.gguf -p 32 -g 256 --json 2>/dev/null | decode_of "r$r l1b f16"
    "$B/kiln" bench --device cuda -m /tmp/l1b-q4_0.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | decode_of "r$r l1b q4_0 in place"
    for k in 2 4 8; do
      "$B/kiln" bench --device cuda -m /tmp/l1b-q4_0.gguf -p 32 -g 256 --gpu-weights quantized --dev cuda-qks=$k --json 2>/dev/null | decode_of "r$r l1b q4_0 in place qks=$k"
    done
  done
}

part_ncu() {
  el "== ncu: the default model read in place, by split (-p 8 -g 2)"
  for k in 0 4; do
    dev=""; [ $k = 0 ] || dev="--dev cuda-qks=$k"
    timeout 90 ncu --clock-control none --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum \
      "$B/kiln" bench --dev cuda-graphs=0 $dev --device cuda -m /tmp/smol.gguf -p 8 -g 2 --gpu-weights quantized \
      --json > /tmp/ncu_$k.csv 2>/dev/null
    echo "-- qks $k:"; python3 scripts/gpu/kernel_times.py /tmp/ncu_$k.csv --by-grid | grep -v k_dequant | head -12
  done
}

for p in ${PARTS:-sitout qks l1b ncu}; do "part_$p"; done
el done
