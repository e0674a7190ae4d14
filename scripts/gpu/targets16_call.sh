# Device call (thirtieth session), issue "GPU kernels at the bandwidth limit": the submitted
# main against the targets in one call, nothing changed in its kernels since the
# twenty-eighth session (whose figures are H100 ones). Random f16 weights of the Qwen2.5-0.5B,
# Llama-3.2-1B and SmolLM2-135M shapes (`random_models`), the Llama-1B shape quantized to Q4_0,
# Q8_0 and Q4_K and the SmolLM2 shape to Q4_1 (`kiln quantize`); copy bandwidth; batch 1, 5 and
# 8 rows, after 2,048 tokens and the prefill of 2,048; weights read in place against the f16
# file, two rounds alternated.
# Usage (device tool, carry .devbin with kiln and random_hf_model): bash scripts/gpu/targets16_call.sh
set -u
. scripts/gpu/setup.sh
K=$B/kiln
nvidia-smi --query-gpu=name --format=csv,noheader
random_models q05:qwen2.5-0.5b l1b:llama3.2-1b s135:smollm2-135m
( for q in q4_0 q8_0 q4_k; do $K quantize /tmp/l1b /tmp/l1b-$q.gguf --type $q; done
  $K quantize /tmp/s135 /tmp/s135-q4_1.gguf --type q4_1 ) >/tmp/quant.log 2>&1 &
QPID=$!
el "== copy bandwidth"; python3 scripts/gpu/copy_bw.py
el "== rows and prefill (f16)"
for m in q05 l1b; do
  for b in 1 5 8; do $K bench --device cuda -m /tmp/$m.gguf -p 32 -g 128 -b $b --json 2>/dev/null | bench_of "$m b$b"; done
  $K bench --device cuda -m /tmp/$m.gguf -p 2048 -g 128 --json 2>/dev/null | bench_of "$m p2048"
done
wait $QPID
el "== weights read in place against f16, -p 32 -g 256"
for r in 1 2; do
  $K bench --device cuda -m /tmp/l1b.gguf -p 32 -g 256 --json 2>/dev/null | bench_of "r$r l1b f16"
  for q in q4_0 q8_0 q4_k; do
    $K bench --device cuda -m /tmp/l1b-$q.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | bench_of "r$r l1b-$q in-place"
  done
  $K bench --device cuda -m /tmp/s135.gguf -p 32 -g 256 --json 2>/dev/null | bench_of "r$r s135 f16"
  $K bench --device cuda -m /tmp/s135-q4_1.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | bench_of "r$r s135-q4_1 in-place"
done
el "done"
