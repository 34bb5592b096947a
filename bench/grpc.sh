#!/usr/bin/env bash
# The gRPC API against the HTTP API in the same run, and the Upstream
# streams' throughput to one and to three backend replicas.
#
# 1. Publish: QoS 1 to one acknowledging subscriber (mosquitto_sub -q 1),
#    32 callers: wrk -c32 on POST /v1/publish, then tether-grpc-load -c32
#    over 4 HTTP/2 connections, rounds alternating. Prints calls/s, the
#    latency p50/p99 each client measured, and the node's CPU seconds per
#    1,000 calls.
# 2. Upstream: tether-bench pub (QoS 1, PUBACK after the backend's ack)
#    into grpc.upstream, 1 then 3 replicas in one group acknowledging at
#    once. Prints what the replicas received per second and the node's CPU
#    seconds per 1,000 messages.
# 3. Receipts to a stream: gRPC Publish QoS 1 to one acknowledging
#    subscriber, 32 callers, without and with receipts_to (one Upstream
#    receipts stream acknowledging at once), rounds alternating. Prints
#    calls/s, the node's CPU seconds per 1,000 calls and the receipts the
#    stream took.
#
# The node (one core; its HTTP/gRPC and Upstream threads too) on CPU 0;
# every client on CPU 1.
#
#   bench/grpc.sh [ROUNDS] [UPSTREAM_RATE]   # default 3 rounds, 40 publishers x 10,000 msg/s offered
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
rate=${2:-10000}
for tool in wrk mosquitto_sub; do
  command -v "$tool" >/dev/null || { echo "grpc.sh: needs $tool (apt-get install wrk mosquitto-clients)" >&2; exit 1; }
done
echo "== cargo build --release -p tether -p tether-bench" >&2
cargo build --release -p tether -p tether-bench --quiet
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

start_node() {
  hport=$(free_port); mport=$(free_port); gport=$(free_port)
  TETHER_NODE__CORES=1 TETHER_HTTP__LISTEN=127.0.0.1:$hport TETHER_LISTENERS__TCP=127.0.0.1:$mport \
    TETHER_WEBSOCKET__ENABLED=false TETHER_GRPC__LISTEN="\"127.0.0.1:$gport\"" \
    TETHER_GRPC__UPSTREAM__TOPICS='["up/#"]' \
    taskset -c 0 target/release/tether >/dev/null 2>&1 &
  node=$!
  pids+=("$node")
  for _ in $(seq 100); do curl -sf "127.0.0.1:$hport/readyz" >/dev/null && break; sleep 0.1; done
}
stop_node() { kill -TERM "$node"; wait "$node" 2>/dev/null || true; }
cpu_per_1000() { python3 -c "print(f'{($2 - $1) / $hz / max($3, 1) * 1000:.3f}')"; }

echo "== publish: HTTP (wrk) against gRPC (tether-grpc-load), 32 callers, QoS 1"
printf '%-6s %-5s %12s %10s %10s %16s\n' round api "calls/s" "p50" "p99" "CPU s/1000"
for round in $(seq "$rounds"); do
  for api in http grpc; do
    start_node
    taskset -c 1 mosquitto_sub -p "$mport" -t bench/http -t bench/grpc -q 1 >/dev/null & sub=$!
    pids+=("$sub")
    sleep 0.5
    t0=$(ticks "$node")
    if [ "$api" = http ]; then
      out=$(taskset -c 1 wrk -t1 -c32 -d5s --latency -s bench/http/publish.lua "http://127.0.0.1:$hport/v1/publish")
      n=$(awk '/requests in/ {print $1}' <<<"$out")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
      p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    else
      out=$(taskset -c 1 target/release/tether-grpc-load --addr "127.0.0.1:$gport" -d 5 --json publish -c 32 --connections 4 | tail -1)
      read -r n rps p50 p99 < <(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(j['calls'], round(j['rate']), f\"{j['p50_us']}us\", f\"{j['p99_us']}us\")" "$out")
    fi
    t1=$(ticks "$node")
    printf '%-6s %-5s %12s %10s %10s %16s\n' "$round" "$api" "$rps" "$p50" "$p99" "$(cpu_per_1000 "$t0" "$t1" "$n")"
    kill "$sub"; stop_node
  done
done

echo "== upstream: 40 publishers x $rate msg/s offered (QoS 1) into one group"
printf '%-6s %-9s %12s %16s\n' round replicas "msg/s" "CPU s/1000"
for round in $(seq "$rounds"); do
  for replicas in 1 3; do
    start_node
    taskset -c 1 target/release/tether-grpc-load --addr "127.0.0.1:$gport" -d 5 --json \
      upstream --filter 'up/#' --group bench -s "$replicas" >/tmp/grpc-upstream.$$ 2>/dev/null & up=$!
    pids+=("$up")
    sleep 0.5
    t0=$(ticks "$node")
    taskset -c 1 target/release/tether-bench pub -p "$mport" -c 40 -r "$rate" -q 1 -d 7 --inflight 64 -t 'up/%i' --quiet >/dev/null 2>&1 || true
    t1=$(ticks "$node")
    wait "$up" || true
    read -r got < <(python3 -c "import json,sys; print(round(json.loads(open(sys.argv[1]).read().splitlines()[-1])['rate']))" /tmp/grpc-upstream.$$)
    sent=$(curl -s "127.0.0.1:$hport/metrics" | awk '/^tether_upstream_acked_total / {print $2}')
    printf '%-6s %-9s %12s %16s\n' "$round" "$replicas" "$got" "$(cpu_per_1000 "$t0" "$t1" "$sent")"
    stop_node
  done
done
rm -f /tmp/grpc-upstream.$$

echo "== receipts to a stream: gRPC Publish QoS 1 to one subscriber, without and with receipts_to"
printf '%-6s %-9s %12s %16s %10s\n' round mode "calls/s" "CPU s/1000" receipts
for round in $(seq "$rounds"); do
  for mode in plain receipts; do
    start_node
    taskset -c 1 mosquitto_sub -p "$mport" -t bench/grpc -q 1 >/dev/null & sub=$!
    pids+=("$sub")
    to=()
    if [ "$mode" = receipts ]; then
      taskset -c 1 target/release/tether-grpc-load --addr "127.0.0.1:$gport" -d 8 upstream --receipts bench >/dev/null 2>&1 & rs=$!
      pids+=("$rs")
      to=(--receipts-to bench)
    fi
    sleep 0.5
    t0=$(ticks "$node")
    out=$(taskset -c 1 target/release/tether-grpc-load --addr "127.0.0.1:$gport" -d 5 --json publish -c 32 --connections 4 "${to[@]}" | tail -1)
    t1=$(ticks "$node")
    read -r n rps < <(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(j['calls'], round(j['rate']))" "$out")
    got=$(curl -s "127.0.0.1:$hport/metrics" | awk '/^tether_upstream_receipts_total / {print $2}')
    printf '%-6s %-9s %12s %16s %10s\n' "$round" "$mode" "$rps" "$(cpu_per_1000 "$t0" "$t1" "$n")" "${got:-0}"
    kill "$sub"
    [ "$mode" = receipts ] && { kill "$rs" 2>/dev/null || true; wait "$rs" 2>/dev/null || true; }
    stop_node
  done
done
