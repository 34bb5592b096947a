#!/usr/bin/env bash
# The transport matrix: MQTT over TCP, WebSocket, TLS and WebSocket over
# TLS, Tether (one core) against Mosquitto, idle memory, connection rate and
# lossless fan-out. Writes bench/results/transport-*.json and the
# `transports` section of bench/RESULTS.md.
#
#   bench/transports.sh           # the full matrix (~15 minutes on 2 cores)
#   bench/transports.sh --quick   # smaller counts, for a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in mosquitto openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "transports.sh: needs $tool: apt-get install -y $tool" >&2
    exit 1
  fi
done
cargo build --release --workspace --quiet
exec python3 bench/scripts/transports.py "$@"
