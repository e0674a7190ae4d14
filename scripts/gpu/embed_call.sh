# Device call for embeddings: transformers' reference for the tiny fixtures
# (scripts/gpu/embed_reference.py, written to $OUT/embeddings.json for the CPU test), and kiln's
# own on CUDA through `kiln serve` for the same token ids, compared here.
# Usage (device tool, carry .devbin): bash scripts/gpu/embed_call.sh
set -u
. scripts/gpu/setup.sh
K="$B/kiln"
F=tests/fixtures
mkdir -p "$OUT"
python3 scripts/gpu/embed_reference.py $F "$OUT/embeddings.json"
port=8190
for arch in tiny-qwen2 tiny-llama tiny-phi3; do
  $K serve --device cuda -m $F/$arch/hf --port $port > /tmp/serve_$arch.log 2>&1 &
  P=$!
  for i in $(seq 1 120); do curl -sf http://127.0.0.1:$port/health >/dev/null && break; sleep 0.5; done
  python3 - "$OUT/embeddings.json" $arch $port <<'PY'
import json, sys, urllib.request
ref = json.load(open(sys.argv[1]))[sys.argv[2]]
worst = 0.0
for pooling in ["mean", "last"]:
    body = {"input": [r["ids"] for r in ref], "pooling": pooling, "normalize": False, "encoding_format": "float"}
    req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[3]}/v1/embeddings", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    got = [d["embedding"] for d in json.load(urllib.request.urlopen(req))["data"]]
    for g, r in zip(got, ref):
        w = r[pooling]
        num = sum((a - b) ** 2 for a, b in zip(g, w)) ** 0.5
        den = sum(b * b for b in w) ** 0.5
        worst = max(worst, num / den)
print(f"{sys.argv[2]}: kiln CUDA embeddings against transformers f32, worst relative L2 {worst:.2e}")
PY
  kill $P; wait $P 2>/dev/null
  port=$((port + 1))
done
