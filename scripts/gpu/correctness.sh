# Device call: the CUDA backend's correctness (every operation against float64 references, the
# tiny fixtures against transformers, the engine on a Qwen2.5-0.5B-shaped model, the developers'
# switches, compute-sanitizer). When .devbin also holds `kiln_base` (an earlier build, packed by
# hand, from a build that takes the same flags), its greedy outputs and speed are compared
# with this build's in the same call.
# Usage (device tool, carry .devbin, built by scripts/gpu/build.sh): bash scripts/gpu/correctness.sh
set -u
. scripts/gpu/setup.sh
K="$B/kiln"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
t() { KILN_TEST_DEVICE=cuda timeout 300 "$@" --test-threads 1 2>&1 | grep -E "^test .*(FAILED|panicked)|test result|panicked at" | head -8; }
echo "== backend operations on CUDA against float64 references"
t "$B"/backend_ops
echo "== decode attention grouped by KV head at any number of rows, then never"
KILN_TEST_DEV=cuda-gqa=all t "$B"/backend_ops attention
KILN_TEST_DEV=cuda-gqa=0 t "$B"/backend_ops attention
echo "== tiny fixtures (Llama, Qwen2, Phi-3) on CUDA against transformers"
t "$B"/arch_fixtures
echo "== the engine on CUDA (Qwen2.5-0.5B shape, random weights)"
KILN_TEST_MODEL=/tmp/q05 t "$B"/real_model
echo "== a switch for another device is refused by name"
$K run --device cuda --dev cpu-isa=scalar -m /tmp/q05 -n 4 "x" 2>&1 | tail -1
echo "== greedy outputs (md5 of 48 tokens): each switch, and the base build with the same setting"
g() { "$@" --device cuda -m /tmp/q05 -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum | cut -c1-12; }
for s in "" "cuda-graphs=0" "cuda-fused=0" "cuda-mv-plain=1" "cuda-gqa=all" "cuda-pdl=0" "cuda-mvt=0"; do
  if [ -z "$s" ]; then new=$(g $K run); else new=$(g $K run --dev $s); fi
  base=-
  if [ -x "$B/kiln_base" ]; then
    if [ -z "$s" ]; then base=$(g "$B"/kiln_base run); else base=$(g "$B"/kiln_base run --dev $s); fi
  fi
  echo "${s:-default}: new $new base $base"
done
q=$(g $K run --quantize q8_0 --gpu-weights quantized)
qb=-; [ -x "$B/kiln_base" ] && qb=$(g "$B"/kiln_base run --quantize q8_0 --gpu-weights quantized)
echo "q8_0 kept quantized: new $q base $qb"
echo "--gpu-weights q8 (the same as --quantize q8_0 --gpu-weights quantized): $(g $K run --gpu-weights q8)"
if [ -x "$B/kiln_base" ]; then
  echo "== speed, base and new alternated (decode tok/s; prefill tok/s of 2048)"
  j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], round(d["decode_tok_s"],1), round(d.get("prefill_tok_s",0)))' "$1"; }
  for r in 1 2 3; do
    for b in 1 8 64; do
      "$B"/kiln_base bench --device cuda -m /tmp/q05 -p 32 -g 256 -b $b --json 2>/dev/null | j "r$r base b$b"
      $K bench --device cuda -m /tmp/q05 -p 32 -g 256 -b $b --json 2>/dev/null | j "r$r new  b$b"
    done
    "$B"/kiln_base bench --device cuda -m /tmp/q05 -p 2048 -g 16 --json 2>/dev/null | j "r$r base p2048"
    $K bench --device cuda -m /tmp/q05 -p 2048 -g 16 --json 2>/dev/null | j "r$r new  p2048"
  done
fi
echo "== compute-sanitizer over the backend operations"
KILN_TEST_DEVICE=cuda timeout 400 compute-sanitizer --print-limit 5 "$B"/backend_ops --test-threads 1 2>&1 | grep -E "ERROR SUMMARY|test result" | head -3
