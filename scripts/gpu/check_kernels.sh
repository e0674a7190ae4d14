# Compiles kiln's kernel source (crates/kiln-cuda/src/kernels, in the order of nvrtc.rs) for
# sm_90 on this machine, with the nvcc that scripts/gpu/build_lcpp.sh unpacks from CUDA 13.0's
# wheels, and prints each kernel's registers, spills and shared memory: a check before a device
# call that the source compiles (NVRTC on the device compiles the same text).
# Usage: bash scripts/gpu/check_kernels.sh [WORKDIR (/tmp/lcpp)] [ARCH (sm_90)]
set -eu
W=${1:-/tmp/lcpp} ARCH=${2:-sm_90}
NVCC=$W/cuda/nvidia/cu13/bin/nvcc
[ -x "$NVCC" ] || { echo "no nvcc at $NVCC: run scripts/gpu/build_lcpp.sh first" >&2; exit 1; }
D=crates/kiln-cuda/src
files=$(grep -o 'kernels/[a-z_]*\.cu' $D/nvrtc.rs)
src=$(mktemp --suffix .cu)
for f in $files; do cat "$D/$f"; done > "$src"
"$NVCC" -arch="$ARCH" -std=c++17 -DINFINITY='__int_as_float(0x7f800000)' -cubin -Xptxas -v \
  "$src" -o /dev/null 2>&1 | awk '
  /error/ { print; bad = 1 }
  /Compiling entry function/ { gsub(/\047/, "", $7); k = $7 }
  /spill stores/ { sp = $5 + $9 }
  /Used [0-9]+ registers/ { printf "%-24s %4s registers, %4s bytes spilled\n", k, $5, sp }
  END { exit bad }'
rm -f "$src"
