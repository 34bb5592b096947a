#!/usr/bin/env bash
# README's test command: installs what the tests need on a fresh Debian
# machine (Debian packages, tansu, the examples' npm modules), then runs
# `cargo test --workspace` with any arguments given. Installing needs root
# (or sudo); everything already present is skipped, so later runs go
# straight to the tests. About 8 minutes on a 2-core machine, plus about 13
# the first time to build tansu.
#
#   tests/run.sh                 # everything
#   tests/run.sh --test it auth::  # one file of tests/it (arguments go to cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@";
  elif command -v sudo >/dev/null 2>&1; then sudo "$@";
  else echo "tests/run.sh: run as root (or install sudo) to install: ${missing[*]}" >&2; exit 1; fi
}

step "test dependencies"
missing=()
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v stdbuf >/dev/null 2>&1 || missing+=(coreutils)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
/usr/bin/python3 -c 'import paho.mqtt' >/dev/null 2>&1 || missing+=(python3-paho-mqtt)
# tests/it/grpc.rs: backend replicas and raw calls in Python grpcio, stubs
# generated from src/grpc/tether.proto by grpc_tools.
/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || missing+=(python3-grpcio)
/usr/bin/python3 -c 'import grpc_tools' >/dev/null 2>&1 || missing+=(python3-grpc-tools)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# tests/deb.rs: packages the binary (strip, objdump) and checks who runs it.
command -v objdump >/dev/null 2>&1 || missing+=(binutils)
command -v ps >/dev/null 2>&1 || missing+=(procps)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
# tests/faults.rs: network namespaces, partitions (nftables) and slow links (tc).
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v tc >/dev/null 2>&1 || missing+=(iproute2)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
  echo "all present"
fi

# A Kafka-protocol broker for tests/it/kafka.rs and tests/it/cluster_bus.rs,
# unless KAFKA_BROKERS names one.
if [ -z "${KAFKA_BROKERS:-}" ] && ! command -v tansu >/dev/null 2>&1; then
  step "tansu 0.6 (Kafka-protocol broker for the tests; about 13 minutes to build, once)"
  cargo install tansu --version 0.6.0 --features dynostore --locked
fi
command -v tansu >/dev/null 2>&1 && tansu --version 2>&1 | head -1 || true

if [ ! -d examples/node_modules ]; then
  step "examples/: MQTT.js and playwright-core (npm ci)"
  (cd examples && npm ci --no-audit --no-fund)
fi

# A clean debug build of the tests writes about 1.5 GB (a fresh clone under
# .ci/run). A linker that runs out of disk dies with a bus error that names
# neither the disk nor the fix, so a build that has not linked the tests
# yet (none, or only `cargo clippy`'s metadata) checks the space first.
TEST_BUILD_GB=2
target_dir="${CARGO_TARGET_DIR:-target}"
if ! compgen -G "$target_dir/debug/deps/it-*" >/dev/null; then
  mkdir -p "$target_dir"
  free_gb=$(df -P -BG "$target_dir" | awk 'NR==2 { sub("G", "", $4); print $4 }')
  if [ "${free_gb:-0}" -lt "$TEST_BUILD_GB" ]; then
    echo "tests/run.sh: only ${free_gb} GB free under $target_dir; a clean test build needs about ${TEST_BUILD_GB} GB." >&2
    echo "  Free some space (for example remove old target directories) and run again." >&2
    exit 1
  fi
fi

step "cargo test --workspace $*"
exec cargo test --workspace "$@"
