#!/usr/bin/env bash
# A local Tether cluster: one redis-server and N nodes sharing it, each node
# with its own node id and ports. For trying the cluster out (README, "Two
# nodes") and for the store benchmarks' manual runs.
#
#   bench/cluster.sh                 # 2 nodes
#   bench/cluster.sh -n 3            # 3 nodes
#   bench/cluster.sh -n 2 --mqtt-base 11883 --http-base 18080 --redis-port 16379
#
# Node i (from 1) listens for MQTT on mqtt-base+i-1, WebSocket on
# ws-base+i-1 and HTTP on http-base+i-1. Redis keeps an append-only file
# (appendfsync always) in a temporary directory, so a Redis restart loses
# nothing acknowledged. Logs go to that directory too. Ctrl-C (or the end
# of the shell) stops what this script started, by PID, and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=2
mqtt_base=1883
ws_base=8083
http_base=8080
redis_port=6379
build=1

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--nodes) nodes="$2"; shift 2 ;;
    --mqtt-base) mqtt_base="$2"; shift 2 ;;
    --ws-base) ws_base="$2"; shift 2 ;;
    --http-base) http_base="$2"; shift 2 ;;
    --redis-port) redis_port="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "cluster.sh: unknown option $1" >&2; usage 1 ;;
  esac
done

for cmd in redis-server redis-cli; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "cluster.sh: needs $cmd: apt-get install -y redis-server" >&2
    exit 1
  fi
done

taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=("$redis_port")
for i in $(seq 0 $((nodes - 1))); do
  ports+=($((mqtt_base + i)) $((ws_base + i)) $((http_base + i)))
done
for p in "${ports[@]}"; do
  if taken "$p"; then
    echo "cluster.sh: port $p is in use; pick other bases (--mqtt-base, --ws-base, --http-base, --redis-port)" >&2
    exit 1
  fi
done

if [ "$build" = 1 ]; then
  echo "building tether (release)..."
  cargo build --release --quiet --bin tether
fi

dir=$(mktemp -d /tmp/tether-cluster.XXXXXX)
pids=()
stop() {
  trap - EXIT INT TERM
  echo
  echo "stopping (PIDs ${pids[*]:-none})..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped; logs and Redis's files are in $dir"
}
trap stop EXIT INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save "" \
  --appendonly yes --appendfsync always --logfile "$dir/redis.log" &
pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
redis-cli -p "$redis_port" ping >/dev/null || { echo "cluster.sh: redis-server did not start (see $dir/redis.log)" >&2; exit 1; }

for i in $(seq 1 "$nodes"); do
  TETHER_NODE__ID="$i" \
  TETHER_LISTENERS__TCP="127.0.0.1:$((mqtt_base + i - 1))" \
  TETHER_WEBSOCKET__LISTEN="127.0.0.1:$((ws_base + i - 1))" \
  TETHER_HTTP__LISTEN="127.0.0.1:$((http_base + i - 1))" \
  TETHER_STORE__KIND='"redis"' \
  TETHER_REDIS__URLS="[\"redis://127.0.0.1:$redis_port\"]" \
    target/release/tether >"$dir/node$i.log" 2>&1 &
  pids+=($!)
done
# Ready when every node answers /readyz.
for i in $(seq 1 "$nodes"); do
  url="http://127.0.0.1:$((http_base + i - 1))/readyz"
  for _ in $(seq 200); do
    curl -sf "$url" >/dev/null 2>&1 && break
    sleep 0.05
  done
  curl -sf "$url" >/dev/null || { echo "cluster.sh: node $i did not become ready (see $dir/node$i.log)" >&2; exit 1; }
done

echo
echo "Tether cluster: $nodes nodes sharing redis://127.0.0.1:$redis_port"
printf '  %-6s %-18s %-18s %-24s\n' node mqtt websocket http
for i in $(seq 1 "$nodes"); do
  printf '  %-6s %-18s %-18s %-24s\n' "$i" "127.0.0.1:$((mqtt_base + i - 1))" \
    "127.0.0.1:$((ws_base + i - 1))" "http://127.0.0.1:$((http_base + i - 1))"
done
echo "  logs: $dir"
echo "Ctrl-C stops the cluster."
wait
