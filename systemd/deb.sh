#!/usr/bin/env bash
# Builds Tether's Debian package from this tree with dpkg-deb: the binary,
# the systemd unit, /etc/tether/tether.toml as a conffile, the sysctl
# drop-in, the docs and the Grafana dashboard, and the maintainer scripts
# in systemd/debian/ (a `tether` system user, `tether doctor` on install,
# a drain before an upgrade).
#
#   systemd/deb.sh                          # cargo build --release, then the .deb
#   systemd/deb.sh --binary PATH --out DIR  # package a binary already built
#
# Prints the path of the package it wrote (target/debian/ by default).
# dpkg-deb rather than cargo-deb: every Debian host has it, CI needs no
# extra tool built, and the maintainer scripts are plain files to read.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out="target/debian"
while (($#)); do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "deb.sh: unknown argument '$1' (see systemd/deb.sh --help)" >&2; exit 2 ;;
  esac
done
for tool in dpkg-deb dpkg strip objdump; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "deb.sh: needs $tool: apt-get install -y dpkg binutils" >&2
    exit 1
  }
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
if [ -z "$binary" ]; then
  echo "== cargo build --release --bin tether (several minutes the first time)" >&2
  cargo build --release --bin tether
  binary=target/release/tether
fi
# The package's version is the binary's: `tether --version` names it.
said=$("$binary" --version)
if [ "$said" != "tether $version" ]; then
  echo "deb.sh: $binary says '$said', this tree is $version: build the binary from this tree" >&2
  exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/tether_${version}_${arch}"

install -D -m 0755 "$binary" "$root/usr/bin/tether"
# The release profile keeps line tables for profiling (80 MB); a host
# needs none of it.
strip --strip-debug "$root/usr/bin/tether"

# The unit, with the package's paths and its system user instead of
# DynamicUser (the config file is readable by the group `tether` only).
install -d "$root/lib/systemd/system"
sed -e 's|^# Install: .*|# Installed by the tether Debian package (systemd/deb.sh).|' \
  -e '/^#   *\(mkdir\|systemctl\) /d' \
  -e 's|/usr/local/bin/tether|/usr/bin/tether|' \
  -e 's|^DynamicUser=yes$|User=tether\nGroup=tether|' \
  systemd/tether.service >"$root/lib/systemd/system/tether.service"

install -D -m 0640 tether.example.toml "$root/etc/tether/tether.toml"
install -D -m 0644 tuning/60-tether.conf "$root/usr/lib/sysctl.d/60-tether.conf"
doc="$root/usr/share/doc/tether"
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 tether.example.toml "$doc/tether.example.toml"
install -D -m 0644 tuning/grafana/tether.json "$doc/grafana/tether.json"
install -D -m 0644 tuning/README.md "$doc/tuning.md"
cat >"$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tether
License: Apache-2.0

Files: *
Copyright: The Tether developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

# glibc: the newest symbol version the binary asks for.
glibc=$(objdump -T "$root/usr/bin/tether" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
install -d "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<CONTROL
Package: tether
Version: $version
Architecture: $arch
Maintainer: The Tether developers <tether@localhost>
Depends: libc6 (>= $glibc), libgcc-s1, passwd
Section: net
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Description: MQTT 3.1.1/5.0 long-connection gateway
 Tether keeps millions of devices and browsers connected over MQTT (TCP,
 TLS, WebSocket, SSE and long-polling) and pushes to them in real time;
 backends push and consume through Kafka and HTTP. Thread-per-core on
 io_uring; sessions in Redis resume on any node.
CONTROL
echo /etc/tether/tether.toml >"$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "systemd/debian/$script" "$root/DEBIAN/$script"
done

mkdir -p "$out"
deb="$out/tether_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
