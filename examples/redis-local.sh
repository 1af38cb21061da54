#!/usr/bin/env bash
# Redis over the mesh on one machine, on loopback only: a Redis on port 12345 is announced as
# "redis" (advertised port 6379), and a consumer listens on 16379. Needs redis-server and
# redis-cli. Run from the repository: examples/redis-local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/ambassador
WORK=$(mktemp -d)
export XDG_CONFIG_HOME="$WORK"    # a throw-away mesh key for this demo
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

redis-server --port 12345 --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" & pids+=($!)
$BIN announce redis:6379=127.0.0.1:12345 --interface lo --node provider 2>"$WORK/announce.log" & pids+=($!)
$BIN connect redis:16379 --interface lo --node consumer 2>"$WORK/connect.log" & pids+=($!)

for _ in $(seq 100); do
  [ "$(redis-cli -p 16379 PING 2>/dev/null)" = "PONG" ] && break
  sleep 0.1
done
redis-cli -p 16379 SET greeting "hello through the mesh"
redis-cli -p 16379 GET greeting
$BIN ls --interface lo
