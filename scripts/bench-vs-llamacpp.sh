#!/usr/bin/env bash
# kiln against llama.cpp on the same GGUF files, same threads, alternating runs; prints the
# median of each measure and kiln/llama.cpp ratios (higher is better for kiln in tok/s,
# lower in load time and RSS). Not part of CI: it builds llama.cpp (through
# llama-cpp-python) the first time, which takes a while on two cores.
#
#   scripts/bench-vs-llamacpp.sh [-r RUNS] [-t "1 2"] [-p 512] [-g 128] MODEL.gguf...
#
# Environment: VENV (default /work/.venv-llama) for llama-cpp-python, CARGO_TARGET_DIR for
# the kiln build. The default model is used when no file is given.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=5 THREADS="1 2" PROMPT=512 GEN=128
while getopts "r:t:p:g:" o; do
  case $o in
    r) RUNS=$OPTARG ;; t) THREADS=$OPTARG ;; p) PROMPT=$OPTARG ;; g) GEN=$OPTARG ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=("$HOME/.cache/kiln/models/SmolLM2-135M-Instruct.Q4_1.gguf")

VENV=${VENV:-/work/.venv-llama}
if ! "$VENV/bin/python" -c "import llama_cpp, numpy" 2>/dev/null; then
  echo "installing llama-cpp-python into $VENV (builds llama.cpp from source)..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  command -v cmake >/dev/null || "$VENV/bin/pip" install -q cmake ninja
  PATH="$VENV/bin:$PATH" CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" \
    "$VENV/bin/pip" install -q llama-cpp-python numpy
fi

TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p kiln
KILN="$TARGET/release/kiln"

OUT=$(mktemp)
for m in "${MODELS[@]}"; do
  for t in $THREADS; do
    for r in $(seq "$RUNS"); do
      # Alternate which goes first, so drift in machine load falls on both alike.
      if [ $((r % 2)) -eq 1 ]; then order="kiln llama"; else order="llama kiln"; fi
      for who in $order; do
        if [ "$who" = kiln ]; then
          j=$("$KILN" bench --model "$m" --threads "$t" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --json)
        else
          j=$("$VENV/bin/python" scripts/llamacpp_bench.py --model "$m" --threads "$t" \
                --prompt-tokens "$PROMPT" --gen-tokens "$GEN")
        fi
        echo "{\"who\":\"$who\",\"model\":\"$(basename "$m")\",\"threads\":$t,\"r\":$j}" >>"$OUT"
      done
    done
  done
done

python3 - "$OUT" "$PROMPT" "$GEN" "$RUNS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
prompt, gen, runs = sys.argv[2:5]
keys = ["decode_tok_s", "prefill_tok_s", "load_s", "peak_rss_mb"]
print(f"medians of {runs} alternating runs; prompt {prompt} tokens, {gen} generated")
print(f"{'model':<40} {'thr':>3} {'who':<6} {'decode':>8} {'prefill':>8} {'load s':>7} {'RSS MiB':>8}")
groups = {}
for r in rows:
    groups.setdefault((r["model"], r["threads"], r["who"]), []).append(r["r"])
for (m, t) in sorted({(k[0], k[1]) for k in groups}):
    med = {}
    for who in ["kiln", "llama"]:
        rs = groups.get((m, t, who), [])
        med[who] = {k: statistics.median(x[k] for x in rs) for k in keys}
        v = med[who]
        print(f"{m:<40} {t:>3} {who:<6} {v['decode_tok_s']:>8.1f} {v['prefill_tok_s']:>8.1f} "
              f"{v['load_s']:>7.3f} {v['peak_rss_mb']:>8.1f}")
    k, l = med["kiln"], med["llama"]
    print(f"{'':<40} {'':>3} {'ratio':<6} {k['decode_tok_s']/l['decode_tok_s']:>7.2f}x "
          f"{k['prefill_tok_s']/l['prefill_tok_s']:>7.2f}x {k['load_s']/l['load_s']:>6.2f}x "
          f"{k['peak_rss_mb']/l['peak_rss_mb']:>7.2f}x")
PY
rm -f "$OUT"
