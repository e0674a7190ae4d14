# Device call (thirtieth session): k_dequant with four threads a group of 32 (16-byte stores in a
# row) against one thread a group (`kiln_base`). With weights read in place
# (`--gpu-weights quantized`) every product of 2 rows or more dequantizes its matrix first, so
# batched decoding and prefill read in place wait on it. The products of quantized matrices
# against float64 with weights read in place (backend_ops, arch_fixtures), then the Llama-1B
# shape's Q4_0 file read in place, `kiln bench -p 32 -g 64 -b 1|5|8`, the two builds alternated.
# Usage (device tool, carry .devbin from scripts/gpu/build.sh, kiln_base the build before):
#   bash scripts/gpu/dequant_call.sh
set -u
. scripts/gpu/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader
random_models l1b:llama3.2-1b
$B/kiln quantize /tmp/l1b /tmp/l1b-q4_0.gguf --type q4_0 >/dev/null 2>&1 &
QPID=$!
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/backend_ops" | sed 's/^/backend_ops quantized: /'
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/arch_fixtures" | sed 's/^/arch_fixtures quantized: /'
wait $QPID
for r in 1 2; do
  for k in kiln_base kiln; do
    for b in 1 5 8; do
      "$B/$k" bench --device cuda -m /tmp/l1b-q4_0.gguf --gpu-weights quantized -p 32 -g 64 -b $b --json 2>/dev/null | bench_of "r$r $k b$b"
    done
  done
done
el "done"
