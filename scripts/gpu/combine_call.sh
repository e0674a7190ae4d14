# Device call (twenty-second session): attention's split merge (combine_splits) reading every
# split's maximum and sum at once and each dim's values eight (kiln) or four (kiln_u4) splits
# at a time, against the build before (.devbin/kiln_base), after 2,048 tokens (32 splits) and
# at 32 (one split). Checks first; the merge sums in the same order, so greedy text must not
# change. Usage (carry .devbin): bash scripts/gpu/combine_call.sh
# BUILDS: the binaries of .devbin compared (default "kiln kiln_u4 kiln_base"); GQA_ALL=1: also
# the first build after 2,048 tokens with `--dev cuda-gqa=all` (scripts/gpu/kloop_call.sh).
BUILDS=${BUILDS:-kiln kiln_u4 kiln_base}
. scripts/gpu/setup.sh; K=$B/kiln
random_models q05:qwen2.5-0.5b l1b:llama3.2-1b
el "== checks"
KILN_TEST_DEVICE=cuda t $B/backend_ops
KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-gqa=all t $B/backend_ops | sed 's/^/gqa=all: /'
KILN_TEST_DEVICE=cuda t $B/arch_fixtures
KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 t $B/real_model
r=$(KILN_TEST_DEVICE=cuda timeout 150 compute-sanitizer --print-limit 5 $B/backend_ops --test-threads 1 2>&1 | grep -E "ERROR SUMMARY" | head -2); echo "sanitizer: ${r:-no summary}"
p=$(printf 'word %.0s' $(seq 600))
for k in $BUILDS; do
  echo "greedy $k: q05 $($B/$k run --device cuda -m /tmp/q05.gguf -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum | cut -c1-12)" \
    "after 1,200 $($B/$k run --device cuda -m /tmp/q05.gguf -n 32 --temperature 0 --raw "$p" 2>/dev/null | md5sum | cut -c1-12)" \
    "gqa=all $($B/$k run --device cuda -m /tmp/q05.gguf -n 32 --temperature 0 --raw "$p" --dev cuda-gqa=all 2>/dev/null | md5sum | cut -c1-12)" \
    "l1b after 1,200 $($B/$k run --device cuda -m /tmp/l1b.gguf -n 32 --temperature 0 --raw "$p" 2>/dev/null | md5sum | cut -c1-12)"
done
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "decode", round(d["decode_tok_s"],1))' "$1"; }
el "== decode after 2,048 and after 32 (-g 128)"
for r in 1 2; do for m in q05 l1b; do
  for k in $BUILDS; do
    $B/$k bench --device cuda -m /tmp/$m.gguf -p 2048 -g 128 --json 2>/dev/null | j "r$r $k $m p2048"
    $B/$k bench --device cuda -m /tmp/$m.gguf -p 32 -g 128 --json 2>/dev/null | j "r$r $k $m p32"
  done
  [ "${GQA_ALL:-0}" = 1 ] && $K bench --device cuda -m /tmp/$m.gguf -p 2048 -g 128 --dev cuda-gqa=all --json 2>/dev/null | j "r$r kiln $m p2048 gqa=all"
done; done
el done
