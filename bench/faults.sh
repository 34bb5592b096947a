#!/usr/bin/env bash
# The fleet under faults (bench/scripts/faults.py): three nodes, Redis and
# tansu in network namespaces, faults alone and two at a time, a paho-mqtt
# workload and a checker that reads only what the clients saw.
#
#   bench/faults.sh                          # the short schedule (about a minute)
#   bench/faults.sh --schedule soak --minutes 30 --report bench/results/faults.md
#   bench/faults.sh --schedule one --fault redis-restart --keep   # one fault alone, to trace it
#
# Needs root; installs nftables and python3-paho-mqtt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v nft >/dev/null 2>&1 || missing+=(nftables)
/usr/bin/python3 -c 'import paho.mqtt' >/dev/null 2>&1 || missing+=(python3-paho-mqtt)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ((${#missing[@]})); then
  echo "faults.sh: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
cargo build --release --bin tether --quiet
exec /usr/bin/python3 bench/scripts/faults.py "$@"
