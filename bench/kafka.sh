#!/usr/bin/env bash
# The Kafka bridge's benchmarks: MQTT -> Kafka against a plain rdkafka
# producer, Kafka -> MQTT push to 10,000 subscribers against Mosquitto's
# fan-out, and pub/sub across two nodes against one. Each starts its own
# tansu and brokers on free ports and stops them by PID. Summary on stdout
# and in bench/RESULTS.md; every round's JSON in bench/results/kafka/.
#
#   bench/kafka.sh                       # everything, medians of 3 (~15 minutes)
#   bench/kafka.sh --only produce --rounds 1
#   bench/kafka.sh --only cross --bus    # pub/sub across nodes by interest ([kafka.cluster])
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v tansu >/dev/null 2>&1; then
  echo "kafka.sh: needs tansu: cargo install tansu --version 0.6.0 --features dynostore --locked (about 13 minutes)" >&2
  exit 1
fi
if ! command -v mosquitto >/dev/null 2>&1; then
  echo "kafka.sh: needs mosquitto (the reference broker): apt-get install -y mosquitto" >&2
  exit 1
fi
cargo build --release --workspace --quiet
exec python3 bench/scripts/kafka_bench.py "$@"
