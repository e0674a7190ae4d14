# Builds, on this machine, what the device calls run and packs it into .devbin (carried with
# `carry: [".devbin"]`; scripts/gpu/setup.sh unpacks it there): the kiln binary with CUDA,
# the test binaries that run on a device, and the random-model writer.
# Usage: bash scripts/gpu/build.sh            (CARGO_TARGET_DIR defaults to target-cuda)
set -eu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
cargo build --release -p kiln --features cuda
cargo build --release -p kiln-model --example random_hf_model
mkdir -p .devbin
# xz, not gzip (the kiln binary: 5.8 MB against 8.1), so that a call can carry llama.cpp
# (.devlcpp, 40 MB) beside them within the 64 MiB a call carries.
pack() { rm -f ".devbin/$2.gz"; xz -9e -T2 -c "$1" > ".devbin/$2.xz"; echo "packed $2 ($(du -h ".devbin/$2.xz" | cut -f1))"; }
pack "$CARGO_TARGET_DIR/release/kiln" kiln
pack "$CARGO_TARGET_DIR/release/examples/random_hf_model" random_hf_model
# The tests on a real backend (KILN_TEST_DEVICE=cuda): their executables, by name.
cargo test --release -p kiln-engine --features cuda --no-run --message-format=json \
    --test backend_ops --test arch_fixtures --test real_model --test golden 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do pack "$exe" "$name"; done
