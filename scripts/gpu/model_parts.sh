# Splits the shipped default model into the two parts device calls carry (a call carries at
# most 64 MiB with the working tree): .devmodel1/smolpart.00 (58 MB) and .devmodel2/smolpart.01
# (the rest). `join_default_model` (scripts/gpu/setup.sh) joins them on the device.
# Usage: bash scripts/gpu/model_parts.sh    (`kiln fetch` gives the model's path, fetching it
# if it is missing)
set -eu
F=$(cargo run -q --release -p kiln -- fetch | tail -1)
[ -f "$F" ] || { echo "kiln fetch gave no model file: $F"; exit 1; }
mkdir -p .devmodel1 .devmodel2
rm -f .devmodel1/smolpart.* .devmodel2/smolpart.*
head -c 58000000 "$F" > .devmodel1/smolpart.00
tail -c +58000001 "$F" > .devmodel2/smolpart.01
echo "parts of $F: $(du -b .devmodel1/smolpart.00 .devmodel2/smolpart.01 | awk '{print $1}' | tr '\n' ' ')"
