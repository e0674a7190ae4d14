# Device call for issue "GPU kernels at the bandwidth limit": llama.cpp built from source for
# sm_90 in the background (carried in .devpeer: its source and the peers' lcpp_bench.cpp)
# while kiln's checks and per-kernel profiles run, then kiln (this build and, if carried,
# .devbin/kiln_base) and llama.cpp timed on the same GGUF files (random f16 weights, the
# Qwen2.5-0.5B and Llama-3.2-1B shapes, written by `kiln convert`), with a device copy
# bandwidth measured in the same call.
# Usage (device tool, carry .devbin and .devpeer): bash scripts/gpu/issue16_call.sh
# PEER=0: kiln's part alone, no llama.cpp build; NCU_MODELS: the files profiled (none if
# empty); CHECKS=0: no tests, sanitizer or greedy text; EXTRA=0: no grouped attention or
# batches; JOBS: llama.cpp's build jobs (12); ROUNDS (2); LCPP_PREBUILT: below.
set -u
. scripts/gpu/setup.sh
K="$B/kiln"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
R=$PWD
# llama.cpp, in the background on JOBS (12) of the 16 cores.
# LCPP_PREBUILT=1: llama.cpp built beforehand (on the build machine with CUDA 13.0's compiler
# from its Python wheels, or brought back by PACK=1), carried as .devlcpp/lcpp_built.txz (xz:
# lcpp_bench and build/bin, the harness's run path /tmp/peer/llama.cpp/build/bin).
if [ "${LCPP_PREBUILT:-0}" = 1 ]; then
  mkdir -p /tmp/peer/llama.cpp/build &&
    python3 -c 'import lzma,sys; sys.stdout.buffer.write(lzma.decompress(open(sys.argv[1],"rb").read()))' \
      .devlcpp/lcpp_built.txz | tar xf - -C /tmp/peer &&
    mv /tmp/peer/bin /tmp/peer/llama.cpp/build/ && echo ok > /tmp/peer/done
  # libllama's own run path is the build machine's; its libraries are found through this.
  export LD_LIBRARY_PATH=/tmp/peer/llama.cpp/build/bin:$LD_LIBRARY_PATH
