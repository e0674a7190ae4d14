# Device call: speculative decoding with the GPU pair (issue "Speculative decoding"):
# the default model's F16 copy (made here with `kiln quantize`) as target, the shipped Q4_1 file
# read in place as draft; each also timed alone at batch 1, so that the draft's cost against
# the target's (what bounds any speedup) is measured in the same call.
# The default model travels in two parts (scripts/gpu/model_parts.sh): a call before this one
# carries .devmodel1 and copies it to /tmp/m; this one carries .devbin and .devmodel2.
# Usage (device tool): bash scripts/gpu/pair_call.sh      KS="8 4" picks the --draft-max values.
set -u
. scripts/gpu/setup.sh
K="$B/kiln"
join_default_model || exit 1
$K quantize /tmp/smol.gguf /tmp/smol-f16.gguf --type f16 2>&1 | tail -1
j() { python3 -c '
import json, sys
t = sys.stdin.read()
try:
    print(sys.argv[1], round(json.loads(t)["decode_tok_s"], 1))
except Exception:
    print(sys.argv[1], "failed:", t[-300:])
' "$1"; }
echo "== batch-1 decode alone (kiln bench --device cuda -p 32 -g 256), two rounds"
for r in 1 2; do
  $K bench --device cuda -m /tmp/smol-f16.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r target F16"
  $K bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null | j "r$r draft Q4_1 in place"
  $K bench --device cuda -m /tmp/smol.gguf -p 32 -g 256 --json 2>/dev/null | j "r$r draft Q4_1 as f16"
done
echo "== scripts/draft_bench.py: 10 prompts, greedy then sampled, plain against --draft"
for k in ${KS:-8 4}; do
  echo "-- draft-max $k"
  timeout 240 python3 scripts/draft_bench.py "$K" /tmp/smol-f16.gguf /tmp/smol.gguf "$k" 2 -- --device cuda --gpu-weights quantized 2>&1 | grep -v "prompt [1-9]:"
done
