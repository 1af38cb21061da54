#!/usr/bin/env bash
# Installs what ambassador's build, tests and benchmarks use on a Debian machine.
# Idempotent; uses sudo when not run as root.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PKGS=(
  build-essential pkg-config       # cc for ring
  protobuf-compiler libprotobuf-dev # protoc and its well-known types: etcd-client compiles etcd's protos
  iproute2 nftables tcpdump         # network namespaces, loss injection, captures
  redis-server redis-tools          # real Redis peers (redis-cli, redis-benchmark)
  socat stunnel4 iperf3             # classic proxies and load tools (tests, benchmarks)
  haproxy ethtool                   # the LAN benchmark's TLS pair; offloads off for its lossy runs
  avahi-daemon avahi-utils dnsmasq-base
  procps psmisc ca-certificates
  python3 dbus faketime             # test clients, private buses for avahi, expired-clock peers
  chromium curl                     # headless browser for the admin page test; scraping /metrics
  nginx                             # a real HTTP application behind the HTTP front (tests, benchmarks)
  docker.io docker-compose busybox-static  # Docker tests: a private dockerd, images from host binaries
  etcd-server etcd-client           # the etcd registry tests: a private etcd on loopback, etcdctl
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  # No package's service may start while installing (Debian's policy-rc.d convention): docker.io's
  # would set the FORWARD policy to DROP and load br_netfilter before it could be stopped.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy" && made_policy=1
  fi
  status=0
  $SUDO apt-get update -qq || status=$?
  if [ "$status" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
  fi
  if [ "$made_policy" = 1 ]; then $SUDO rm -f "$policy"; fi
  [ "$status" = 0 ] || { echo "setup: apt-get install failed ($status)" >&2; exit "$status"; }
fi
# The distribution's redis-server and haproxy services are not used: tests and benchmarks start
# their own servers.
$SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
$SUDO systemctl disable --now haproxy >/dev/null 2>&1 || true
# Nor etcd's: the registry tests start a private etcd on free loopback ports with its own data dir.
$SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
# Nor nginx's: the HTTP tests run their own nginx, with a config of their own, in a namespace.
if [[ " ${missing[*]} " == *" nginx "* ]]; then
  $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
fi
# Nor its Docker service, which would set the FORWARD policy to DROP and load br_netfilter (the
# netns tests' bridges then drop traffic): the Docker tests start a private dockerd that leaves
# the firewall alone. Only when this script installed docker.io: an existing Docker is yours.
# (If the package's service already ran, `iptables -P FORWARD ACCEPT` undoes its policy.)
if [[ " ${missing[*]} " == *" docker.io "* ]]; then
  $SUDO systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust 1.85 or newer (https://rustup.rs), then run this again" >&2
  exit 1
fi
echo "setup done: $(cargo --version)"
