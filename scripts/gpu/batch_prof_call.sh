# Device call (twenty-second session, a short one): where a decode step of 1 and of 8 rows goes
# on the Qwen2.5-0.5B shape, per kernel and per grid (ncu at real clocks, graphs off, so no
# launch overlaps and pre-wait loads show no gain), for the 5- and 8-sequence ratios of issue
# "GPU kernels at the bandwidth limit". Usage (carry .devbin): bash scripts/gpu/batch_prof_call.sh
. scripts/gpu/setup.sh; K=$B/kiln
random_models q05:qwen2.5-0.5b
for b in 1 8; do
  timeout 100 ncu --clock-control none --csv --metrics gpu__time_duration.sum $K bench --dev cuda-graphs=0 \
    --device cuda -m /tmp/q05.gguf -p 8 -g 8 -b $b --json > /tmp/ncu$b.csv 2>/dev/null
  cp /tmp/ncu$b.csv $OUT/ 2>/dev/null
  echo "-- b$b"; python3 scripts/gpu/kernel_times.py /tmp/ncu$b.csv --by-grid | head -24
done
