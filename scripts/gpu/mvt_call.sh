# Device call for k_mvt (2..8 rows on the tensor cores): correctness with it (the default), then
# k_mvt against k_mvr (--dev cuda-mvt=0) at 2, 5 and 8 rows and in refinement.
# Usage (device tool, carry .devbin): bash scripts/gpu/mvt_call.sh
. scripts/gpu/setup.sh; "$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
fail=0
for t in backend_ops arch_fixtures; do
  KILN_TEST_DEVICE=cuda timeout 200 "$B"/$t --test-threads 1 > /tmp/$t.log 2>&1 || fail=1
  grep -E "test result|panicked|FAILED|error" /tmp/$t.log | head -8
done
KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 timeout 200 "$B"/real_model --test-threads 1 > /tmp/rm.log 2>&1 || fail=1
grep -E "test result|panicked|FAILED|assert" /tmp/rm.log | head -8
KILN_TEST_DEVICE=cuda timeout 200 compute-sanitizer --print-limit 5 "$B"/backend_ops matmul 2>&1 | grep -E "ERROR SUMMARY|test result|Invalid" | head -4
echo "tests failed: $fail"
for m in 1 0; do
  echo "== --dev cuda-mvt=$m"
  "$B"/kiln run --dev cuda-mvt=$m --device cuda -m /tmp/q05 -n 40 --temperature 0 --raw "hello world" 2>/dev/null | md5sum
  for b in 2 5 8; do
    "$B"/kiln bench --dev cuda-mvt=$m --device cuda -m /tmp/q05 -p 32 -g 256 -b $b --json 2>/dev/null |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print("b",d["batch"], "greedy", round(d["decode_tok_s"],1), "sampled", round(d["decode_sampled_tok_s"],1))'
  done
  timeout 120 "$B"/kiln profile --dev cuda-mvt=$m --batch-ratio 5 --tokens 200 --repeat 3 --device cuda -m /tmp/q05 2>/dev/null |
    python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("refine", round(d["batch_s"],3), round(d["one_candidate_s"],3), round(d["ratio"],3))'
done
