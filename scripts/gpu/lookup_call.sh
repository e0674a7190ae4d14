# Device call for prompt lookup on CUDA: greedy answers with and without `--prompt-lookup 8`
# on the Qwen2.5-0.5B shape (random f16 weights, whose greedy answers soon repeat
# themselves), compared token for token, with their decode speeds, alternated; answers of
# N tokens for each N in $LENGTHS (default 400 1600).
# Usage (device tool, carry .devbin): bash scripts/gpu/lookup_call.sh
set -u
. scripts/gpu/setup.sh
K="$B/kiln"
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
P="$(python3 -c 'print("Repeat: the cat sat on the mat and the dog lay by the door. " * 12)')"
for n in ${LENGTHS:-400 1600}; do
  for k in 0 8 0 8; do
    $K run --device cuda -m /tmp/q05 --temperature 0 -n $n --prompt-lookup $k "$P" > /tmp/out_$k.txt 2> /tmp/err_$k.txt
    echo "$n tokens, prompt lookup $k: $(grep -o "[0-9]* generated at [0-9.]* tok/s" /tmp/err_$k.txt) $(grep -o "prompt lookup: .*" /tmp/err_$k.txt)"
  done
  cmp -s /tmp/out_0.txt /tmp/out_8.txt && echo "$n tokens: identical" || echo "$n tokens: DIFFERENT"
done