fi
[ "${PEER:-1}" = 0 ] || [ "${LCPP_PREBUILT:-0}" = 1 ] || (
  mkdir -p /tmp/peer && cd /tmp/peer && tar xzf "$R/.devpeer/llama.tgz" && cd llama.cpp &&
  PATH=/usr/local/cuda/bin:$PATH cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DGGML_NATIVE=OFF \
    -DCMAKE_BUILD_TYPE=Release >/tmp/peer/cmake.log 2>&1 &&
  PATH=/usr/local/cuda/bin:$PATH cmake --build build -j "${JOBS:-12}" --target llama >/tmp/peer/build.log 2>&1 &&
  g++ -O2 -std=c++17 "$R/.devpeer/lcpp_bench.cpp" -Iinclude -Iggml/include -Lbuild/bin \
    -lllama -lggml -lggml-base -Wl,-rpath,$PWD/build/bin -o /tmp/peer/lcpp_bench &&
  echo ok > /tmp/peer/done || echo failed > /tmp/peer/done
) &
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b >/dev/null
"$B"/random_hf_model /tmp/l1b f16 llama3.2-1b >/dev/null
$K convert /tmp/q05 /tmp/q05.gguf >/dev/null 2>&1; $K convert /tmp/l1b /tmp/l1b.gguf >/dev/null 2>&1
ls -la /tmp/q05.gguf /tmp/l1b.gguf | awk '{print $5, $9}'
# kx "BINARY [SWITCHES]" SUBCOMMAND ARGS...: one of the carried builds, its switches after the subcommand.
kx() { local b=${1%% *} x=""; [ "$1" != "$b" ] && x=${1#* }; local sub=$2; shift 2; "$B/$b" $sub $x "$@"; }
if [ "${CHECKS:-1}" = 1 ]; then
el "== checks on CUDA"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/backend_ops --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -6
KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-mv1d=0 timeout 200 "$B"/backend_ops --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | sed 's/^/mv1d=0: /' | head -6
KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-mvpre=4 timeout 200 "$B"/backend_ops --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | sed 's/^/mvpre=4: /' | head -6
KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-gqa=all timeout 200 "$B"/backend_ops --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | sed 's/^/gqa=all: /' | head -6
KILN_TEST_DEVICE=cuda timeout 200 "$B"/arch_fixtures --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -6
KILN_TEST_DEVICE=cuda KILN_TEST_MODEL=/tmp/q05 timeout 200 "$B"/real_model --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" | head -6
KILN_TEST_DEVICE=cuda timeout 300 compute-sanitizer --print-limit 5 "$B"/backend_ops 2>&1 | grep -E "ERROR SUMMARY" | head -2
KILN_TEST_DEVICE=cuda KILN_TEST_DEV=cuda-gqa=all timeout 300 compute-sanitizer --print-limit 5 "$B"/backend_ops 2>&1 | grep -E "ERROR SUMMARY" | sed 's/^/gqa=all: /' | head -2
p=$(printf 'word %.0s' $(seq 600))
for k in kiln kiln_base "kiln --dev cuda-mvpre=4"; do [ -x "$B/${k%% *}" ] || continue
 echo "greedy text, $k: q05 $(kx "$k" run --device cuda -m /tmp/q05.gguf -n 48 --temperature 0 --raw "hello world" 2>/dev/null | md5sum | cut -c1-12)" \
  "after 1,200 tokens $(kx "$k" run --device cuda -m /tmp/q05.gguf -n 32 --temperature 0 --raw "$p" 2>/dev/null | md5sum | cut -c1-12)"
done
fi
el "== per-kernel profile of decode (ncu, graphs off, -p 8 -g 16)"
for m in ${NCU_MODELS-/tmp/q05.gguf /tmp/l1b.gguf}; do
 timeout 150 ncu --csv --metrics gpu__time_duration.sum $K bench --dev cuda-graphs=0 --device cuda -m $m -p 8 -g 16 --json > /tmp/ncu.csv 2>/dev/null
 echo "-- $m"; python3 scripts/gpu/kernel_times.py /tmp/ncu.csv | head -14
done
el "== waiting for llama.cpp"
while [ "${PEER:-1}" != 0 ] && [ ! -e /tmp/peer/done ] && [ $(( $(date +%s) - T0 )) -lt ${PEER_WAIT:-340} ]; do sleep 1; done
el "llama.cpp build: $(cat /tmp/peer/done 2>/dev/null || echo unfinished)"; tail -3 /tmp/peer/build.log 2>/dev/null
el "== copy bandwidth (device to device, 1 GiB)"
python3 scripts/gpu/copy_bw.py
el "== kiln and llama.cpp, the same files"
for r in $(seq "${ROUNDS:-2}"); do
 for m in /tmp/q05.gguf /tmp/l1b.gguf; do
  for k in kiln "kiln --dev cuda-mvpre=4" kiln_base; do [ -x "$B/${k%% *}" ] || continue
   for P in 32 2048; do [ "$k" != kiln ] && [ $P = 2048 ] && continue; kx "$k" bench --device cuda -m $m -p $P -g 128 --json 2>/dev/null | bench_of "r$r ${k/ --dev /+} $(basename $m) p$P"; done
  done
  if [ -x /tmp/peer/lcpp_bench ]; then
   for P in 32 2048; do echo "r$r llama.cpp $(basename $m) p$P $(timeout 120 /tmp/peer/lcpp_bench $m $P 128 1 2 2>/dev/null | tail -1)"; done
  fi
 done
done
if [ "${EXTRA:-1}" = 1 ]; then
el "== decode attention grouped by KV head at batch 1 (--dev cuda-gqa=all), after 2,048"
for m in /tmp/q05.gguf /tmp/l1b.gguf; do for k in kiln kiln_base; do [ -x "$B/$k" ] || continue; $B/$k bench --dev cuda-gqa=all --device cuda -m $m -p 2048 -g 128 --json 2>/dev/null | bench_of "$k $(basename $m) gqa=all p2048"; done; done
el "== 5, 8 and 64 sequences"
for m in /tmp/q05.gguf /tmp/l1b.gguf; do for b in 5 8 64; do for k in kiln kiln_base; do [ -x "$B/$k" ] || continue; $B/$k bench --device cuda -m $m -p 32 -g 128 -b $b --json 2>/dev/null | bench_of "$k $(basename $m) b$b"; done; done; done
fi
el done
