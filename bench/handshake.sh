#!/usr/bin/env bash
# Full against resumed TLS handshakes per broker core, Tether (tickets from
# tls.ticket_key_file) and Mosquitto in the same run (issue 14). Each broker
# is started on a free port and stopped by its PID.
#
#   bench/handshake.sh                 # medians of 3, 5 s windows (~2 minutes)
#   bench/handshake.sh --rounds 1 --secs 2 --no-write
set -euo pipefail
cd "$(dirname "$0")/.."
for cmd in mosquitto taskset openssl; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "handshake.sh: needs $cmd: apt-get install -y mosquitto util-linux openssl" >&2; exit 1; }
done
cargo build --release --workspace --quiet
exec python3 bench/scripts/handshake_bench.py "$@"
