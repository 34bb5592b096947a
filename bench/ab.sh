#!/usr/bin/env bash
# A/B of two Tether builds (before/after a change) on idle memory, p2p and
# fan-out throughput, and low-load CPU and p99; medians of 3, alternating.
#
#   bench/ab.sh /path/to/tether-before            # against target/release/tether
#   bench/ab.sh BEFORE AFTER --only idle,lowload
#   bench/ab.sh mosquitto --only lowload,lowfan     # Tether against the reference
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --quiet
exec python3 bench/scripts/ab.py "$@"
