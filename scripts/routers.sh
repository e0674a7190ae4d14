# Two `kiln serve` replicas (one thread each, on loopback) behind nginx (Debian's package) and
# behind vllm-router (the pip package), checked with scripts/router_check.py through the openai
# client: sessions stay on one replica, requests sharing a long prefix go to the replica that
# caches it, a replica sent SIGTERM while streams run finishes them and its new requests go to
# the other, and when a replica stops the other answers. The configurations are those of
# docs/DEPLOY.md. Usage: bash scripts/routers.sh [KILN] (default ./target/release/kiln);
# needs nginx, vllm-router and the openai package.
set -u
K=${1:-./target/release/kiln}
D=$(dirname "$0")
T=$(mktemp -d)
P1=8411; P2=8412; NG=8410; VR=8420
fail=0
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; nginx -c "$T/nginx.conf" -s stop 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
replica() {  # port -> pid
  $K serve --port "$1" --threads 1 --max-memory-mb 300 > "$T/kiln-$1.log" 2>&1 &
  echo $!
}
ready() { for _ in $(seq 1 150); do curl -sf "$1/health" >/dev/null && return 0; sleep 0.2; done; echo "not ready: $1"; return 1; }
check() { timeout 300 python3 "$D/router_check.py" "$@" || fail=1; }

R1=$(replica $P1); R2=$(replica $P2); pids+=("$R1" "$R2")
ready http://127.0.0.1:$P1 && ready http://127.0.0.1:$P2 || exit 1
REPLICAS=http://127.0.0.1:$P1,http://127.0.0.1:$P2

echo "== nginx: hash on X-Session-ID (consistent), streaming unbuffered"
sed -e "s#@DIR@#$T#g" -e "s#@PORT@#$NG#g" -e "s#@P1@#$P1#g" -e "s#@P2@#$P2#g" \
  "$D/deploy/nginx.conf" > "$T/nginx.conf"
nginx -c "$T/nginx.conf" || exit 1
ready http://127.0.0.1:$NG || exit 1
check http://127.0.0.1:$NG $REPLICAS session

echo "== vllm-router --policy consistent_hash"
timeout 600 vllm-router --host 127.0.0.1 --port $VR --policy consistent_hash \
  --worker-urls http://127.0.0.1:$P1 http://127.0.0.1:$P2 > "$T/vr1.log" 2>&1 &
V=$!; pids+=("$V")
ready http://127.0.0.1:$VR || { tail -5 "$T/vr1.log"; exit 1; }
check http://127.0.0.1:$VR $REPLICAS session
kill $V; wait $V 2>/dev/null

echo "== vllm-router --policy cache_aware"
timeout 600 vllm-router --host 127.0.0.1 --port $VR --policy cache_aware \
  --health-check-interval-secs 1 --health-failure-threshold 1 \
  --worker-urls http://127.0.0.1:$P1 http://127.0.0.1:$P2 > "$T/vr2.log" 2>&1 &
V=$!; pids+=("$V")
ready http://127.0.0.1:$VR || { tail -5 "$T/vr2.log"; exit 1; }
check http://127.0.0.1:$VR $REPLICAS prefix

echo "== SIGTERM to the replica on port $P2 while 12 streams run through nginx: it drains"
check http://127.0.0.1:$NG $REPLICAS drain "$R2" http://127.0.0.1:$P2
wait "$R2" 2>/dev/null
echo "== a new replica on port $P2, then SIGTERM to it while 12 streams run through vllm-router"
R2=$(replica $P2); pids+=("$R2")
ready http://127.0.0.1:$P2 || exit 1
# Round robin, so that the new replica surely runs some of the streams (cache_aware sends a
# wave of streams sharing a prefix to one replica, either one).
kill $V; wait $V 2>/dev/null
timeout 600 vllm-router --host 127.0.0.1 --port $VR --policy round_robin \
  --health-check-interval-secs 1 --health-failure-threshold 1 \
  --worker-urls http://127.0.0.1:$P1 http://127.0.0.1:$P2 > "$T/vr3.log" 2>&1 &
V=$!; pids+=("$V")
ready http://127.0.0.1:$VR || { tail -5 "$T/vr3.log"; exit 1; }
sleep 3  # vllm-router's health check (every second) sees both replicas
check http://127.0.0.1:$VR $REPLICAS drain "$R2" http://127.0.0.1:$P2
wait "$R2" 2>/dev/null
echo "== replica on port $P2 stopped: both routers answer from the other"
sleep 3  # vllm-router's health check takes the replica out
check http://127.0.0.1:$NG $REPLICAS alive
check http://127.0.0.1:$VR $REPLICAS alive
[ $fail = 0 ] && echo "routers: all checks passed" || echo "routers: a check FAILED"
exit $fail
