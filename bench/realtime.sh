#!/usr/bin/env bash
# Real time at every load: Tether against Mosquitto, FlashMQ (when FLASHMQ
# names its binary) and rumqttd (when on PATH), brokers alternating within
# each round, medians of 3 (bench/scripts/realtime.py says what each test is).
#
#   bench/realtime.sh                                # every test, about 25 minutes
#   bench/realtime.sh --only lowlat,fanout-max --rounds 5
#   FLASHMQ=/opt/flashmq/flashmq bench/realtime.sh --syscalls
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --quiet
exec python3 bench/scripts/realtime.py "$@"
