# Device call A: tiny fixtures against PyTorch, the Qwen2.5-0.5B-shaped model against
# transformers, and the speed figures. Usage (device tool): bash scripts/gpu/call_a.sh
set -u
. scripts/gpu/setup.sh
mkdir -p /tmp/m && cp .devm1/part /tmp/m/part1
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv
echo "== tiny fixtures (Llama, Qwen2, Phi-3) on CUDA against PyTorch"
KILN_TEST_DEVICE=cuda timeout 200 "$B"/arch_fixtures --nocapture --test-threads 1 2>&1 | grep -v "^$" | tail -45
echo "== Qwen2.5-0.5B-shaped model"
"$B"/random_hf_model /tmp/q05 f16 qwen2.5-0.5b
IDS=$(python3 -c 'import random; r=random.Random(7); print(",".join(str(r.randrange(151643)) for _ in range(100)))')
"$B"/teacher_logits /tmp/q05 cuda $IDS /tmp/kl.bin
K="$B/kiln"
echo "== kiln bench"
$K bench --device cuda -m /tmp/q05 -p 2048 -g 256 --json | tee $OUT/bench_2048.json
$K bench --device cuda -m /tmp/q05 -p 32 -g 256 --json | tee $OUT/bench_b1.json
$K bench --device cuda -m /tmp/q05 -p 32 -g 128 -b 5 --json | tee $OUT/bench_b5.json
$K bench --device cuda -m /tmp/q05 -p 32 -g 128 -b 8 --json | tee $OUT/bench_b8.json
$K bench --device cuda -m /tmp/q05 -p 32 -g 128 -b 64 --json | tee $OUT/bench_b64.json
for q in q8_0 q4_k; do
  $K bench --device cuda -m /tmp/q05 --quantize $q -p 32 -g 256 --json | tee $OUT/bench_b1_$q.json
done
KILN_CUDA_GRAPHS=0 $K bench --device cuda -m /tmp/q05 -p 32 -g 128 --json | tee $OUT/bench_b1_nographs.json
echo "== kernel times over 400 decode launches at batch 1 and at batch 64 (ncu, no graphs)"
for b in 1 64; do
  KILN_CUDA_GRAPHS=0 timeout 120 ncu --csv --metrics gpu__time_duration.sum --launch-skip 2000 --launch-count 400 \
    $K bench --device cuda -m /tmp/q05 -p 16 -g 40 -b $b > /tmp/ncu$b.csv 2>/dev/null
  python3 scripts/gpu/kernel_times.py /tmp/ncu$b.csv | head -12
done
echo "== start to first token"
/usr/bin/time -f "wall %e s" $K run --device cuda -m /tmp/q05 -n 1 --raw "hi" 2>&1 | tail -3
echo "== transformers"
timeout 300 python3 scripts/gpu/hf_reference.py /tmp/q05 $IDS /tmp/kl.bin $OUT/torch.json 2>&1 | grep -v Warning | tail -5
