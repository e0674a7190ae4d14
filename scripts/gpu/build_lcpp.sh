# Builds llama.cpp with CUDA for sm_90 on this machine (no GPU needed), from the source carried
# in .devpeer/llama.tgz, with CUDA 13.0's compiler and libraries from their Python wheels, and
# packs it as .devlcpp/lcpp_built.txz for `LCPP_PREBUILT=1 bash scripts/gpu/issue16_call.sh`
# (carry .devlcpp): the device call then skips its own build (about 6 minutes of its cores).
# About 20 minutes on 2 cores. Needs pip (wheels and cmake/ninja), g++, xz.
# Usage: bash scripts/gpu/build_lcpp.sh [WORKDIR (/tmp/lcpp)]
set -eu
R=$PWD W=${1:-/tmp/lcpp}
mkdir -p "$W/wh" "$W/cuda"
python3 -m pip install -q cmake ninja
for p in nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cublas nvidia-cuda-crt; do
  python3 -m pip download -q --no-deps "$p<13.1" -d "$W/wh"
done
for w in "$W"/wh/*.whl; do unzip -qo "$w" 'nvidia/*' -d "$W/cuda"; done
X=$W/cuda/nvidia/cu13
# The layout nvcc expects: lib64 beside bin, unversioned library names, a stub libcuda.so
# for the link (the device's driver provides the real one).
(cd "$X/lib" && ln -sfn libcudart.so.13 libcudart.so && ln -sfn libcublas.so.13 libcublas.so &&
  ln -sfn libcublasLt.so.13 libcublasLt.so && mkdir -p stubs)
echo 'void cuGetErrorString(void) {}' > "$W/stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$X/lib/stubs/libcuda.so" "$W/stub.c"
ln -sfn lib "$X/lib64"
rm -rf "$W/llama.cpp" && tar xzf .devpeer/llama.tgz -C "$W"
cd "$W/llama.cpp"
PATH=$X/bin:$PATH cmake -G Ninja -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_CUDA_COMPILER="$X/bin/nvcc" -DCUDAToolkit_ROOT="$X" \
  -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DGGML_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
PATH=$X/bin:$PATH cmake --build build -j 2 --target llama
g++ -O2 -std=c++17 "$R/.devpeer/lcpp_bench.cpp" -Iinclude -Iggml/include -Lbuild/bin \
  -lllama -lggml -lggml-base -Wl,-rpath,/tmp/peer/llama.cpp/build/bin -Wl,-rpath-link,"$X/lib" \
  -Wl,--allow-shlib-undefined -o "$W/lcpp_bench"
rm -rf "$W/pk" && mkdir -p "$W/pk" && cp -a "$W/lcpp_bench" build/bin "$W/pk/"
strip --strip-unneeded "$W"/pk/bin/*.so.0.*
mkdir -p "$R/.devlcpp"
(cd "$W/pk" && tar cf - lcpp_bench bin | xz -9 -T2 > "$R/.devlcpp/lcpp_built.txz")
ls -la "$R/.devlcpp"
