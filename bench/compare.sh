#!/usr/bin/env bash
# Side-by-side capacity run: Tether (one core, then all cores) and Mosquitto,
# alternating, on free loopback ports, through the standard matrix. Writes
# bench/results/*.json and the generated section of bench/RESULTS.md.
#
#   bench/compare.sh            # the full matrix (~10 minutes on 2 cores)
#   bench/compare.sh --quick    # a smaller matrix, for a smoke test
#   bench/compare.sh --only fanout-1x1000-q0-16B,p2p-5000-q1
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1; then
  echo "compare.sh: needs Debian's mosquitto: apt-get install -y mosquitto" >&2
  exit 1
fi
cargo build --release --workspace --quiet
exec python3 bench/scripts/compare.py "$@"
