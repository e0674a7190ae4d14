# Device call (forty-second session), issue "GPU kernels at the bandwidth limit": k_attn_o
# (`--dev cuda-attn-o=1`: one row's decode attention and W_o in one kernel) checked, then
# timed against the same build without it, alternated.
# Usage (device tool, carry .devbin built by scripts/gpu/build.sh): bash scripts/gpu/attn_o_call.sh
set -u
. scripts/gpu/setup.sh
K=$B/kiln
nvidia-smi --query-gpu=name --format=csv,noheader
random_models q05:qwen2.5-0.5b l1b:llama3.2-1b
el "== checks with cuda-attn-o=1"
KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-attn-o=1 t "$B/arch_fixtures" | sed 's/^/arch_fixtures: /'
KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-attn-o=1 KILN_TEST_MODEL=/tmp/q05 t "$B/real_model" | sed 's/^/real_model: /'
KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-attn-o=1,cuda-graphs=0 t "$B/arch_fixtures" | sed 's/^/arch_fixtures, no graphs: /'
KILN_TEST_DEVICE=cuda t "$B/arch_fixtures" | sed 's/^/arch_fixtures default: /'
r=$(KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-attn-o=1 timeout 200 compute-sanitizer --print-limit 5 "$B/arch_fixtures" --test-threads 1 2>&1 | grep -E "ERROR SUMMARY|test result" | head -3)
echo "sanitizer, arch_fixtures with cuda-attn-o=1: $r"
el "== greedy md5 of 48 tokens (Qwen shape): default, attn-o, attn-o without graphs"
for a in "" "--dev cuda-attn-o=1" "--dev cuda-attn-o=1 --dev cuda-graphs=0"; do
  echo "[$a] $($K run --device cuda -m /tmp/q05.gguf -n 48 --temperature 0 --raw "hello world" $a 2>/dev/null | md5sum | cut -c1-12)"
done
el "== decode tok/s, alternated (-g 128 from 32; -g 48 from 200: contexts to 248)"
for r in 1 2; do
  for m in q05 l1b; do
    for p in "32 128" "200 48"; do
      set -- $p
      $K bench --device cuda -m /tmp/$m.gguf -p $1 -g $2 --json 2>/dev/null | decode_of "r$r $m p$1 default"
      $K bench --device cuda -m /tmp/$m.gguf -p $1 -g $2 --dev cuda-attn-o=1 --json 2>/dev/null | decode_of "r$r $m p$1 attn-o"
    done
  done
done
el done
