# Sourced at the start of a device call: unpacks the carried binaries (.devbin, built here with
# `--features cuda`; DEVBIN names another carried folder of them), points the tests' baked-in
# paths at this checkout, sets the CUDA libraries.
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
export PYTHONUNBUFFERED=1
B=$PWD/${DEVBIN:-.devbin}
for f in "$B"/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
for f in "$B"/*.xz; do [ -e "$f" ] || continue
  python3 -c 'import lzma,sys; open(sys.argv[1][:-3],"wb").write(lzma.decompress(open(sys.argv[1],"rb").read()))' "$f" && rm -f "$f"
done
chmod +x "$B"/* 2>/dev/null
mkdir -p /work
[ -e /work/main ] || ln -s "$PWD" /work/main
OUT=${OUT:-/tmp/out}

# Helpers the calls share.
T0=$(date +%s)
# el TEXT: TEXT after the seconds since setup.
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
# t TEST_BINARY [FILTER]: a test binary's summary lines (one thread, 150 s at most).
t() { timeout 150 "$@" --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -4; }
# decode_of LABEL: LABEL and the decode tok/s of the `kiln bench --json` on stdin.
decode_of() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "decode", round(d["decode_tok_s"],1))' "$1"; }
# bench_of LABEL: LABEL and the prefill and decode tok/s of the `kiln bench --json` on stdin.
bench_of() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], "prefill", round(d["prefill_tok_s"]), "decode", round(d["decode_tok_s"],1))' "$1"; }
# greedy_md5 BINARY MODEL [ARGS]: md5 of 48 greedy tokens of $B/BINARY on the GPU.
greedy_md5() { "$B/$1" run --device cuda -m "${@:2}" -n 48 --temperature 0 --raw "hello world, the five boxing wizards" 2>/dev/null | md5sum | cut -c1-12; }
# random_models NAME:SHAPE ...: random f16 weights of each shape in /tmp/NAME, and
# /tmp/NAME.gguf converted from them (`kiln convert`).
random_models() {
  local s
  for s in "$@"; do
    "$B/random_hf_model" "/tmp/${s%%:*}" f16 "${s#*:}" >/dev/null
    "$B/kiln" convert "/tmp/${s%%:*}" "/tmp/${s%%:*}.gguf" >/dev/null 2>&1
  done
}
# unpack_lcpp: llama.cpp as scripts/gpu/build_lcpp.sh built it (.devlcpp), its harness at
# /tmp/peer/lcpp_bench and its libraries on the path.
unpack_lcpp() {
  mkdir -p /tmp/peer/llama.cpp/build &&
    python3 -c 'import lzma,sys; sys.stdout.buffer.write(lzma.decompress(open(sys.argv[1],"rb").read()))' \
      .devlcpp/lcpp_built.txz | tar xf - -C /tmp/peer && mv /tmp/peer/bin /tmp/peer/llama.cpp/build/
  export LD_LIBRARY_PATH=/tmp/peer/llama.cpp/build/bin:$LD_LIBRARY_PATH
}
# checks [SUFFIX]: the backend operations and the fixtures on the device, by default and with
# weights kept quantized, then compute-sanitizer over the backend operations and the quantized
# fixtures (not with SAN=0); the test binaries $B/backend_ops$SUFFIX and $B/arch_fixtures$SUFFIX
# (a variant build's when SUFFIX is given).
checks() {
  local s=${1:-} r
  KILN_TEST_DEVICE=cuda t "$B/backend_ops$s" | sed "s/^/backend_ops$s: /"
  KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/backend_ops$s" | sed "s/^/backend_ops$s quantized: /"
  KILN_TEST_DEVICE=cuda t "$B/arch_fixtures$s" | sed "s/^/arch_fixtures$s: /"
  KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized t "$B/arch_fixtures$s" | sed "s/^/arch_fixtures$s quantized: /"
  [ "${SAN:-1}" = 1 ] || return 0
  r=$(KILN_TEST_DEVICE=cuda timeout 150 compute-sanitizer --print-limit 5 "$B/backend_ops$s" --test-threads 1 2>&1 | grep -E "ERROR SUMMARY" | head -2)
  echo "sanitizer, backend_ops$s: ${r:-no summary}"
  r=$(KILN_TEST_DEVICE=cuda KILN_TEST_GPU_WEIGHTS=quantized timeout 150 compute-sanitizer --print-limit 5 "$B/arch_fixtures$s" quantized --test-threads 1 2>&1 | grep -E "ERROR SUMMARY" | head -2)
  echo "sanitizer, arch_fixtures$s quantized files: ${r:-no summary}"
}
# structured_summary FILE: structured_ab.sh's output, each run's ratio and milliseconds a step in one line
# (constrained, then free).
structured_summary() {
  python3 - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("== pair") or "parse and validate" in line or line.startswith('{"free_ms"'):
        print(line)
    if not line.startswith('{"streams"'):
        continue
    d = json.loads(line)
    c, f = d["constrained_ms_per_step"], d["free_ms_per_step"]
    keys = ["model", "launch", "launch_cpu", "mask_wait", "sampling_launch", "finish", "host", "prepare",
            "stream", "accept", "host_cpu", "mask_longest", "mask_last_start", "mask", "sit_outs"]
    print(f'ratio {d["ratio"]} free {d["free_tok_s"]} constrained {d["constrained_tok_s"]} rounds {d["free_rounds"]} / {d["constrained_rounds"]}')
    print("  constrained " + " ".join(f"{k} {c[k]}" for k in keys if k in c))
    print("  free        " + " ".join(f"{k} {f[k]}" for k in keys[:11] if k in f))
PY
}
# join_default_model: the shipped default model at /tmp/smol.gguf, joined from its parts
# (smolpart.NN in .devmodel1 and .devmodel2, made by scripts/gpu/model_parts.sh, each carried
# by a call; an earlier call within the machine's idle time copies its part to /tmp/m with
# `mkdir -p /tmp/m && cp .devmodel1/* /tmp/m/`) and checked against the model's sha256 (as
# `kiln fetch` checks it, crates/kiln-model/src/fetch.rs); fails if a part is missing.
join_default_model() {
  local names n parts="" sha
  names=$(ls /tmp/m .devmodel*/ 2>/dev/null | grep '^smolpart\.' | sort -u)
  for n in $names; do
    parts="$parts $(ls /tmp/m/$n .devmodel*/$n 2>/dev/null | head -1)"
  done
  cat $parts > /tmp/smol.gguf
  sha=$(sha256sum /tmp/smol.gguf | cut -c1-16)
  echo "joined model ($(echo $parts | wc -w) parts) sha256 $sha..."
  [ "$sha" = b179c9523d0e6a0f ] || { echo "the joined file is not the shipped default model"; return 1; }
}
# serve_up BINARY MODEL [ARGS]: `kiln serve` of MODEL on the GPU at port 8181 ($P: its
# process; its log in /tmp/serve.log), once it answers /health.
serve_up() {
  "$B/$1" serve --device cuda -m "$2" --max-running 256 --max-batch-tokens 512 \
    --max-memory-mb 60000 --port 8181 "${@:3}" > /tmp/serve.log 2>&1 &
  P=$!
  for i in $(seq 1 120); do curl -sf http://127.0.0.1:8181/health >/dev/null && break; sleep 0.5; done
}
# ab64 LABEL OUT [MODEL]: scripts/gpu/structured_ab.sh at 64 streams, 5 rounds (VARIANTS,
# default "kiln_base kiln"; PAIRS, default 2; TTFT, default 0) on MODEL (the Qwen2.5-0.5B
# shape with random f16 weights when none), its output in OUT, then its summary.
ab64() {
  el "== $1, 64 streams"
  MODEL=${3:-} PAIRS=${PAIRS:-2} STREAMS=64 ROUNDS=5 TTFT=${TTFT:-0} VARIANTS="${VARIANTS:-kiln_base kiln}" \
    timeout 400 bash scripts/gpu/structured_ab.sh > "$2" 2>&1
  structured_summary "$2"
}
