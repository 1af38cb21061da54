#!/usr/bin/env bash
# scripts/symbol-order.sh: writes scripts/symbol-order.txt, the functions a node runs, which the
# release link lays out first (build.rs says why). Runs a provider and a consumer from
# target/release/ambassador under callgrind on loopback, sends a PING, requests at 1 and 50
# clients and bulk both ways through them, lets them idle, and keeps every function of the
# binary that ran. Rerun after a dependency update (the symbol names change with the crates'
# versions), then rebuild: `scripts/symbol-order.sh && cargo build --release`. It builds the
# binary it profiles with `cargo build --release` (AMBASSADOR_BIN=path profiles another).
#
# Needs valgrind, redis-server, redis-benchmark, redis-cli, iperf3, python3 (apt-get install
# valgrind redis-server redis-tools iperf3). Takes about a minute. Exit status 2 on a missing tool.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
AMB=${AMBASSADOR_BIN:-$ROOT/target/release/ambassador}
OUT=$ROOT/scripts/symbol-order.txt
for t in valgrind redis-server redis-benchmark redis-cli iperf3 python3; do
  command -v "$t" >/dev/null || { echo "symbol-order.sh: $t is missing (apt-get install valgrind redis-server redis-tools iperf3)" >&2; exit 2; }
done
if [ -z "${AMBASSADOR_BIN:-}" ]; then
  # `cargo build`, not `cargo test`: a test build unifies the dev-dependencies' features into the
  # dependencies, which changes every crate's symbol hashes, so its names would not match.
  (cd "$ROOT" && cargo build --release --quiet)
fi
[ -x "$AMB" ] || { echo "symbol-order.sh: no $AMB" >&2; exit 2; }
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export XDG_CONFIG_HOME=$WORK/xdg # a throw-away mesh key
free_ports() { python3 -c '
import socket,sys
ss=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"; }
read -r RP IP QP CR CB < <(free_ports 5)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 & PIDS+=($!)
iperf3 -s -B 127.0.0.1 -p "$IP" >"$WORK/iperf.log" 2>&1 & PIDS+=($!)
VG=(valgrind --tool=callgrind --demangle=no --dump-instr=no "--callgrind-out-file=$WORK/cg.%p")
"${VG[@]}" "$AMB" announce "redis:6379=127.0.0.1:$RP" "bench:5201=127.0.0.1:$IP" --interface lo \
  --bind "127.0.0.1:$QP" >"$WORK/announce.log" 2>&1 & PIDS+=($!)
"${VG[@]}" "$AMB" connect "redis:$CR" --interface lo --backend "127.0.0.1:$QP" >"$WORK/connect.log" 2>&1 & PIDS+=($!)
"${VG[@]}" "$AMB" connect "bench:$CB" --interface lo --backend "127.0.0.1:$QP" >"$WORK/connect2.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 120); do
  redis-cli -p "$CR" ping 2>/dev/null | grep -q PONG && break
  sleep 0.5
done
redis-cli -p "$CR" ping | grep -q PONG || { echo "symbol-order.sh: the pair did not come up" >&2; tail -n 5 "$WORK"/*.log >&2; exit 1; }
redis-benchmark -p "$CR" -c 1 -n 300 -t get,set -q >/dev/null
redis-benchmark -p "$CR" -c 50 -n 2000 -t get,set -q >/dev/null
iperf3 -c 127.0.0.1 -p "$CB" -t 2 >/dev/null
iperf3 -c 127.0.0.1 -p "$CB" -t 2 -R >/dev/null
iperf3 -c 127.0.0.1 -p "$CB" -t 2 -P 4 >/dev/null
sleep 5 # idle: keep-alives, timers
for p in "${PIDS[@]:2}"; do kill -INT "$p"; done
for p in "${PIDS[@]:2}"; do wait "$p" 2>/dev/null || true; done
python3 - "$(readlink -f "$AMB")" "$WORK"/cg.* >"$OUT.new" <<'PY'
import re, sys
# Every function of the binary (argv[1]) named in the callgrind outputs, as fn= (ran) or cfn=
# (was called); name compression: "(id) name" defines an id, "(id)" refers to it.
binary, names = sys.argv[1], set()
for path in sys.argv[2:]:
    obs, fns, ob, cob = {}, {}, None, None
    for line in open(path, errors="replace"):
        key, sep, val = line.rstrip("\n").partition("=")
        if not sep or key not in ("ob", "cob", "fn", "cfn"):
            continue
        m = re.match(r"\((\d+)\)(?: (.*))?$", val)
        ident, name = (m.group(1), m.group(2)) if m else (None, val)
        table = obs if key in ("ob", "cob") else fns
        if ident is not None and name is not None:
            table[ident] = name
        resolved = table.get(ident, name) if ident is not None else name
        if key == "ob":
            ob, cob = resolved, None
        elif key == "cob":
            cob = resolved
        else:
            if (ob if key == "fn" else (cob or ob)) == binary and resolved and not resolved.startswith(("0x", "(")):
                names.add(resolved)
            if key == "cfn":
                cob = None
print("\n".join(sorted(names)))
PY
mv "$OUT.new" "$OUT"
echo "symbol-order.sh: $(wc -l <"$OUT") functions in $OUT"
