# Device call C: every backend operation against float64 references at awkward sizes, on the
# GPU, then the fixtures again, then compute-sanitizer over the operation tests.
set -u
. scripts/gpu/setup.sh
KILN_TEST_DEVICE=cuda "$B"/backend_ops --test-threads 1 2>&1 | grep -E "^test |result|panicked|error"
KILN_TEST_DEVICE=cuda "$B"/arch_fixtures --test-threads 1 2>&1 | grep -E "result|panicked"
KILN_TEST_DEVICE=cuda compute-sanitizer --tool memcheck --print-limit 5 "$B"/backend_ops --test-threads 1 2>&1 | tail -3
echo "== Ising swarm on the GPU (the same checksum as the CPU: 591c609c3c636809), kernels compiled then cached"
for i in 1 2; do
  "$B"/kiln ising swarm --agents 1000 --n 20 --steps 100 --seed 0 --json --device cuda | python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in d if "checksum" in k or k in ("kernel_cache", "device")})'
done
ls ~/.cache/kiln/cuda/
