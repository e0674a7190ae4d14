# Device call for prefill (issue "GPU kernels at the bandwidth limit"): prefill of 2,048 tokens
# on the Qwen2.5-0.5B and Llama-3.2-1B shapes (random f16 weights), with the prefill attention
# on the tensor cores and on the CUDA cores (--dev cuda-fa=1|0), and a per-kernel profile (ncu).
# Usage (device tool, carry .devbin): bash scripts/gpu/prefill_call.sh [check] [speed] [prof]
set -u
. scripts/gpu/setup.sh
K="$B/kiln"
MODES="$*"; [ -z "$MODES" ] && MODES="check speed prof"
want() { case " $MODES " in *" $1 "*) return 0;; esac; return 1; }
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
"$B"/random_hf_model /tmp/l1b f16 llama3.2-1b >/dev/null
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "prefill", round(d["prefill_tok_s"]), "decode", round(d["decode_tok_s"],1))' "$1"; }
if want check; then
echo "== backend operations on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/backend_ops --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -8
echo "== tiny fixtures on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/arch_fixtures --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -8
echo "== engine on CUDA (Qwen 0.5B shape)"
KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 timeout 200 "$B"/real_model --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -8
echo "== compute-sanitizer over backend operations"
KILN_TEST_DEVICE=cuda timeout 300 compute-sanitizer --print-limit 5 "$B"/backend_ops 2>&1 | grep -E "ERROR SUMMARY|test result" | head -3
for fa in 1 0; do
 p=$(printf 'word %.0s' $(seq 600))
 a=$($K run --dev cuda-fa=$fa --device cuda -m /tmp/q05 -n 32 --temperature 0 --raw "$p" 2>/dev/null | md5sum | cut -c1-12)
 echo "greedy text after a ~1,200-token prompt, fa=$fa: $a"
done
fi
if want speed; then
for r in 1 2; do
 for m in /tmp/q05 /tmp/l1b; do
  for fa in 1 0; do $K bench --dev cuda-fa=$fa --device cuda -m $m -p 2048 -g 32 --json 2>/dev/null | j "r$r $m fa=$fa"; done
 done
done
fi
if want prof; then
for m in /tmp/q05 /tmp/l1b; do
 echo "== ncu, prefill of 2,048 (warm-up and timed: two passes), $m"
 timeout 200 ncu --csv --metrics gpu__time_duration.sum $K bench ${PROF_DEV:-} --dev cuda-graphs=0 --device cuda -m $m -p 2048 -g 1 --json > /tmp/ncu.csv 2>/dev/null
 python3 scripts/gpu/kernel_times.py /tmp/ncu.csv | head -16
done
fi
