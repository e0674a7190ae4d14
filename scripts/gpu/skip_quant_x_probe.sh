# Device call, a probe (not a feature): what the k_quant_x launches cost at batch 1 with weights
# read in place. .devbin/kiln_exp is kiln built with scripts/gpu/skip_quant_x.patch applied (to
# a5b7cda, before the products rounded their outputs for the next themselves):
# KILN_EXP_SKIPQ=ffn skips the launch before gate|up and down (its products then read a stale
# x: the timing counts, the text does not), =all every one. Alternated with the plain build.
# Usage (device tool, carry .devbin, after quant_call.sh wrote the files): bash scripts/gpu/skip_quant_x_probe.sh
set -u
. scripts/gpu/setup.sh
for r in 1 2 3; do
  for m in ${MODELS:-/tmp/s135-q4_1.gguf /tmp/l1b-q40.gguf}; do
    for v in plain ffn all; do
      if [ $v = plain ]; then bin="$B/kiln"; else bin="$B/kiln_exp"; fi
      t=$(KILN_EXP_SKIPQ=$v $bin bench --device cuda -m $m -p 32 -g 256 --gpu-weights quantized --json 2>/dev/null |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["decode_tok_s"], 1))' 2>&1 | tail -1)
      echo "r$r $m $v $t"
    done
  done
done
