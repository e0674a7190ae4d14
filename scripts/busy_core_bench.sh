#!/bin/bash
# Decode speed of `kiln bench` (the default model, 64-token prompt, GEN tokens, default 128)
# with 1 and 2 threads and the default thread count, the machine idle and then with one core
# taken by a spinning process, for each kiln binary given (e.g. this build and an older one),
# alternated; ROUNDS rounds (default 3). With LLAMA_VENV (a venv holding llama-cpp-python, as
# scripts/bench-vs-llamacpp.sh installs it), llama.cpp on the same file with 1 and 2 threads
# too.
# Usage: bash scripts/busy_core_bench.sh ./target/release/kiln [OTHER_KILN ...]
set -u
dec() {
  "$1" bench -m "$MODEL" -p 64 -g "${GEN:-128}" --threads "$2" --json 2>/dev/null |
    python3 -c "import json,sys; print(round(json.load(sys.stdin)['decode_tok_s'], 1))"
}
MODEL=${MODEL:-$HOME/.cache/kiln/models/SmolLM2-135M-Instruct.Q4_1.gguf}
lcpp() {
  "$LLAMA_VENV/bin/python" scripts/llamacpp_bench.py --model "$MODEL" --threads "$1" \
    --prompt-tokens 64 --gen-tokens "${GEN:-128}" 2>/dev/null |
    python3 -c "import json,sys; print(round(json.loads(sys.stdin.read().strip().splitlines()[-1])['decode_tok_s'], 1))"
}
for round in $(seq 1 "${ROUNDS:-3}"); do
  for load in idle busy; do
    if [ "$load" = busy ]; then
      (while :; do :; done) &
      SPIN=$!
      sleep 0.3
    fi
    line="round $round, $load:"
    for bin in "$@"; do
      line="$line  $bin 1 thread $(dec "$bin" 1), 2 threads $(dec "$bin" 2), default $(dec "$bin" 0);"
    done
    if [ -n "${LLAMA_VENV:-}" ]; then
      line="$line  llama.cpp 1 thread $(lcpp 1), 2 threads $(lcpp 2);"
    fi
    echo "$line"
    if [ "$load" = busy ]; then
      kill "$SPIN"
      wait "$SPIN" 2>/dev/null
    fi
  done
done
