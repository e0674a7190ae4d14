# Quick speed round: the Qwen2.5-0.5B-shaped model, batch 1 and 64, and greedy output with the
# staged matrix-vector kernels against the plain ones.
set -u
. scripts/gpu/setup.sh
K="$B/kiln"
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
for i in 1 2; do
$K bench --device cuda -m /tmp/q05 -p 32 -g 256 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("b1 ctx32", round(d["decode_tok_s"],1))'
$K bench --device cuda -m /tmp/q05 -p 2048 -g 256 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("b1 ctx2048", round(d["decode_tok_s"],1), "prefill", round(d["prefill_tok_s"]))'
done
$K bench --device cuda -m /tmp/q05 -p 32 -g 128 -b 64 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("b64", round(d["decode_tok_s"],1))'
a=$($K run --device cuda -m /tmp/q05 -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum)
b=$(KILN_CUDA_MV_PLAIN=1 $K run --device cuda -m /tmp/q05 -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum)
echo "greedy staged $a plain $b"
for b in 5 8; do
$K bench --device cuda -m /tmp/q05 -p 32 -g 128 -b $b --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("b'$b'", round(d["decode_tok_s"],1))'
done
echo "== refinement on the Qwen2.5-0.5B-shaped model, 5 candidates x 200 tokens"
$K profile --batch-ratio 5 --tokens 200 --repeat 3 --device cuda -m /tmp/q05 2>&1 | tail -3
