# Device call C: every backend operation against float64 references at awkward sizes, on the
# GPU, then the fixtures again, then compute-sanitizer over the operation tests.
set -u
. scripts/gpu/setup.sh
KILN_TEST_DEVICE=cuda "$B"/backend_ops --test-threads 1 2>&1 | grep -E "^test |result|panicked|error"
KILN_TEST_DEVICE=cuda "$B"/arch_fixtures --test-threads 1 2>&1 | grep -E "result|panicked"
KILN_TEST_DEVICE=cuda compute-sanitizer --tool memcheck --print-limit 5 "$B"/backend_ops --test-threads 1 2>&1 | tail -3
