# Device call (forty-second session): the backend operations on CUDA (Q5_0 now converted on
# upload), by default and with weights kept quantized, then the decode prototype's fused
# phases (attention with W_o, the MLP in one kernel) on both shapes at position 32.
# Usage (device tool, carry .devbin with decode_proto, built by
# `nvcc -O3 -arch=sm_90 -std=c++17 scripts/gpu/decode_proto.cu`): bash scripts/gpu/s42_call.sh
set -u
. scripts/gpu/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader
KILN_TEST_DEVICE=cuda timeout 150 "$B/backend_ops" --test-threads 1 2>&1 | grep -E "^test |test result|panicked" | head -20
KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/backend_ops" | sed "s/^/quantized: /"
for s in qwen05 llama1b; do
  timeout 150 "$B/decode_proto" $s 32 300 > /tmp/proto.txt 2>&1
  grep -v 'hidden max' /tmp/proto.txt
  grep -c MISMATCH /tmp/proto.txt | sed 's/^/mismatches: /'
done
