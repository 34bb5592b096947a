#!/usr/bin/env bash
# CONNECT rate per core with authentication (issue 13): no auth, the users
# file with a warm cache and cold (argon2id per CONNECT), JWT, and
# Mosquitto's password file as the reference. Each run starts its own
# broker on a free port and stops it by PID. Summary on stdout and in
# bench/RESULTS.md; every run's JSON in bench/results/auth/.
#
#   bench/auth.sh               # medians of 3 (~2 minutes)
#   bench/auth.sh --rounds 1 --no-write
set -euo pipefail
cd "$(dirname "$0")/.."
for cmd in mosquitto mosquitto_passwd taskset; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "auth.sh: needs $cmd: apt-get install -y mosquitto util-linux" >&2; exit 1; }
done
cargo build --release --workspace --quiet
exec python3 bench/scripts/auth_bench.py "$@"
