# Device call: the one-row products of decode, launch by launch (ncu at the card's own clocks,
# time and DRAM bytes of one token's products, grouped by grid size, i.e. by product), and
# batch-1 decode timed, for the default k_mv1d (x read in the loop, no L2 prefetch), k_mv1
# (x staged, --dev cuda-mv1d=0) and k_mv1d with the weights' L2 prefetch (--dev cuda-mvpf=1),
# on the random Qwen2.5-0.5B and Llama-3.2-1B shapes. Usage (device tool, carry .devbin): bash scripts/gpu/mv1_profile.sh
# (MODELS="l1b:16" for one shape: name and layers.)
set -u
. scripts/gpu/setup.sh
MODELS=${MODELS:-q05:24 l1b:16}
[[ $MODELS == *q05* ]] && "$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
[[ $MODELS == *l1b* ]] && "$B"/random_hf_model /tmp/l1b f16 llama3.2-1b >/dev/null
for m in $MODELS; do
  name=${m%%:*}; per=$(( ${m##*:} * 4 + 1 ))   # products a token: 4 a layer and the head
  [ -x "$B/kiln_base" ] && echo "-- $name kiln_base: $("$B"/kiln_base bench --device cuda -m /tmp/$name -p 32 -g 128 --json 2>/dev/null |
      python3 -c 'import json,sys; print("decode", round(json.load(sys.stdin)["decode_tok_s"], 1), "tok/s")')"
  for sw in cuda-mv1d=1 cuda-mv1d=0 cuda-mvpf=1; do
    echo "-- $name $sw: $("$B"/kiln bench --dev "$sw" --device cuda -m /tmp/$name -p 32 -g 128 --json 2>/dev/null |
      python3 -c 'import json,sys; print("decode", round(json.load(sys.stdin)["decode_tok_s"], 1), "tok/s")')"
    timeout 120 ncu --csv --clock-control none --kernel-name regex:k_mv1 --launch-skip $((per * 4)) \
      --launch-count "$per" --metrics gpu__time_duration.sum,dram__bytes_read.sum \
      "$B"/kiln bench --dev cuda-graphs=0 --dev "$sw" --device cuda -m /tmp/$name -p 8 -g 8 \
      --json > /tmp/ncu.csv 2>/dev/null
    python3 scripts/gpu/kernel_times.py /tmp/ncu.csv --by-grid
  done
done
