#!/bin/bash
# Issue "Speculative decoding": what speculation costs streams that do not speculate. For each
# cycle, two fresh servers on the same model, one after the other:
#   plain: `kiln serve -m TARGET`, STREAMS counted streams and SIDE more, none speculating;
#   spec:  `kiln serve -m TARGET --draft DRAFT`, the STREAMS counted streams asking
#          `draft_max: 0`, the SIDE streams speculating (`draft_max: 8`).
# scripts/serve_bench.py runs ROUNDS rounds of each at temperature 0.7 (raw client); prints each
# round's counted aggregate tok/s and the engine's draft counters, then spec / plain of the
# medians and each cycle's ratio (spec against the plain run before it). Extra arguments for both servers in KILN_ARGS (e.g. "--device cuda").
# With SAME=1 one server with --draft runs both, alternated by cycle: the side streams asking
# `draft_max: 0` (plain) or 8 (spec), so that the machine's drift between servers falls out.
# Usage: CYCLES=2 ROUNDS=3 STREAMS=64 SIDE=4 MAXTOK=128 bash scripts/spec_mix.sh KILN TARGET DRAFT
set -u
[ $# -eq 3 ] || { echo "usage: [CYCLES=N ROUNDS=N STREAMS=N SIDE=N MAXTOK=N SAME=1] bash scripts/spec_mix.sh KILN TARGET DRAFT" >&2; exit 2; }
K=$1 TARGET=$2 DRAFT=$3
PORT=${PORT:-8393}
STREAMS=${STREAMS:-64} SIDE=${SIDE:-4} ROUNDS=${ROUNDS:-3}
streams=$(python3 -c "print(','.join(['$STREAMS'] * ${ROUNDS}))")
# start NAME [SERVER ARGS]: a server, its log /tmp/spec_mix_NAME.log; stops the script if it
# does not answer within a minute.
start() {
  local name=$1
  shift
  # shellcheck disable=SC2086
  "$K" serve -m "$TARGET" --port "$PORT" ${KILN_ARGS:-} "$@" > "/tmp/spec_mix_$name.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/v1/models" | grep -q '"id"' && return 0
    sleep 0.1
  done
  echo "the server ($name) did not start: /tmp/spec_mix_$name.log" >&2
  tail -3 "/tmp/spec_mix_$name.log" >&2
  exit 1
}
stop() {
  kill "$SERVER"
  wait "$SERVER" 2>/dev/null
}
# run NAME EXTRA SIDE_EXTRA [SERVER ARGS]: a server of its own unless SAME=1.
run() {
  local name=$1 extra=$2 side_extra=$3
  shift 3
  [ "${SAME:-0}" = 1 ] || start "$name" "$@"
  python3 scripts/serve_bench.py --port "$PORT" --streams "$streams" --temperatures 0.7 \
      --max-tokens "${MAXTOK:-128}" --procs "${PROCS:-2}" --client raw \
      --extra "$extra" --side "$SIDE" --side-extra "$side_extra" |
    python3 -c "
import json, statistics as s, sys
rates = []
for l in sys.stdin:
    d = json.loads(l)
    rates.append(d['aggregate_tok_s'])
    e = d.get('engine') or {}
    print(f\"  $name: {d['streams']} counted streams {d['aggregate_tok_s']} tok/s, side tokens {d.get('side_tokens')}, draft tokens {e.get('draft_tokens')}, draft passes {e.get('draft_passes')}\")
print(f'$name median {s.median(rates)}')" | tee -a /tmp/spec_mix_out.txt
  [ "${SAME:-0}" = 1 ] || stop
}
: > /tmp/spec_mix_out.txt
[ "${SAME:-0}" = 1 ] && start same --draft "$DRAFT"
for c in $(seq "${CYCLES:-2}"); do
  echo "cycle $c"
  if [ "${SAME:-0}" = 1 ]; then
    run plain '{"draft_max": 0}' '{"draft_max": 0}'
  else
    run plain '{}' '{}'
  fi
  run spec '{"draft_max": 0}' '{"draft_max": 8}' --draft "$DRAFT"
done
[ "${SAME:-0}" = 1 ] && stop
python3 -c "
import re, statistics as s
plain, spec = [], []
for l in open('/tmp/spec_mix_out.txt'):
    m = re.match(r'(plain|spec) median (\S+)', l)
    if m:
        (plain if m.group(1) == 'plain' else spec).append(float(m.group(2)))
ratios = [b / a for a, b in zip(plain, spec)]
print(f'plain medians {plain}, spec medians {spec}: spec / plain {s.median(spec) / s.median(plain):.3f}')
print(f'by cycle: {[round(r, 3) for r in ratios]}, median {s.median(ratios):.3f}')"
