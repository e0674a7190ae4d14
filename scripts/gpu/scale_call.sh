# Device call for many streams (issue "One engine for every path", 64 and 256 streams): the
# correctness steps of engine_call.sh, then decode with the grouped-query attention kernel on
# and off (--dev cuda-gqa) from 1 to 256 rows, a per-kernel profile at real clocks of 64- and
# 256-row steps (ncu --clock-control none, graphs off, 1-token prompts so that every pass has
# the decode's shape), and kiln serve driven by openai streams with the engine's busy time per
# round. With .devbin/kiln_base (the same build of an earlier commit) beside the new binary,
# the speed and serve steps run both in the same call. Usage (device tool, carry .devbin and
# .whl): bash scripts/gpu/scale_call.sh [MODES], MODES any of check speed prof serve (default
# all). Serving: STREAMS, TEMPS, PROCS (client processes), CLIENTS, and SERVER_CPUS /
# CLIENT_CPUS (taskset lists) to keep the server and the clients on cores of their own.
set -u
. scripts/gpu/setup.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site
K="$B/kiln"
MODES="$*"; [ -z "$MODES" ] && MODES="check speed prof serve"
want() { case " $MODES " in *" $1 "*) return 0;; esac; return 1; }
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "greedy", round(d["decode_tok_s"],1), "sampled", round(d["decode_sampled_tok_s"],1), "prefill", round(d["prefill_tok_s"]))' "$1"; }
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
if want check; then
echo "== backend operations and sampling on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/backend_ops --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert" | head -20
echo "== tiny fixtures on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/arch_fixtures --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -8
echo "== engine on CUDA: batched equals alone (seeded sampling), scoring (Qwen 0.5B shape)"
KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 timeout 200 "$B"/real_model --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert" | head -10
echo "== compute-sanitizer: sampling, attention"
KILN_TEST_DEVICE=cuda timeout 200 compute-sanitizer --print-limit 5 "$B"/backend_ops sample 2>&1 | grep -E "ERROR SUMMARY|test result" | head -3
KILN_TEST_DEVICE=cuda timeout 200 compute-sanitizer --print-limit 5 "$B"/backend_ops attention 2>&1 | grep -E "ERROR SUMMARY|test result" | head -3
KILN_TEST_DEVICE=cuda timeout 200 compute-sanitizer --tool racecheck --print-limit 5 "$B"/backend_ops attention 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" | head -3
echo "== attention tests with k_attn_gqa at any number of rows (--dev cuda-gqa=all), and without it (=0)"
KILN_TEST_DEV=cuda-gqa=all KILN_TEST_DEVICE=cuda timeout 200 compute-sanitizer --print-limit 5 "$B"/backend_ops attention 2>&1 | grep -E "ERROR SUMMARY|test result|panicked" | head -4
KILN_TEST_DEV=cuda-gqa=0 KILN_TEST_DEVICE=cuda timeout 200 "$B"/backend_ops attention 2>&1 | grep -E "test result|panicked" | head -3
echo "== greedy text of one row (48 tokens, md5): new, new without stacked layers, base"
$K run --device cuda -m /tmp/q05 -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum
$K run --dev cuda-fused=0 --device cuda -m /tmp/q05 -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum
[ -x "$B/kiln_base" ] && "$B"/kiln_base run --device cuda -m /tmp/q05 -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum
if [ -x "$B/kiln_base" ]; then
echo "== greedy answers of 200 concurrent requests through kiln serve: base twice, new twice (lines that differ from base's first run)"
for run in base:1 base:2 new:1 new:2; do
  bin=$K; [ "${run%%:*}" = base ] && bin=$B/kiln_base
  "$bin" serve --device cuda -m /tmp/q05 --max-running 256 --max-memory-mb 20000 --port 8182 > /tmp/dig.log 2>&1 &
  DP=$!
  for i in $(seq 1 120); do curl -sf http://127.0.0.1:8182/health >/dev/null && break; sleep 0.5; done
  timeout 60 python3 scripts/gpu/serve_digest.py 8182 200 /tmp/dig_${run/:/_}.txt
  kill $DP; wait $DP 2>/dev/null
  echo "$run: $(md5sum < /tmp/dig_${run/:/_}.txt | cut -c1-12), $(diff /tmp/dig_base_1.txt /tmp/dig_${run/:/_}.txt | grep -c '^>') of $(wc -l < /tmp/dig_${run/:/_}.txt) differ from base:1"
