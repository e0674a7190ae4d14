# Device call for the decode kernels (issue "GPU kernels at the bandwidth limit"): correctness
# on the GPU first, then batch-1/5/8 decode and prefill on the Qwen2.5-0.5B and Llama-3.2-1B
# shapes with programmatic dependent launch on and off (--dev cuda-pdl), a device copy bandwidth
# for reference, and a per-kernel profile (ncu) of batch-1 and batch-256 steps.
# Usage (device tool, carry .devbin and .whl): bash scripts/gpu/kernel_call.sh [check|speed|prof]...
set -u
. scripts/gpu/setup.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site
K="$B/kiln"
want() { case " ${MODES:-check speed prof} " in *" $1 "*) return 0;; esac; return 1; }
MODES="$*"; [ -z "$MODES" ] && MODES="check speed prof"
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
[ -e /tmp/l1b.gguf ] || python3 "$B"/make_gguf.py /tmp/l1b.gguf llama1b >/dev/null 2>&1 &
GP=$!
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "greedy", round(d["decode_tok_s"],1), "sampled", round(d["decode_sampled_tok_s"],1), "prefill", round(d["prefill_tok_s"]))' "$1"; }
if want check; then
echo "== backend operations and sampling on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/backend_ops --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -8
echo "== tiny fixtures on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/arch_fixtures --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -8
echo "== engine on CUDA (Qwen 0.5B shape)"
KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 timeout 200 "$B"/real_model --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -8
echo "== compute-sanitizer (memcheck, racecheck of sampling)"
KILN_TEST_DEVICE=cuda timeout 300 compute-sanitizer --print-limit 5 "$B"/backend_ops 2>&1 | grep -E "ERROR SUMMARY|test result" | head -3
a=$($K run --device cuda -m /tmp/q05 -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum)
b=$($K run --dev cuda-pdl=0 --device cuda -m /tmp/q05 -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum)
echo "greedy text, PDL on $a off $b"
fi
if want speed; then
echo "== copy bandwidth (device to device, 1 GiB)"
python3 scripts/gpu/copy_bw.py
echo "== Qwen2.5-0.5B shape"
for pdl in 1 0; do
 for b in 1 5 8; do $K bench --dev cuda-pdl=$pdl --device cuda -m /tmp/q05 -p 32 -g 256 -b $b --json 2>/dev/null | j "pdl=$pdl b$b"; done
 $K bench --dev cuda-pdl=$pdl --device cuda -m /tmp/q05 -p 2048 -g 256 --json 2>/dev/null | j "pdl=$pdl b1 ctx2048"
done
for b in 64 256; do $K bench --device cuda -m /tmp/q05 -p 32 -g 128 -b $b --json 2>/dev/null | j "b$b"; done
wait $GP
echo "== Llama-3.2-1B shape (GGUF f16)"
for pdl in 1 0; do
 for b in 1 5 8; do $K bench --dev cuda-pdl=$pdl --device cuda -m /tmp/l1b.gguf -p 32 -g 256 -b $b --json 2>/dev/null | j "pdl=$pdl b$b"; done
done
$K bench --device cuda -m /tmp/l1b.gguf -p 2048 -g 128 --json 2>/dev/null | j "b1 ctx2048"
echo "== refinement, 5 candidates x 200 tokens against 1"
timeout 120 $K profile --batch-ratio 5 --tokens 200 --repeat 3 --device cuda -m /tmp/q05 2>&1 | tail -3
fi
if want prof; then
for b in ${PROF_BATCHES:-1 8 256}; do
echo "== ncu, batch $b: every kernel of a bench run (-p 8 -g 4: warm-up, greedy, sampled; graphs off)"
timeout 240 ncu --csv --metrics gpu__time_duration.sum $K bench --dev cuda-graphs=0 --device cuda -m /tmp/q05 -p 8 -g 4 -b $b --json > /tmp/ncu_b$b.csv 2>/dev/null
python3 scripts/gpu/kernel_times.py /tmp/ncu_b$b.csv | head -24
done
fi
