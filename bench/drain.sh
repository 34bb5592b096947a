#!/usr/bin/env bash
# Drain against kill (issue 14): 10,000 clients move from node A to node B,
# because A is drained at drain.rate_per_sec or because A is killed; reports
# how long the move takes and how hard it hits B (loop lag, CONNACK p99).
# Both nodes are started on free ports and stopped by their PIDs.
#
#   bench/drain.sh                          # 10,000 clients, medians of 3 (~2 minutes)
#   bench/drain.sh --rounds 1 --count 2000 --no-write
set -euo pipefail
cd "$(dirname "$0")/.."
command -v taskset >/dev/null 2>&1 || { echo "drain.sh: needs taskset: apt-get install -y util-linux" >&2; exit 1; }
cargo build --release --workspace --quiet
exec python3 bench/scripts/drain_bench.py "$@"