done
fi
fi
if want speed; then
echo "== kiln bench (engine path), Qwen2.5-0.5B shape, -p 32 -g 128: new, base (earlier commit); GQA_ROWS: with --dev cuda-gqa=0 and all"
for b in ${BENCH_ROWS:-1 5 8 64 256}; do
  $K bench --device cuda -m /tmp/q05 -p 32 -g 128 -b $b --json 2>/dev/null | j "new b$b"
  [ -x "$B/kiln_base" ] && "$B"/kiln_base bench --device cuda -m /tmp/q05 -p 32 -g 128 -b $b --json 2>/dev/null | j "base b$b"
done
[ -n "${GQA_ROWS:-}" ] && for b in $GQA_ROWS; do for g in 0 all; do $K bench --dev cuda-gqa=$g --device cuda -m /tmp/q05 -p 32 -g 128 -b $b --json 2>/dev/null | j "new gqa=$g b$b"; done; done
$K bench --device cuda -m /tmp/q05 -p 2048 -g 128 --json 2>/dev/null | j "new b1 ctx2048"
[ -x "$B/kiln_base" ] && "$B"/kiln_base bench --device cuda -m /tmp/q05 -p 2048 -g 128 --json 2>/dev/null | j "base b1 ctx2048"
echo "== refinement, 5 candidates x 200 tokens against 1"
timeout 120 $K profile --batch-ratio 5 --tokens 200 --repeat 3 --device cuda -m /tmp/q05 2>&1 | tail -3
fi
if want prof; then
for b in ${PROF_BATCHES:-64 256}; do
echo "== ncu at real clocks, $b rows: all kernels of kiln bench -p ${PROF_PROMPT:-1} -g 4 -b $b (graphs off)"
timeout 200 ncu --clock-control none --csv --metrics gpu__time_duration.sum $K bench --dev cuda-graphs=0 --device cuda -m /tmp/q05 -p ${PROF_PROMPT:-1} -g 4 -b $b --json > /tmp/ncu_b$b.csv 2>/dev/null
python3 scripts/gpu/kernel_times.py /tmp/ncu_b$b.csv | head -30
done
fi
if want serve; then
# The kernel's counts of connections refused for a full listen queue (a refused SYN is sent
# again after a second).
listen_drops() { python3 -c '
h, v = [l.split() for l in open("/proc/net/netstat") if l.startswith("TcpExt:")][:2]
d = dict(zip(h, v)); print("ListenOverflows", d.get("ListenOverflows"), "ListenDrops", d.get("ListenDrops"))'; }
echo "somaxconn $(cat /proc/sys/net/core/somaxconn 2>/dev/null)"
serve_round() {  # binary, label, streams, temperatures, client processes, client mode
echo "== kiln serve ($2) + serve_bench.py (openai streams, $5 client processes, --client $6, engine busy time per round)"
${SERVER_CPUS:+taskset -c $SERVER_CPUS} "$1" serve --device cuda -m /tmp/q05 --max-running 256 --max-batch-tokens 512 --max-memory-mb 60000 --max-queue 1024 --port 8181 > /tmp/serve.log 2>&1 &
SP=$!
for i in $(seq 1 120); do curl -sf http://127.0.0.1:8181/health >/dev/null && break; sleep 0.5; done
listen_drops
timeout 240 ${CLIENT_CPUS:+taskset -c $CLIENT_CPUS} python3 scripts/serve_bench.py --port 8181 --streams $3 --temperatures $4 --procs $5 --client $6 2>&1 | tee $OUT/serve_$2_$6.jsonl
listen_drops
kill $SP; wait $SP 2>/dev/null
tail -2 /tmp/serve.log
}
for c in ${CLIENTS:-models lines}; do serve_round "$K" new ${STREAMS:-1,8,64,256} ${TEMPS:-0.7,0} ${PROCS:-15} $c; done
[ -x "$B/kiln_base" ] && serve_round "$B/kiln_base" base 64,256 0.7 ${PROCS:-15} ${BASE_CLIENT:-lines}
fi
