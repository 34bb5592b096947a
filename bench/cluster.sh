#!/usr/bin/env bash
# A local Tether cluster: one redis-server and N nodes sharing it, each node
# with its own node id and ports, and with --kafka a tansu broker as the hub.
# For trying the cluster out (README, "Several nodes" and "Kafka").
#
#   bench/cluster.sh                 # 2 nodes
#   bench/cluster.sh -n 3 --kafka    # 3 nodes, Redis and Kafka (tansu on :9092)
#   bench/cluster.sh -n 3 --kafka --bus   # pub/sub across nodes by interest
#   bench/cluster.sh -n 2 --mqtt-base 11883 --http-base 18080 --redis-port 16379
#
# Node i (from 1) listens for MQTT on mqtt-base+i-1, WebSocket on
# ws-base+i-1 and HTTP on http-base+i-1. Redis keeps an append-only file
# (appendfsync always) in a temporary directory, so a Redis restart loses
# nothing acknowledged. With --kafka the nodes get the README's four routes:
# report/# -> iot.telemetry (mode 1), chat/# <-> tether.bus (mode 2, pub/sub
# across nodes), push.user -> a user's devices (mode 3), raw/# -> iot.raw and
# iot.clean -> MQTT (mode 4), the HTTP API's pushes through tether.push to
# every node, and connection events in tether.events. With --bus, MQTT
# pub/sub across nodes goes through [kafka.cluster] instead of mode 2: each
# message only to the nodes whose clients subscribed (topics tether.node.N
# and tether.interest). Logs go to that directory too. Ctrl-C (or the
# end of the shell) stops what this script started, by PID, and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=2
mqtt_base=1883
ws_base=8083
http_base=8080
redis_port=6379
kafka=0
kafka_port=9092
bus=0
build=1

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--nodes) nodes="$2"; shift 2 ;;
    --mqtt-base) mqtt_base="$2"; shift 2 ;;
    --ws-base) ws_base="$2"; shift 2 ;;
    --http-base) http_base="$2"; shift 2 ;;
    --redis-port) redis_port="$2"; shift 2 ;;
    --kafka) kafka=1; shift ;;
    --bus) bus=1; kafka=1; shift ;;
    --kafka-port) kafka_port="$2"; shift 2 ;;
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

if [ "$kafka" = 1 ] && ! command -v tansu >/dev/null 2>&1; then
  echo "cluster.sh: --kafka needs tansu: cargo install tansu --version 0.6.0 --features dynostore --locked (about 13 minutes)" >&2
  exit 1
fi

taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=("$redis_port")
[ "$kafka" = 1 ] && ports+=("$kafka_port")
for i in $(seq 0 $((nodes - 1))); do
  ports+=($((mqtt_base + i)) $((ws_base + i)) $((http_base + i)))
done
for p in "${ports[@]}"; do
  if taken "$p"; then
    echo "cluster.sh: port $p is in use; pick other bases (--mqtt-base, --ws-base, --http-base, --redis-port, --kafka-port)" >&2
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

kafka_env=()
if [ "$kafka" = 1 ]; then
  brokers="127.0.0.1:$kafka_port"
  tansu broker --listener-url "tcp://$brokers" --advertised-listener-url "tcp://$brokers" \
    --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do
    taken "$kafka_port" && break
    sleep 0.05
  done
  taken "$kafka_port" || { echo "cluster.sh: tansu did not start (see $dir/tansu.log)" >&2; exit 1; }
  topics=(tether.bus tether.push tether.events iot.telemetry push.user iot.raw iot.clean)
  [ "$bus" = 1 ] && for i in $(seq 1 "$nodes"); do topics+=("tether.node.$i"); done
  for t in "${topics[@]}"; do
    tansu topic create --broker "tcp://$brokers" --partitions 3 "$t" >>"$dir/tansu.log" 2>&1 \
      || { echo "cluster.sh: creating topic $t failed (see $dir/tansu.log)" >&2; exit 1; }
  done
  if [ "$bus" = 1 ]; then
    # One partition: announcements keep their order.
    tansu topic create --broker "tcp://$brokers" --partitions 1 tether.interest >>"$dir/tansu.log" 2>&1 \
      || { echo "cluster.sh: creating topic tether.interest failed (see $dir/tansu.log)" >&2; exit 1; }
  fi
  kafka_env=(
    TETHER_KAFKA__BROKERS="\"$brokers\""
    TETHER_KAFKA__ROUTE='[{filter = "report/#", topic = "iot.telemetry", key = "%c"}, {filter = "chat/#", topic = "tether.bus", key = "%c"}, {filter = "raw/#", topic = "iot.raw", key = "%c"}]'
    TETHER_KAFKA__SOURCE='[{topic = "tether.bus"}, {topic = "push.user", to = "user"}, {topic = "iot.clean"}]'
    TETHER_KAFKA__PUSH_TOPIC='"tether.push"'
    TETHER_KAFKA__EVENTS_TOPIC='"tether.events"'
    # tansu answers a fetch only when its wait is up (see README, Kafka).
    TETHER_KAFKA__CONSUMER='{"fetch.wait.max.ms" = "10"}'
  )
  if [ "$bus" = 1 ]; then
    # chat/# is no longer consumed back (mode 2): the bus carries it.
    kafka_env+=(
      TETHER_KAFKA__SOURCE='[{topic = "push.user", to = "user"}, {topic = "iot.clean"}]'
      TETHER_KAFKA__CLUSTER='{node_topic = "tether.node.%n"}'
    )
  fi
fi

for i in $(seq 1 "$nodes"); do
  env "${kafka_env[@]}" \
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
[ "$kafka" = 1 ] && echo "  and Kafka (tansu) at $brokers: topics tether.bus tether.push tether.events iot.telemetry push.user iot.raw iot.clean"
printf '  %-6s %-18s %-18s %-24s\n' node mqtt websocket http
for i in $(seq 1 "$nodes"); do
  printf '  %-6s %-18s %-18s %-24s\n' "$i" "127.0.0.1:$((mqtt_base + i - 1))" \
    "127.0.0.1:$((ws_base + i - 1))" "http://127.0.0.1:$((http_base + i - 1))"
done
echo "  logs: $dir"
echo "Ctrl-C stops the cluster."
wait
