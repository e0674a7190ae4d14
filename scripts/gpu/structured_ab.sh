# Device call for structured output (issue "Structured outputs, tool calling"): two builds of
# kiln side by side, alternated, on what constrained decoding costs at N streams through kiln
# serve (scripts/structured_bench.py), then the time to first token with a new schema.
# Usage (device tool, carry .devbin holding kiln and kiln_base):
#   MODEL=FILE PAIRS=3 STREAMS=64 ROUNDS=5 bash scripts/gpu/structured_ab.sh
# MODEL unset: the Qwen2.5-0.5B shape with random f16 weights (written here). VARIANTS lists
# what runs in each pair, BINARY or BINARY:THREADS (the host threads for masks,
# RAYON_NUM_THREADS); default "kiln_base kiln".
set -u
. scripts/gpu/setup.sh
M=${MODEL:-/tmp/q05}
[ -n "${MODEL:-}" ] || [ -e /tmp/q05 ] || "$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
echo '{"type":"object","properties":{"n":{"type":"integer"},"s":{"type":"string","maxLength":12}},"required":["n","s"],"additionalProperties":false}' > /tmp/s.json
for bin in $(for v in ${VARIANTS:-kiln_base kiln}; do echo "${v%%:*}"; done | sort -u); do
  echo "== $bin: a constrained answer on the GPU"
  "$B/$bin" run --device cuda -m "$M" --temperature 0.7 --max-tokens 40 --json-schema /tmp/s.json "x" 2>/dev/null; echo
done
for pair in $(seq 1 "${PAIRS:-2}"); do
  for v in ${VARIANTS:-kiln_base kiln}; do
    bin=${v%%:*}; threads=${v#*:}; [ "$threads" = "$v" ] && threads=""
    echo "== pair $pair, $v"
    RAYON_NUM_THREADS=$threads serve_up "$bin" "$M"
    [ "$pair" = 1 ] && timeout 120 python3 scripts/gpu/structured_check.py --port 8181 --n 48 | tail -4
    timeout 300 python3 scripts/structured_bench.py --port 8181 --streams "${STREAMS:-64}" --rounds "${ROUNDS:-5}" --max-tokens 192 --ttft "${TTFT:-10}"
    kill $P; wait $P 2>/dev/null
  done
done
