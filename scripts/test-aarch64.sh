#!/bin/bash
# The CPU kernels' tests built for aarch64 and run under qemu-user, so that the NEON kernels
# (crates/kiln-cpu/src/kernels/neon.rs) meet the scalar reference on this x86 machine
# (`simd_kernels_match_scalar` and the other tests over `Isa::available()`): on qemu's
# default CPU, which has the dot-product extension (`neon` and `neon-dot`), then on a
# Cortex-A72, which has not (`neon` alone); with a model file, also the kiln binary's greedy
# text on it (`neon-dot` under qemu) beside the scalar kernels' here. Not part of CI: it needs the aarch64 target, a cross linker and qemu:
#   rustup target add aarch64-unknown-linux-gnu
#   apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
# Usage: bash scripts/test-aarch64.sh [MODEL.gguf]
set -eu
if [ $# -ge 1 ] && [ ! -f "$1" ]; then
  echo "test-aarch64.sh: no model file at $1" >&2
  exit 2
fi
T=aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-arm}
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo clippy --release -p kiln-cpu --target $T --all-targets -- -D warnings
cargo test --release -p kiln-cpu --target $T --lib
# Again on a core without the dot-product extension (NEON's widening multiplies only).
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu" \
  cargo test --release -p kiln-cpu --target $T --lib
if [ $# -ge 1 ]; then
  cargo build --release -p kiln --target $T
  P="The capital of France is"
  neon=$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$CARGO_TARGET_DIR/$T/release/kiln" run -m "$1" \
      --temperature 0 -n 16 "$P" 2>/tmp/test-aarch64.err) ||
    { echo "the aarch64 kiln failed:" >&2; cat /tmp/test-aarch64.err >&2; exit 1; }
  env -u CARGO_TARGET_DIR cargo build --release -p kiln
  ref=$(./target/release/kiln run -m "$1" --temperature 0 -n 16 --dev cpu-isa=scalar "$P" \
      2>/dev/null)
  echo "neon (qemu): $neon"
  echo "scalar:      $ref"
  [ "$neon" = "$ref" ] && echo "greedy text: the same" || { echo "greedy text differs"; exit 1; }
fi
