# Device call (twenty-ninth session), issue "Structured outputs, tool calling": a constrained
# step's costs at 64 streams on the default model. `kiln` (this session's build) against
# `kiln_base` (the build before), alternated, through `kiln serve`
# (scripts/gpu/structured_ab.sh), with the engine's host time split in /metrics (before the
# launch, streaming, after the tokens came back; the engine thread's own processor time).
# PARTS: "checks" (greedy answers of 8, 11 and 13 concurrent requests with and without CUDA
# graphs, whose decoding passes are padded to recorded sizes; 45 concurrent constrained
# answers validated), "ab" (the 64-stream comparison), "qwen" (the same on the Qwen2.5-0.5B
# shape, random f16 weights), "san" (compute-sanitizer over padded decoding passes).
# Default: checks and ab.
# The default model travels in two parts: a call before this one, within the machine's idle
# time, carries .devmodel1 and runs `mkdir -p /tmp/m && cp .devmodel1/* /tmp/m/`; this one
# carries .devbin and .devmodel2.
# Usage: bash scripts/gpu/host_call.sh     PARTS, VARIANTS (BINARY[:THREADS] ...), PAIRS.
set -u
. scripts/gpu/setup.sh
join_default_model || exit 1
el "== the host's processors: $(nproc), cores by their threads (thread_siblings_list): $(cat /sys/devices/system/cpu/cpu*/topology/thread_siblings_list | sort -u | tr '\n' ' ')"

part_checks() {
  el "== greedy answers of concurrent requests, by build and graphs"
  for v in "kiln" "kiln --dev cuda-graphs=0" "kiln_base"; do
    read -ra w <<< "$v"
    serve_up "${w[0]}" /tmp/smol.gguf "${w[@]:1}"
    for n in 8 11 13; do echo "$v: $(timeout 120 python3 scripts/gpu/greedy_batch.py --port 8181 --n $n --max-tokens 64)"; done
    [ "$v" = kiln ] && timeout 120 python3 scripts/gpu/structured_check.py --port 8181 --n 45 | tail -1
    kill $P; wait $P 2>/dev/null
  done
}

part_ab() { PAIRS=${PAIRS:-3} ab64 "default model" /tmp/ab_smol.txt /tmp/smol.gguf; }
part_qwen() { PAIRS=2 ab64 "Qwen2.5-0.5B shape (random f16)" /tmp/ab_q05.txt; }

# compute-sanitizer over decoding passes padded to recorded sizes: `kiln bench` of 11 and 45
# sequences (passes of 12 and 48 rows). A server under compute-sanitizer did not exit after
# SIGINT within 150 s on an H100 (thirtieth session; the same server without it shut down
# cleanly), so the sanitizer runs a command that ends by itself.
part_san() {
  local b
  for b in 11 45; do
    el "== compute-sanitizer, kiln bench -b $b"
    timeout 150 compute-sanitizer --print-limit 5 "$B/kiln" bench --device cuda -m /tmp/smol.gguf -p 8 -g 12 -b $b 2>&1 |
      grep -E "ERROR SUMMARY|^decode" | head -4
  done
}

for p in ${PARTS:-checks ab}; do "part_$p"; done
el "done"
