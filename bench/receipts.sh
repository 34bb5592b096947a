#!/usr/bin/env bash
# What delivery receipts cost: POST /v1/publish QoS 1 to one acknowledging
# subscriber (mosquitto_sub -q 1), without and with "receipts": true (one
# receipt record per delivery to tansu), rounds alternating. The node (one
# core, its HTTP and Kafka threads) on CPU 0; wrk, tansu and the
# subscriber on CPU 1. Prints requests/s, the node's CPU seconds per 1,000
# publishes, and the receipts the node handed to Kafka.
#
#   bench/receipts.sh [ROUNDS]     # default 3; needs wrk, tansu, mosquitto_sub
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
for tool in wrk tansu mosquitto_sub; do
  command -v "$tool" >/dev/null || { echo "receipts.sh: needs $tool (apt-get install wrk mosquitto-clients; tansu: cargo install tansu --version 0.6.0 --features dynostore --locked)" >&2; exit 1; }
done
echo "== cargo build --release --bin tether" >&2
cargo build --release --bin tether --quiet
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kport=$(free_port)
url="tcp://127.0.0.1:$kport"
taskset -c 1 tansu broker --listener-url "$url" --advertised-listener-url "$url" \
  --storage-engine memory://tansu/ --silent >/dev/null 2>&1 & tansu_pid=$!
pids=("$tansu_pid")
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$kport") 2>/dev/null && break; sleep 0.1; done
tansu topic create --broker "$url" --partitions 1 receipts >/dev/null
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf '%-6s %-9s %12s %16s %10s\n' round mode "requests/s" "CPU s/1000 pubs" receipts
for round in $(seq "$rounds"); do
  for mode in plain receipts; do
    hport=$(free_port); mport=$(free_port)
    TETHER_NODE__CORES=1 TETHER_HTTP__LISTEN=127.0.0.1:$hport TETHER_LISTENERS__TCP=127.0.0.1:$mport \
      TETHER_WEBSOCKET__ENABLED=false TETHER_KAFKA__BROKERS="\"127.0.0.1:$kport\"" \
      TETHER_KAFKA__RECEIPTS_TOPIC='"receipts"' \
      taskset -c 0 target/release/tether >/dev/null 2>&1 & node=$!
    for _ in $(seq 100); do curl -sf "127.0.0.1:$hport/readyz" >/dev/null && break; sleep 0.1; done
    taskset -c 1 mosquitto_sub -p "$mport" -t bench/http -q 1 >/dev/null & sub=$!
    sleep 0.5
    script=bench/http/publish.lua
    [ "$mode" = receipts ] && script=bench/http/publish_receipts.lua
    t0=$(ticks "$node")
    out=$(taskset -c 1 wrk -t1 -c32 -d5s -s "$script" "http://127.0.0.1:$hport/v1/publish")
    t1=$(ticks "$node")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    sent=$(curl -s "127.0.0.1:$hport/metrics" | awk '/^tether_kafka_receipts_total / {print $2}')
    cpu=$(python3 -c "print(f'{($t1 - $t0) / $hz / $reqs * 1000:.3f}')")
    printf '%-6s %-9s %12s %16s %10s\n' "$round" "$mode" "$rps" "$cpu" "${sent:-0}"
    kill "$sub"; kill -INT "$node"; wait "$node" 2>/dev/null || true
  done
done
