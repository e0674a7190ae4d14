# Device call for speculative decoding with a draft model (issue "Speculative decoding"), on
# the Qwen2.5-0.5B shape (random f16 weights; no second model of the same tokenizer travels,
# so the model drafts for itself, every proposal taken: the most a draft of its cost can give):
# the draft and prompt-lookup tests on CUDA; batch-1 decode plain, with q8_0 weights (a
# quantized copy, the usual draft) and drafting for itself; then 64 streams through kiln serve
# with and without --draft (speculation stays off above --max-speculative-batch), alternated.
# Usage (device tool, carry .devbin): bash scripts/gpu/draft_call.sh
set -u
. scripts/gpu/setup.sh
K="$B/kiln"
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
[ "${SERVE_ONLY:-0}" = 1 ] || {
echo "== draft model and prompt lookup on CUDA"
KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 timeout 300 "$B"/real_model draft lookup 2>&1 | grep -E "^test |test result|panicked|proposed|left|right" | head -20
echo "== batch-1 decode, 256 tokens"
P="Write a story about the sea."
for round in 1 2; do
  for mode in plain q8_0 self2 self4 self8; do
    case $mode in
      plain) A="" ;;
      q8_0) A="--quantize q8_0" ;;
      self*) A="--draft /tmp/q05 --draft-max ${mode#self}" ;;
    esac
    $K run --device cuda -m /tmp/q05 --temperature 0 -n 256 $A "$P" > /tmp/o_$mode.txt 2> /tmp/e_$mode.txt
    echo "round $round $mode: $(grep -o "[0-9]* generated at [0-9.]* tok/s" /tmp/e_$mode.txt) $(grep -o "draft model: .*" /tmp/e_$mode.txt)"
  done
  cmp -s /tmp/o_plain.txt /tmp/o_self8.txt && echo "self-draft answer identical" || echo "self-draft answer DIFFERENT"
done
}
echo "== 64 streams through kiln serve, with and without --draft (scripts/serve_bench.py --client raw)"
for round in 1 2 3; do
  for d in none draft; do
    A=""
    [ $d = draft ] && A="--draft /tmp/q05"
    $K serve --device cuda -m /tmp/q05 --max-running 256 --max-batch-tokens 512 --max-memory-mb 60000 --port 8181 $A > /tmp/serve_$d.log 2>&1 &
    S=$!
    for i in $(seq 1 120); do curl -sf http://127.0.0.1:8181/health >/dev/null && break; sleep 0.5; done
    # Warm-up (the draft's first passes set up its kernels): a short answer, speculated.
    curl -s http://127.0.0.1:8181/v1/completions -H 'Content-Type: application/json' -d '{"prompt":"warm up","max_tokens":16}' >/dev/null
    echo "round $round, $d:"
    timeout 200 python3 scripts/serve_bench.py --port 8181 --streams 64 --temperatures 0.7,0 --max-tokens 128 --client raw 2>&1 | grep -v "^#"
    curl -s http://127.0.0.1:8181/metrics | grep -E "^kiln_engine_(draft|accepted)"
    kill $S; wait $S 2>/dev/null
  done
done
