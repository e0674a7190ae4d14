#!/bin/bash
# Decode speed of `kiln bench` (the default model, 64-token prompt, GEN tokens, default 128)
# with 1 and 2 threads and the default thread count, the machine idle and then with one core
# taken by a spinning process, for each kiln binary given (e.g. this build and an older one),
# alternated; ROUNDS rounds (default 3).
# Usage: bash scripts/busy_core_bench.sh ./target/release/kiln [OTHER_KILN ...]
set -u
dec() {
  "$1" bench -p 64 -g "${GEN:-128}" --threads "$2" --json 2>/dev/null |
    python3 -c "import json,sys; print(round(json.load(sys.stdin)['decode_tok_s'], 1))"
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
    echo "$line"
    if [ "$load" = busy ]; then
      kill "$SPIN"
      wait "$SPIN" 2>/dev/null
    fi
  done
done
