#!/usr/bin/env bash
# A reconnect storm against Tether and Mosquitto in the same run (issue
# 14): every client drops at once and comes straight back. Reports the time
# until all are back, CONNACK and loop-lag p99, and RSS before, at peak and
# after. Each broker is started on a free port and stopped by its PID.
#
#   bench/storm.sh                   # 19,000 clients, medians of 3 (~2 minutes)
#   bench/storm.sh --rounds 1 --count 5000 --no-write
set -euo pipefail
cd "$(dirname "$0")/.."
for cmd in mosquitto taskset; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "storm.sh: needs $cmd: apt-get install -y mosquitto util-linux" >&2; exit 1; }
done
cargo build --release --workspace --quiet
exec python3 bench/scripts/storm_bench.py "$@"
