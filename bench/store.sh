#!/usr/bin/env bash
# The Redis session store's benchmarks: CONNECT rate (Redis against memory),
# QoS 1 into persistent sessions through Redis, and presence cost at 19,000
# idle connections. Each starts its own redis-server and tether on free
# ports and stops them by PID. Summary on stdout and in bench/RESULTS.md;
# every round's JSON in bench/results/store/.
#
#   bench/store.sh                     # everything, medians of 3 (~10 minutes)
#   bench/store.sh --only qos1 --rounds 1
set -euo pipefail
cd "$(dirname "$0")/.."
for cmd in redis-server redis-cli; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "store.sh: needs $cmd: apt-get install -y redis-server" >&2
    exit 1
  fi
done
cargo build --release --workspace --quiet
exec python3 bench/scripts/store_bench.py "$@"
