#!/usr/bin/env bash
# benches/mesh.sh: the ambassador pair against direct TCP, a socat pair and a stunnel (mutual TLS)
# pair, side by side on loopback, in one run (issue 4); with --lan, across a 1500-byte-MTU link
# between two network namespaces, with a haproxy pair too (issue 16).
#
#   benches/mesh.sh            full run (about 5 minutes on 2 cores), writes benches/results.md
#   benches/mesh.sh --quick    a second or so per measurement, 500 held connections; does not write
#                              the results file unless --write is given (CI smoke use)
#   benches/mesh.sh --lan      LAN mode (root), writes benches/results-lan.md (see below)
#
# Options:
#   --quick            short measurements (smoke test)
#   --lan              LAN mode: two network namespaces on a bridge at MTU 1500 (needs root)
#   --loss PCT         LAN mode: random loss (whole percent) on B's link input in each round's
#                      lossy runs (default 1; 0 = no lossy runs)
#   --write/--no-write write the results file or not (default: write, except with --quick)
#   --out FILE         results file (default benches/results.md; LAN mode benches/results-lan.md)
#   --mdns             ambassador discovery through real mDNS (on lo; LAN mode: on the link)
#                      instead of --backend (static)
#   --perf             also profile the ambassador pair (perf record) during single-stream bulk
#                      runs both ways and an 8-stream upload, and add the top symbols to the results
#   --repeat N         rounds over all paths (default 3; quick 1): each figure is the median of
#                      N runs, taken in interleaved rounds with a fresh proxy pair each time
#   --hold N           idle connections to hold through the ambassador pair (default 10000; quick 500)
#   --bulk-only        bulk runs only (and the lossy ones in LAN mode): no redis, connection-rate or
#                      held-connection measurements; for many rounds of the CPU-per-GB figure
#   --paths "a b"      subset of: direct socat stunnel ambassador (default: all four); LAN mode:
#                      of direct socat stunnel haproxy ambassador (default: all but socat)
#
# Environment: AMBASSADOR_BIN=path/to/ambassador (default: cargo build --release, then
# target/release/ambassador).
#
# Exit status: 0 when every measurement produced a figure (targets met or not), 1 when one failed,
# 2 on bad usage, 77 when tools are missing and cannot be installed (not root), or the LAN mode
# runs without root or cannot make namespaces: "SKIPPED: ...".
#
# What each path is (client -> ... -> target; all on 127.0.0.1, ports picked free at run time):
#   direct      client -> target
#   socat       client -> socat A -> socat B -> target (plaintext, fork per connection, nodelay)
#   stunnel     client -> stunnel client -> stunnel server -> target (TLS 1.3, mutual: both sides
#               verify the peer's chain to a throw-away CA, ECDSA P-256 certificates)
#   ambassador  client -> ambassador connect -> QUIC -> ambassador announce -> target
# Targets: redis-server (redis-benchmark, connection rate, idle connections) and iperf3 -s (bulk).
# Every proxy pair is started fresh for each group of measurements, so that peak RSS (VmHWM) and
# CPU time belong to that group only.
#
# LAN mode (--lan): namespaces A and B, each with one veth (eth0, MTU 1500; A 10.78.0.1, B
# 10.78.0.2) plugged into a bridge in a third namespace; nothing is made in the root namespace.
# Both hosts share the machine's cores. The clients and proxy A run in A (proxy A listens on A's
# 127.0.0.1); proxy B and the targets run in B, the targets on B's 127.0.0.1, and on B's link
# address too for the direct path, which goes client -> link -> target. The paths:
#   direct      client in A -> target in B over the link
#   stunnel     as above, the two stunnels on either side of the link
#   haproxy     client -> haproxy A -> TLS over the link -> haproxy B -> target: Debian's haproxy
#               with its defaults (no tune.*, a thread per core), mode tcp, TLS 1.3, verify required
#               on both sides against the throw-away CA (ECDSA P-256), maxconn within the fd limit
#   ambassador  connect in A -> QUIC over the link -> announce in B (static --backend, or --mdns on
#               the link)
# After each round's bulk runs, a lossy round: nftables in B's namespace drops PCT % of the packets
# entering B from the link (numgen random), and each path runs bulk, 1 stream each way. During it,
# A's veth segments in software (ethtool: no TSO/GSO), so the loss falls on 1500-byte packets, not
# on 64 KB offload batches. The report gives the ambassador's ratios to each path and haproxy's to
# direct TCP, and the targets of issue 16 against the haproxy pair as PASS/FAIL. The namespaces
# (with their links and nftables tables) and every process in them go at the end, also on failure
# or Ctrl-C.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
H="$HERE/helpers.py"

QUICK=0
WRITE=""
OUT="$HERE/results.md"
DISCOVERY=static
PERF=0
REPEAT=""
HOLD=""
SEL_PATHS=""
LAN=0
LOSS=1
OUT_SET=0
BULK_ONLY=0

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --write) WRITE=1 ;;
    --no-write) WRITE=0 ;;
    --out) OUT=${2:?--out needs a file}; OUT_SET=1; shift ;;
    --lan) LAN=1 ;;
    --loss) LOSS=${2:?--loss needs a percentage}; shift ;;
    --mdns) DISCOVERY=mdns ;;
    --perf) PERF=1 ;;
    --repeat) REPEAT=${2:?--repeat needs a number}; shift ;;
    --hold) HOLD=${2:?--hold needs a number}; shift ;;
    --paths) SEL_PATHS=${2:?--paths needs a list}; shift ;;
    --bulk-only) BULK_ONLY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "mesh.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$LAN" = 1 ]; then
  SEL_PATHS=${SEL_PATHS:-direct stunnel haproxy ambassador}
  [ "$OUT_SET" = 1 ] || OUT="$HERE/results-lan.md"
  case "$LOSS" in ''|*[!0-9]*) echo "mesh.sh: --loss takes a whole percentage (0-99)" >&2; exit 2 ;; esac
  [ "$LOSS" -le 99 ] || { echo "mesh.sh: --loss takes a whole percentage (0-99)" >&2; exit 2; }
else
  SEL_PATHS=${SEL_PATHS:-direct socat stunnel ambassador}
fi
for p in $SEL_PATHS; do
  case $p in
    direct|socat|stunnel|ambassador) ;;
    haproxy) [ "$LAN" = 1 ] || { echo "mesh.sh: the haproxy path is in the LAN mode only (--lan)" >&2; exit 2; } ;;
    *) echo "mesh.sh: unknown path $p" >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  IPERF_T=1; N1=2000; N50=10000; CONN_T=1; CONN_MAX=5000; SETTLE=0.3
  HOLD=${HOLD:-500}; REPEAT=${REPEAT:-1}; WRITE=${WRITE:-0}
else
  IPERF_T=2; N1=10000; N50=50000; CONN_T=2; CONN_MAX=100000; SETTLE=1
  HOLD=${HOLD:-10000}; REPEAT=${REPEAT:-3}; WRITE=${WRITE:-1}
fi
case "$REPEAT$HOLD" in *[!0-9]*) echo "mesh.sh: --repeat and --hold take numbers" >&2; exit 2 ;; esac
[ "$REPEAT" -ge 1 ] || REPEAT=1

say() { printf '[mesh.sh %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ------------------------------------------------------------------ tools
if [ "$LAN" = 1 ] && [ "$(id -u)" != 0 ]; then
  echo "SKIPPED: the LAN mode needs root (network namespaces, veths, nftables); run it as root"
  exit 77
fi
declare -A PKG=([iperf3]=iperf3 [socat]=socat [stunnel4]=stunnel4 [redis-server]=redis-server
  [redis-benchmark]=redis-tools [redis-cli]=redis-tools [openssl]=openssl [python3]=python3
  [cc]=gcc [timeout]=coreutils [awk]=gawk)
[ "$PERF" = 1 ] && PKG[perf]=linux-perf
if [ "$LAN" = 1 ]; then PKG[haproxy]=haproxy; PKG[ip]=iproute2; PKG[nft]=nftables; PKG[ethtool]=ethtool; fi
missing_pkgs() {
  local c out=()
  for c in "${!PKG[@]}"; do
    if [ "$c" = stunnel4 ]; then command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || out+=("${PKG[$c]}")
    else command -v "$c" >/dev/null || out+=("${PKG[$c]}"); fi
  done
  printf '%s\n' "${out[@]}" | sort -u | grep -v '^$'
}
MISSING=$(missing_pkgs | xargs)
if [ -n "${MISSING// /}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing: $MISSING"
    # shellcheck disable=SC2086
    { DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends $MISSING ||
      { timeout 300 apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends $MISSING; }; } >/dev/null 2>&1
    MISSING=$(missing_pkgs | xargs)
  fi
  if [ -n "${MISSING// /}" ]; then
    echo "SKIPPED: benchmark tools missing: $MISSING (install them as root: apt-get install $MISSING, or run scripts/setup-debian.sh)"
    exit 77
  fi
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel)
# the interpreter itself, not a version-manager shim (a shim costs ~0.3 s per call)
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null)
[ -x "$PY" ] || PY=$(command -v python3)

# ------------------------------------------------------------------ work dir, clean-up
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ambassador-bench.XXXXXX")
PIDS=()
kill_tree() { # PID: TERM the process and its children, wait (bounded), then KILL
  local pid=$1 kids i
  kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null)
  kill -TERM "$pid" $kids 2>/dev/null
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" $kids 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
LAN_NS=() # LAN mode: the namespaces made so far (hosts first, the switch last)
cleanup() {
  trap - EXIT INT TERM
  exec 5>&- 2>/dev/null
  local p ns
  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && kill_tree "$p"; done
  # Whatever still runs in our namespaces is ours too (e.g. a child that outlived its parent);
  # deleting a namespace takes its veth ends and nftables tables along.
  for ns in "${LAN_NS[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "mesh.sh: interrupted" >&2; exit 130' INT TERM

spawn() { # LOG CMD...: start in the background, remember the pid in LAST_PID
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# Open files: 10,000 held connections need that many descriptors in the client, in each
# ambassador and in redis-server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
HOLD_NOTE=""
if [ "$NOFILE" != unlimited ] && [ $((HOLD + 500)) -gt "$NOFILE" ]; then
  HOLD=$((NOFILE - 500)); HOLD_NOTE="open-file limit $NOFILE: held count lowered to $HOLD"
fi

# ------------------------------------------------------------------ LAN mode: the network
# IN_A / IN_B prefix a command to run it on host A / B (empty on loopback); NET_A / NET_B are the
# /proc/.../net directories of the two sides; LINK_B is where the B side listens.
IN_A=(); IN_B=()
NET_A=/proc/net; NET_B=/proc/net
LINK_A=127.0.0.1; LINK_B=127.0.0.1
IF_A=lo; IF_B=lo
if [ "$LAN" = 1 ]; then
  LAN_ID="ambbench-$$"
  NS_SW="$LAN_ID-sw"; NS_A="$LAN_ID-a"; NS_B="$LAN_ID-b"
  LINK_A=10.78.0.1; LINK_B=10.78.0.2; IF_A=eth0; IF_B=eth0
  IN_A=(ip netns exec "$NS_A"); IN_B=(ip netns exec "$NS_B")
  # Namespaces left by a run that was killed outright, with nothing left running in them.
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^ambbench-[0-9]*-'); do
    pid=${ns#ambbench-}; pid=${pid%%-*}
    [ -d "/proc/$pid" ] || [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] || ip netns del "$ns" 2>/dev/null
  done
  lan_up() { # the switch namespace with bridge br0, hosts A and B each with eth0 plugged into it
    local h ns ip
    ip netns add "$NS_SW" && LAN_NS+=("$NS_SW") &&
      ip -n "$NS_SW" link set lo up &&
      ip -n "$NS_SW" link add br0 type bridge &&
      ip -n "$NS_SW" link set br0 up || return 1
    for h in a b; do
      ns="$LAN_ID-$h"; ip=$LINK_A; [ $h = b ] && ip=$LINK_B
      ip netns add "$ns" && LAN_NS=("$ns" "${LAN_NS[@]}") &&
        ip -n "$ns" link set lo up &&
        ip -n "$NS_SW" link add "p$h" mtu 1500 type veth peer name eth0 mtu 1500 netns "$ns" &&
        ip -n "$NS_SW" link set "p$h" master br0 up &&
        ip -n "$ns" addr add "$ip/24" dev eth0 &&
        ip -n "$ns" link set eth0 up &&
        ip -n "$ns" route add 224.0.0.0/4 dev eth0 || return 1
      # the connection-rate runs open tens of thousands of connections across the link
      ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_tw_reuse=1 >/dev/null || return 1
    done
  }
  if ! lan_up >"$WORK/lan.log" 2>&1; then
    cat "$WORK/lan.log" >&2
    echo "SKIPPED: cannot set up the network namespaces (ip netns, veth, bridge) for the LAN mode"
    exit 77
  fi
  # a process in each host namespace, whose /proc/PID/net shows that namespace's sockets
  spawn /dev/null "${IN_A[@]}" sleep infinity; NET_A=/proc/$LAST_PID/net
  spawn /dev/null "${IN_B[@]}" sleep infinity; NET_B=/proc/$LAST_PID/net
fi
# The ambassador pair's congestion control, from its "node up" log line (--congestion auto follows
# the host's TCP: loss-tolerant CUBIC where that is BBR, CUBIC otherwise).
amb_congestion() {
  local cc
  cc=$(grep -ho 'congestion=[a-z-]*' "$WORK"/pair*-ambassador/connect.log 2>/dev/null | head -n 1)
  case "${cc#congestion=}" in
    loss-tolerant) echo "loss-tolerant CUBIC (ambassador --congestion auto on a BBR host: loss under 2 % is not congestion)" ;;
    cubic) echo "CUBIC (quinn)" ;;
    *) echo "not recorded" ;;
  esac
}
LOSS_TABLE=ambbench_loss
loss_on() { # B drops LOSS % of what enters it from the link; A's veth sends 1500-byte packets
  "${IN_A[@]}" ethtool -K "$IF_A" tso off gso off tx-udp-segmentation off >/dev/null 2>&1
  "${IN_B[@]}" nft -f - <<EOF_NFT
table inet $LOSS_TABLE {
  chain input {
    type filter hook input priority -300; policy accept;
    iifname "$IF_B" counter
    iifname "$IF_B" numgen random mod 100 < $LOSS counter drop
  }
}
EOF_NFT
}
loss_off() {
  "${IN_B[@]}" nft delete table inet "$LOSS_TABLE" 2>/dev/null
  "${IN_A[@]}" ethtool -K "$IF_A" tso on gso on tx-udp-segmentation on >/dev/null 2>&1
  return 0
}
loss_counts() { # "packets_seen packets_dropped bytes_seen" of the loss rule so far
  "${IN_B[@]}" nft list table inet "$LOSS_TABLE" 2>/dev/null | awk '
    /counter packets/ { for (i = 1; i < NF; i++) if ($i == "packets") { p = $(i+1); b = $(i+3) }
                        if ($0 ~ /drop/) d = p; else { s = p; sb = b } }
    END { printf "%d %d %d\n", s, d, sb }'
}

# ------------------------------------------------------------------ the ambassador binary
AMB=${AMBASSADOR_BIN:-}
if [ -z "$AMB" ]; then
  say "building ambassador (cargo build --release)"
  (cd "$ROOT" && timeout 1200 cargo build --release --quiet) || { echo "mesh.sh: cargo build failed" >&2; exit 1; }
  AMB="$ROOT/target/release/ambassador"
fi
[ -x "$AMB" ] || { echo "mesh.sh: no ambassador binary at $AMB" >&2; exit 1; }
# Which build this is: AMBASSADOR_BIN_DESC, else the git state of the tree the binary sits in.
AMB_DESC=${AMBASSADOR_BIN_DESC:-}
if [ -z "$AMB_DESC" ]; then
  AMB_DESC="commit $(git -C "$(dirname "$AMB")" describe --always --dirty 2>/dev/null || echo unknown)"
fi
AMB_DESC="$("$AMB" --version 2>/dev/null), $AMB_DESC"
# A private copy: a rebuild of target/ during the run must not change what later pairs run.
cp "$AMB" "$WORK/ambassador" && AMB="$WORK/ambassador"
export XDG_CONFIG_HOME="$WORK/xdg" # a throw-away mesh key
mkdir -p "$XDG_CONFIG_HOME"

cc -O2 -pthread -o "$WORK/connrate" "$HERE/connrate.c" || { echo "mesh.sh: cannot compile connrate.c" >&2; exit 1; }

# ------------------------------------------------------------------ certificates for stunnel
mkcerts() {
  local d="$WORK/pki" n
  mkdir -p "$d"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/ca.key" &&
  openssl req -x509 -new -key "$d/ca.key" -subj /CN=bench-ca -days 2 -out "$d/ca.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign || return 1
  for n in server client; do
    printf 'subjectAltName=DNS:bench-%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$n" >"$d/$n.ext"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/$n.key" &&
    openssl req -new -key "$d/$n.key" -subj "/CN=bench-$n" -out "$d/$n.csr" &&
    openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
      -extfile "$d/$n.ext" -out "$d/$n.crt" || return 1
  done
}
mkcerts >"$WORK/pki.log" 2>&1 || { cat "$WORK/pki.log" >&2; echo "mesh.sh: openssl failed" >&2; exit 1; }

# ------------------------------------------------------------------ helpers
RES="$WORK/results.tsv"; : >"$RES"
ERRORS=0
declare -A PATH_ERRORS=()
put() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RES"; }
fail() { # PATH MESSAGE
  say "ERROR $1: $2"
  put "$1" error "$2"
  ERRORS=$((ERRORS + 1)); PATH_ERRORS[$1]=$(( ${PATH_ERRORS[$1]:-0} + 1 ))
}
ports() { "$PY" "$H" ports "$1"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
mib() { awk -v k="$1" 'BEGIN{printf "%.2f", k/1024}'; }
status_kib() { awk -v f="$2:" '$1==f{print $2; exit}' /proc/"$1"/status 2>/dev/null || echo 0; }
cpu_ticks() { # utime+stime of the process and its reaped children
  local s
  s=$(cat /proc/"$1"/stat 2>/dev/null) || { echo 0; return; }
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $(( ${12} + ${13} + ${14} + ${15} ))
}
ctx_switches() { # voluntary + involuntary context switches of all threads of the process
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(voluntary|nonvoluntary)_ctxt_switches:/{n+=$2} END{print n+0}'
}
nchildren() { cat /proc/"$1"/task/*/children 2>/dev/null | wc -w; }
TCK=$(getconf CLK_TCK)
# Ratios of counters, formatted: CPU seconds per GB from clock ticks and bytes ([FMT], default
# %.3f), CPU µs per request from ticks and a request count, PART as a percentage of WHOLE.
per_gb() { awk -v t="$1" -v k="$TCK" -v b="$2" -v f="${3:-%.3f}" 'BEGIN{printf f, t/k/(b/1e9)}'; }
per_req() { awk -v t="$1" -v k="$TCK" -v n="$2" 'BEGIN{printf "%.2f", t/k/n*1e6}'; }
pct() { awk -v t="$1" -v a="$2" 'BEGIN{printf "%.1f", 100*t/a}'; }
machine_ticks() { # the whole machine (every namespace shares one kernel): "busy steal total" ticks
  # /proc/stat's cpu line: user nice system idle iowait irq softirq steal ...; busy is all but
  # idle, iowait and steal (steal: time the hypervisor gave another guest)
  local _ u n sy id io irq sirq st
  read -r _ u n sy id io irq sirq st _ </proc/stat
  echo "$((u + n + sy + irq + sirq)) $st $((u + n + sy + id + io + irq + sirq + st))"
}

listening() { # PORT [SIDE [IP]]: a TCP listener on it (checked in /proc, without connecting), on
  # side a (default) or b (the same on loopback), on IP or on any address
  local hex ip="" net=$NET_A a b c d
  hex=$(printf '%04X' "$1")
  [ "${2:-a}" = b ] && net=$NET_B
  if [ -n "${3:-}" ]; then IFS=. read -r a b c d <<<"$3"; ip=$(printf '%02X%02X%02X%02X' "$d" "$c" "$b" "$a"); fi
  grep -q "$ip:$hex 00000000:0000 0A" "$net/tcp" 2>/dev/null
}
wait_listening() { # PORT SECONDS [SIDE [IP]]
  local end=$((SECONDS + $2))
  while [ $SECONDS -lt $end ]; do listening "$1" "${3:-a}" "${4:-}" && return 0; sleep 0.05; done
  return 1
}
redis_ready() { # PORT SECONDS [HOST [SIDE]]: PONG through the path, from side a (the clients') or b
  local end=$((SECONDS + $2)) host=${3:-127.0.0.1} in=("${IN_A[@]}")
  [ "${4:-a}" = b ] && in=("${IN_B[@]}")
  while [ $SECONDS -lt $end ]; do
    [ "$(timeout 3 "${in[@]}" redis-cli -h "$host" -p "$1" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  return 1
}
iperf_ready() { # PORT SECONDS [HOST]: a small transfer through the path (also warms it up)
  local end=$((SECONDS + $2))
  while [ $SECONDS -lt $end ]; do
    timeout 15 "${IN_A[@]}" iperf3 -c "${3:-127.0.0.1}" -p "$1" -n 8M >/dev/null 2>&1 && return 0
    sleep 0.3
  done
  return 1
}

# ------------------------------------------------------------------ targets
# On loopback, on 127.0.0.1; in LAN mode on B, on its 127.0.0.1 (for proxy B) and on its link
# address (for the direct path): redis-server on both, iperf3 -s once on each (it serves one test
# at a time).
read -r REDIS_PORT IPERF_PORT < <(ports 2)
REDIS_BIND=(127.0.0.1); [ "$LAN" = 1 ] && REDIS_BIND+=("$LINK_B")
spawn "$WORK/redis.log" "${IN_B[@]}" redis-server --port "$REDIS_PORT" --bind "${REDIS_BIND[@]}" --save '' --appendonly no \
  --protected-mode no --maxclients $((HOLD + 1000)) --daemonize no
REDIS_PID=$LAST_PID
spawn "$WORK/iperf3.log" "${IN_B[@]}" iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
IPERF_PID=$LAST_PID
redis_ready "$REDIS_PORT" 10 127.0.0.1 b || { cat "$WORK/redis.log" >&2; echo "mesh.sh: redis-server did not start" >&2; exit 1; }
wait_listening "$IPERF_PORT" 10 b 127.0.0.1 || { cat "$WORK/iperf3.log" >&2; echo "mesh.sh: iperf3 -s did not start" >&2; exit 1; }
if [ "$LAN" = 1 ]; then
  spawn "$WORK/iperf3-link.log" "${IN_B[@]}" iperf3 -s -B "$LINK_B" -p "$IPERF_PORT"
  wait_listening "$IPERF_PORT" 10 b "$LINK_B" || { cat "$WORK/iperf3-link.log" >&2; echo "mesh.sh: iperf3 -s on B's link address did not start" >&2; exit 1; }
  redis_ready "$REDIS_PORT" 10 "$LINK_B" a || { echo "mesh.sh: host A cannot reach redis-server on host B over the bridge" >&2; exit 1; }
fi

# ------------------------------------------------------------------ proxy pairs
PAIR_N=0
PAIR_PORT=""
PAIR_PIDS=()
RUN_ID=$(printf '%x' $((RANDOM * 32768 + RANDOM)))

stunnel_conf() { # FILE ROLE LINE...: the stunnel config of one end (ROLE server or client, its
  # certificate) of the bench pair: mutual TLS 1.3 under the bench CA, LINEs added to [bench]
  local f=$1 role=$2 k="$WORK/pki"
  shift 2
  {
    printf '%s\n' "foreground = yes" "pid =" "debug = 3" "syslog = no" "[bench]" "$@"
    printf '%s\n' "cert = $k/$role.crt" "key = $k/$role.key" "CAfile = $k/ca.crt" \
      "verifyChain = yes" "sslVersionMin = TLSv1.3"
  } >"$f"
}

# haproxy's maxconn: each proxied connection takes two descriptors, within the open-file limit
HAPROXY_MAXCONN=10000
[ "$NOFILE" != unlimited ] && [ $(( (NOFILE - 200) / 2 )) -lt $HAPROXY_MAXCONN ] && HAPROXY_MAXCONN=$(( (NOFILE - 200) / 2 ))
haproxy_conf() { # FILE SECTION...: a haproxy config with Debian's defaults for timeouts, mode tcp,
  # TLS 1.3 at least, and the given frontend/backend sections
  local f=$1; shift
  {
    printf '%s\n' "global" "    maxconn $HAPROXY_MAXCONN" \
      "    ssl-default-bind-options ssl-min-ver TLSv1.3" "    ssl-default-server-options ssl-min-ver TLSv1.3" \
      "defaults" "    mode tcp" "    maxconn $HAPROXY_MAXCONN" "    timeout connect 5000" \
      "    timeout client 50000" "    timeout server 50000"
    printf '%s\n' "$@"
  } >"$f"
}

# Where the B side listens (B's link address in LAN mode) and how the clients reach each path.
start_pair() { # PATH TARGET_PORT: sets PAIR_HOST and PAIR_PORT (where clients connect) and
  # PAIR_PIDS (client side, server side)
  local path=$1 tport=$2 pa pb d n k="$WORK/pki"
  PAIR_N=$((PAIR_N + 1)); n=$PAIR_N
  PAIR_PIDS=(); PAIR_PORT=""; PAIR_HOST=127.0.0.1
  d="$WORK/pair$n-$path"; mkdir -p "$d"
  case $path in
    direct)
      PAIR_HOST=$LINK_B; PAIR_PORT=$tport; return 0 ;;
    socat)
      read -r pa pb < <(ports 2)
      spawn "$d/b.log" "${IN_B[@]}" socat "TCP-LISTEN:$pb,bind=$LINK_B,reuseaddr,fork,backlog=4096,nodelay" "TCP:127.0.0.1:$tport,nodelay"
      local sb=$LAST_PID
      spawn "$d/a.log" "${IN_A[@]}" socat "TCP-LISTEN:$pa,bind=127.0.0.1,reuseaddr,fork,backlog=4096,nodelay" "TCP:$LINK_B:$pb,nodelay"
      PAIR_PIDS=("$LAST_PID" "$sb") ;;
    stunnel)
      read -r pa pb < <(ports 2)
      stunnel_conf "$d/server.conf" server "accept = $LINK_B:$pb" "connect = 127.0.0.1:$tport" \
        "requireCert = yes"
      stunnel_conf "$d/client.conf" client "client = yes" "accept = 127.0.0.1:$pa" \
        "connect = $LINK_B:$pb" "checkHost = bench-server"
      spawn "$d/server.log" "${IN_B[@]}" "$STUNNEL" "$d/server.conf"
      local sb=$LAST_PID
      spawn "$d/client.log" "${IN_A[@]}" "$STUNNEL" "$d/client.conf"
      PAIR_PIDS=("$LAST_PID" "$sb") ;;
    haproxy)
      read -r pa pb < <(ports 2)
      [ -f "$k/server.pem" ] || { cat "$k/server.crt" "$k/server.key" >"$k/server.pem" && cat "$k/client.crt" "$k/client.key" >"$k/client.pem"; }
      haproxy_conf "$d/server.cfg" "frontend tls_in" \
        "    bind $LINK_B:$pb ssl crt $k/server.pem ca-file $k/ca.crt verify required" \
        "    default_backend target" "backend target" "    server target 127.0.0.1:$tport"
      haproxy_conf "$d/client.cfg" "frontend plain_in" "    bind 127.0.0.1:$pa" "    default_backend tls_out" \
        "backend tls_out" \
        "    server b $LINK_B:$pb ssl crt $k/client.pem ca-file $k/ca.crt verify required verifyhost bench-server sni str(bench-server)"
      # -db: in the foreground, no daemon, no master process
      spawn "$d/server.log" "${IN_B[@]}" haproxy -db -f "$d/server.cfg"
      local sb=$LAST_PID
      spawn "$d/client.log" "${IN_A[@]}" haproxy -db -f "$d/client.cfg"
      PAIR_PIDS=("$LAST_PID" "$sb") ;;
    ambassador)
      local qp svc=bench
      read -r pa qp < <(ports 2)
      [ "$DISCOVERY" = mdns ] && svc="b$RUN_ID-$n"
      spawn "$d/announce.log" "${IN_B[@]}" "$AMB" announce "$svc:7000=127.0.0.1:$tport" --interface "$IF_B" \
        --node "bprov-$RUN_ID-$n" --bind "$LINK_B:$qp"
      local sb=$LAST_PID
      if [ "$DISCOVERY" = mdns ]; then
        spawn "$d/connect.log" "${IN_A[@]}" "$AMB" connect "$svc:$pa" --interface "$IF_A" --node "bcons-$RUN_ID-$n" \
          --bind "$LINK_A:0" --wait 10s
      else
        spawn "$d/connect.log" "${IN_A[@]}" "$AMB" connect "$svc:$pa" --interface "$IF_A" --node "bcons-$RUN_ID-$n" \
          --bind "$LINK_A:0" --backend "$LINK_B:$qp"
      fi
      PAIR_PIDS=("$LAST_PID" "$sb") ;;
  esac
  PAIR_PORT=$pa
  PAIR_DIR=$d
  if ! wait_listening "$PAIR_PORT" 15 a; then
    tail -n 5 "$d"/*.log >&2
    return 1
  fi
  [ -z "${pb:-}" ] || wait_listening "$pb" 5 b
}
stop_pair() {
  local p
  for p in "${PAIR_PIDS[@]}"; do kill_tree "$p"; done
  PAIR_PIDS=()
}
pair_alive() { local p; for p in "${PAIR_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || return 1; done; }
SIDES=(c s)
record_proc_names() {
  case $1 in
    socat) put socat proc_c "socat A (client side)"; put socat proc_s "socat B (server side)" ;;
    stunnel) put stunnel proc_c "stunnel client"; put stunnel proc_s "stunnel server" ;;
    haproxy) put haproxy proc_c "haproxy A (client side)"; put haproxy proc_s "haproxy B (server side)" ;;
    ambassador) put ambassador proc_c "ambassador connect"; put ambassador proc_s "ambassador announce" ;;
  esac
}
# peak RSS per side: VmHWM, or for a forking proxy (socat) the sampled peak of the process tree
PEAK_PID=""
peak_start() {
  PEAK_PID=""
  [ "$1" = socat ] || return 0
  "$PY" "$H" peak "$WORK/peak.out" "${PAIR_PIDS[@]}" &
  PEAK_PID=$!; PIDS+=("$PEAK_PID")
}
peak_put() { # PATH KEY: KEY_c, KEY_s (MiB), KEY (larger)
  local path=$1 key=$2 i v max=0 pid
  declare -A tree=()
  if [ -n "$PEAK_PID" ]; then
    kill -TERM "$PEAK_PID" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$PEAK_PID" 2>/dev/null || break; sleep 0.1; done
    wait "$PEAK_PID" 2>/dev/null
    while read -r pid v; do tree[$pid]=$v; done <"$WORK/peak.out"
  fi
  for i in 0 1; do
    pid=${PAIR_PIDS[$i]}
    v=$(status_kib "$pid" VmHWM)
    [ "${tree[$pid]:-0}" -gt "$v" ] && v=${tree[$pid]}
    put "$path" "${key}_${SIDES[$i]}" "$(mib "$v")"
    [ "$v" -gt "$max" ] && max=$v
  done
  put "$path" "$key" "$(mib "$max")"
}

# ------------------------------------------------------------------ measurements
# Each call measures once and records raw figures; with --repeat the calls are interleaved
# (rounds over all paths) and the report keeps the median of each figure.
REP=0
# redis-benchmark GET/SET at 1 and 50 clients, idle RSS, peak RSS, then the connection rate.
phase_redis() {
  local path=$1 port c n f t rps p50 p99 i line=""
  if ! start_pair "$path" "$REDIS_PORT" || ! redis_ready "$PAIR_PORT" 20 "$PAIR_HOST"; then
    fail "$path" "the $path pair to redis did not come up"; stop_pair; return
  fi
  port=$PAIR_PORT
  if [ ${#PAIR_PIDS[@]} = 2 ]; then
    record_proc_names "$path"
    sleep "$SETTLE" # idle, after one PING went through (the QUIC connection exists)
    local v max=0
    for i in 0 1; do
      v=$(status_kib "${PAIR_PIDS[$i]}" VmRSS)
      put "$path" "rss_idle_${SIDES[$i]}" "$(mib "$v")"; [ "$v" -gt "$max" ] && max=$v
    done
    put "$path" rss_idle "$(mib "$max")"
    peak_start "$path"
  fi
  for c in 1 50; do
    n=$N1; [ "$c" = 50 ] && n=$N50
    f="$WORK/rb-$path-$c-$REP.csv"
    local t0=0 t1 m0=() m1=()
    [ ${#PAIR_PIDS[@]} = 2 ] && t0=$(( $(cpu_ticks "${PAIR_PIDS[0]}") + $(cpu_ticks "${PAIR_PIDS[1]}") ))
    read -r -a m0 < <(machine_ticks)
    # bounded: at worst 200 requests/s
    if ! timeout $((n / 100 + 30)) "${IN_A[@]}" redis-benchmark -h "$PAIR_HOST" -p "$port" -t set,get -n "$n" -c "$c" --csv >"$f" 2>"$f.err"; then
      fail "$path" "redis-benchmark -c $c failed: $(tail -n 2 "$f.err" | tr '\n' ' ')"; continue
    fi
    read -r -a m1 < <(machine_ticks)
    if [ "$c" = 50 ] && [ "$((m1[2] - m0[2]))" -gt 0 ]; then
      # the whole machine (redis-benchmark, proxies, redis, kernel): per request, and how busy
      put "$path" mcpu_req_50 "$(per_req "$((m1[0] - m0[0]))" "$((2 * n))")"
      put "$path" busy_req_50 "$(pct "$((m1[0] - m0[0]))" "$((m1[2] - m0[2]))")"
    fi
    if [ ${#PAIR_PIDS[@]} = 2 ]; then
      # CPU of both proxies per request (SET + GET runs; a forking proxy's children once reaped)
      for i in $(seq 1 30); do [ "$(nchildren "${PAIR_PIDS[0]}")$(nchildren "${PAIR_PIDS[1]}")" = 00 ] && break; sleep 0.1; done
      t1=$(( $(cpu_ticks "${PAIR_PIDS[0]}") + $(cpu_ticks "${PAIR_PIDS[1]}") ))
      put "$path" "cpu_req_$c" "$(per_req "$((t1 - t0))" "$((2 * n))")"
    fi
    while read -r t rps p50 p99; do
      t=$(echo "$t" | tr 'A-Z' 'a-z')
      put "$path" "${t}_rps_$c" "$rps"; put "$path" "${t}_p50_$c" "$p50"; put "$path" "${t}_p99_$c" "$p99"
      [ "$t" = get ] && line+="GET@$c ${rps%.*}/s p50 $p50 ms; "
    done < <("$PY" "$H" rbench "$f")
  done
  [ ${#PAIR_PIDS[@]} = 2 ] && peak_put "$path" rss_redis
  # new connections per second: connect, PING, PONG, close; 32 in parallel
  local out e
  out=$(timeout $((CONN_T + 30)) "${IN_A[@]}" "$WORK/connrate" "$PAIR_HOST" "$port" 32 "$CONN_T" "$CONN_MAX")
  if [ -z "$out" ]; then
    fail "$path" "connection-rate client failed"
  else
    put "$path" conn_rate "$(echo "$out" | sed 's/.*rate=\([0-9.]*\).*/\1/')"
    put "$path" conn_p50 "$(echo "$out" | sed 's/.*p50_ms=\([0-9.]*\).*/\1/')"
    e=$(echo "$out" | sed 's/.*errors=\([0-9]*\).*/\1/')
    [ "$e" = 0 ] || put "$path" conn_errors "$e"
    line+="$(echo "$out" | sed 's/.*rate=\([0-9]*\).*/\1/') conn/s"
    [ "$e" = 0 ] || line+=" ($e failed)"
  fi
  say "$path: $line"
  pair_alive || fail "$path" "a proxy process died during the redis measurements"
  stop_pair
}

# iperf3 bulk: 1 and 8 streams, both directions; CPU seconds per GB of each proxy. With "lossy"
# (LAN mode, loss_on in force): 1 stream each way only, as bulk_loss_*, and the share of packets
# the loss rule dropped during them.
phase_bulk() {
  local path=$1 lossy=${2:-} port cfg key flags f bps bytes c0 c1 s0 s1 x0 y0 i line="" cfgs prefix=bulk_
  cfgs=("up1:" "down1:-R" "up8:-P 8" "down8:-P 8 -R")
  [ -n "$lossy" ] && { cfgs=("up1:" "down1:-R"); prefix=bulk_loss_; line="$LOSS % loss: "; }
  if ! start_pair "$path" "$IPERF_PORT" || ! iperf_ready "$PAIR_PORT" 30 "$PAIR_HOST"; then
    fail "$path" "the $path pair to iperf3 did not come up${lossy:+ (lossy round)}"; stop_pair; return
  fi
  port=$PAIR_PORT
  local two=0; [ ${#PAIR_PIDS[@]} = 2 ] && [ -z "$lossy" ] && two=1
  [ $two = 1 ] && peak_start "$path"
  local cpu_c=0 cpu_s=0 ctx_c=0 ctx_s=0 total=0 l0=() l1=() m0=() m1=() mb=0 mst=0 mtot=0 mbytes=0
  local one=0 pair1=0 ecpu=0 ic is
  [ -n "$lossy" ] && read -r -a l0 < <(loss_counts)
  for cfg in "${cfgs[@]}"; do
    key=${cfg%%:*}; flags=${cfg#*:}
    f="$WORK/iperf-$path-$prefix$key-$REP.json"
    if [ $two = 1 ]; then
      c0=$(cpu_ticks "${PAIR_PIDS[0]}"); s0=$(cpu_ticks "${PAIR_PIDS[1]}")
      x0=$(ctx_switches "${PAIR_PIDS[0]}"); y0=$(ctx_switches "${PAIR_PIDS[1]}")
    fi
    read -r -a m0 < <(machine_ticks)
    # shellcheck disable=SC2086
    timeout $((IPERF_T + 30)) "${IN_A[@]}" iperf3 -c "$PAIR_HOST" -p "$port" -t "$IPERF_T" -J $flags >"$f" 2>"$f.err"
    read -r -a m1 < <(machine_ticks)
    if ! read -r bps bytes < <("$PY" "$H" iperf "$f" 2>>"$f.err"); then
      fail "$path" "iperf3 $key failed: $(tail -n 2 "$f.err" | tr '\n' ' ')"; sleep 1; continue
    fi
    one=0; [ -z "$lossy" ] && [ "${key%1}" != "$key" ] && one=1
    if [ $one = 1 ]; then
      # 1-stream runs: what the whole machine spent (client, proxies, target, kernel) and how
      # busy its cores were, so that a throughput ratio can be read against the CPU it needs;
      # iperf3's own CPU figures for its two ends
      mb=$((mb + m1[0] - m0[0])); mst=$((mst + m1[1] - m0[1])); mtot=$((mtot + m1[2] - m0[2]))
      mbytes=$((mbytes + bytes))
      read -r ic is < <("$PY" "$H" iperfcpu "$f" 2>/dev/null) || { ic=0; is=0; }
      ecpu=$(awk -v e="$ecpu" -v a="$ic" -v b="$is" 'BEGIN{printf "%.4f", e + a + b}')
    fi
    if [ $two = 1 ]; then
      # a forking proxy's children count once reaped: wait for them (bounded)
      for i in $(seq 1 30); do [ "$(nchildren "${PAIR_PIDS[0]}")$(nchildren "${PAIR_PIDS[1]}")" = 00 ] && break; sleep 0.1; done
      c1=$(cpu_ticks "${PAIR_PIDS[0]}"); s1=$(cpu_ticks "${PAIR_PIDS[1]}")
      cpu_c=$((cpu_c + c1 - c0)); cpu_s=$((cpu_s + s1 - s0))
      [ $one = 1 ] && pair1=$((pair1 + c1 - c0 + s1 - s0))
      ctx_c=$((ctx_c + $(ctx_switches "${PAIR_PIDS[0]}") - x0)); ctx_s=$((ctx_s + $(ctx_switches "${PAIR_PIDS[1]}") - y0))
    fi
    total=$((total + bytes))
    bps=$(awk -v b="$bps" 'BEGIN{printf "%.3f", b/1e9}')
    put "$path" "$prefix$key" "$bps"
    line+="$key $bps Gbit/s; "
  done
  if [ -n "$lossy" ]; then
    read -r -a l1 < <(loss_counts)
    if [ "${#l0[@]}" = 3 ] && [ "${#l1[@]}" = 3 ] && [ "$((l1[0] - l0[0]))" -gt 0 ]; then
      put "$path" loss_pct "$(awk -v s="$((l1[0] - l0[0]))" -v d="$((l1[1] - l0[1]))" 'BEGIN{printf "%.3f", 100*d/s}')"
      put "$path" loss_pkt_bytes "$(awk -v s="$((l1[0] - l0[0]))" -v b="$((l1[2] - l0[2]))" 'BEGIN{printf "%.0f", b/s}')"
      line+="dropped $((l1[1] - l0[1])) of $((l1[0] - l0[0])) packets"
    else
      fail "$path" "the loss rule counted no packets"
    fi
  fi
  if [ "$mtot" -gt 0 ] && [ "$mbytes" -gt 0 ]; then
    put "$path" mcpu_gb "$(per_gb "$mb" "$mbytes")"
    put "$path" busy_pct "$(pct "$mb" "$mtot")"
    put "$path" steal_pct "$(pct "$mst" "$mtot")"
    put "$path" ecpu_gb "$(awk -v e="$ecpu" -v b="$mbytes" 'BEGIN{printf "%.3f", e/(b/1e9)}')"
    [ $two = 1 ] && put "$path" cpu_gb1 "$(per_gb "$pair1" "$mbytes")"
    # what neither the pair (none on the direct path: pair1 stays 0) nor iperf3 spent
    put "$path" ocpu_gb "$(awk -v m="$mb" -v p="$pair1" -v k="$TCK" -v e="$ecpu" -v b="$mbytes" 'BEGIN{printf "%.3f", ((m-p)/k-e)/(b/1e9)}')"
  fi
  if [ $two = 1 ]; then
    peak_put "$path" rss_bulk
    if [ "$total" -gt 0 ]; then
      put "$path" cpu_gb_c "$(per_gb "$cpu_c" "$total")"
      put "$path" cpu_gb_s "$(per_gb "$cpu_s" "$total")"
      if [ "$path" = ambassador ]; then # others' per-connection threads/children take their counts with them
        put "$path" ctx_mb_c "$(awk -v t="$ctx_c" -v b="$total" 'BEGIN{printf "%.2f", t/(b/1e6)}')"
        put "$path" ctx_mb_s "$(awk -v t="$ctx_s" -v b="$total" 'BEGIN{printf "%.2f", t/(b/1e6)}')"
      fi
      put "$path" cpu_gb "$(per_gb "$((cpu_c + cpu_s))" "$total")"
      line+="$(per_gb "$((cpu_c + cpu_s))" "$total" %.2f) CPU s/GB"
    fi
  fi
  say "$path: $line"
  pair_alive || fail "$path" "a proxy process died during the bulk runs${lossy:+ (lossy round)}"
  stop_pair
}

# perf profile of one proxy pair (the ambassador pair, and in LAN mode the haproxy pair too) during
# bulk runs (1 stream each way, and for the ambassador 8 streams up) and during GETs at 1 and 50
# clients: where
# the CPU goes (grouped, then the top symbols) and what each byte and each request costs in CPU,
# syscalls and context switches.
PROFILE="$WORK/profile.md"
PERF_EVENTS="task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_write,syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait"
PROFILE_REQS=15000
profile_side_name() { # PATH SIDE
  case "$1" in
    ambassador) [ "$2" = 1 ] && echo "ambassador announce (server side)" || echo "ambassador connect (client side)" ;;
    *) [ "$2" = 1 ] && echo "$1 B (server side)" || echo "$1 A (client side)" ;;
  esac
}
profile_record() { # PATH KEY RUN...: perf record + perf stat on both proxies while RUN runs
  local path=$1 key=$2 side pid perfs=()
  shift 2
  for side in 0 1; do
    pid=${PAIR_PIDS[$side]}
    timeout 30 perf record -q -F 1999 -o "$WORK/perf-$path-$key-$side.data" -p "$pid" -- sleep 4 >/dev/null 2>&1 &
    PIDS+=($!); perfs+=($!)
    timeout 30 perf stat -x, -e "$PERF_EVENTS" -o "$WORK/perfstat-$path-$key-$side.csv" -p "$pid" -- sleep 4 >/dev/null 2>&1 &
    PIDS+=($!); perfs+=($!)
  done
  sleep 0.3
  "$@"
  for pid in "${perfs[@]}"; do wait "$pid"; done
}
profile_write() { # PATH KEY TITLE UNIT(bytes|requests) COUNT
  local path=$1 key=$2 title=$3 unit=$4 count=$5 side data
  for side in 0 1; do
    data="$WORK/perf-$path-$key-$side.data"
    {
      echo "#### $title, $(profile_side_name "$path" "$side")"
      echo
      echo '```'
      if [ "$unit" = bytes ]; then
        "$PY" "$H" perfstat "$WORK/perfstat-$path-$key-$side.csv" "$count"
      else
        "$PY" "$H" perfstat-req "$WORK/perfstat-$path-$key-$side.csv" "$count"
      fi
      echo
      perf report -i "$data" --no-children --sort dso,sym --stdio 2>/dev/null | "$PY" "$H" perfcat
      echo
      perf report -i "$data" --no-children --sort dso,sym --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -n 15
      echo '```'
      echo
    } >>"$PROFILE"
  done
}
phase_profile() { # PATH
  local path=$1 port key flags bps bytes dir reqs=$PROFILE_REQS dirs=("up1:" "down1:-R")
  [ "$path" = ambassador ] && dirs+=("up8:-P 8")
  [ "$QUICK" = 1 ] && reqs=3000
  say "$path: perf profile of bulk runs and 1-client GETs"
  if ! start_pair "$path" "$IPERF_PORT" || ! iperf_ready "$PAIR_PORT" 30 "$PAIR_HOST"; then
    fail "$path" "the $path pair to iperf3 did not come up for profiling"; stop_pair; return
  fi
  port=$PAIR_PORT
  {
    echo "### Profile of the $path pair (perf: bulk, 3 s each way; GET at 1 client, $reqs requests; at 50 clients, $((reqs * 5)))"
    echo
    echo "perf record -F 1999 (flat, no call graphs) and perf stat on each $path process while iperf3 or"
    echo "redis-benchmark runs through the pair. Shares are of that process's samples (user + kernel)."
    echo
  } >>"$PROFILE"
  for dir in "${dirs[@]}"; do
    key=${dir%%:*}; flags=${dir#*:}
    # shellcheck disable=SC2086
    profile_record "$path" "$key" timeout 40 "${IN_A[@]}" iperf3 -c "$PAIR_HOST" -p "$port" -t 3 -J $flags \
      --logfile "$WORK/perf-$path-$key.json"
    read -r bps bytes < <("$PY" "$H" iperf "$WORK/perf-$path-$key.json" 2>/dev/null) || { bps=0; bytes=0; }
    profile_write "$path" "$key" "$key ($(case $key in up1) echo "client→target";; down1) echo "target→client";; *) echo "8 streams, client→target";; esac)): $(awk -v b="$bps" 'BEGIN{printf "%.2f", b/1e9}') Gbit/s" bytes "$bytes"
  done
  stop_pair
  if ! start_pair "$path" "$REDIS_PORT" || ! redis_ready "$PAIR_PORT" 20 "$PAIR_HOST"; then
    fail "$path" "the $path pair to redis did not come up for profiling"; stop_pair; return
  fi
  profile_record "$path" req1 timeout 60 "${IN_A[@]}" redis-benchmark -h "$PAIR_HOST" -p "$PAIR_PORT" -t get \
    -n "$reqs" -c 1 -q
  profile_write "$path" req1 "GET, 1 client ($reqs requests within the 4 s window)" requests "$reqs"
  # 50 clients: what each request costs when requests share wake-ups and UDP batches
  local reqs50=$((reqs * 5))
  profile_record "$path" req50 timeout 60 "${IN_A[@]}" redis-benchmark -h "$PAIR_HOST" -p "$PAIR_PORT" -t get \
    -n "$reqs50" -c 50 -q
  profile_write "$path" req50 "GET, 50 clients ($reqs50 requests within the 4 s window)" requests "$reqs50"
  stop_pair
}

# 10,000 idle connections through one ambassador pair: RSS growth per connection.
phase_hold() {
  local port held out i line end
  say "ambassador: holding $HOLD idle connections"
  if ! start_pair ambassador "$REDIS_PORT" || ! redis_ready "$PAIR_PORT" 20 "$PAIR_HOST"; then
    fail ambassador "the ambassador pair for the idle-connection test did not come up"; stop_pair; return
  fi
  port=$PAIR_PORT
  put ambassador hold_count "$HOLD"
  sleep "$SETTLE"
  local r0=() r1=() r2=()
  for i in 0 1; do r0[$i]=$(status_kib "${PAIR_PIDS[$i]}" VmRSS); done
  rm -f "$WORK/hold.in"; mkfifo "$WORK/hold.in"; : >"$WORK/hold.out"
  exec 5<>"$WORK/hold.in"
  "${IN_A[@]}" "$PY" "$HERE/hold.py" "$port" "$HOLD" --host "$PAIR_HOST" --hold-max 300 <"$WORK/hold.in" >"$WORK/hold.out" 2>&1 &
  local hp=$!; PIDS+=("$hp")
  end=$((SECONDS + 60 + HOLD / 50))
  while [ $SECONDS -lt $end ] && ! grep -q '^held=' "$WORK/hold.out" && kill -0 $hp 2>/dev/null; do sleep 0.2; done
  line=$(grep '^held=' "$WORK/hold.out")
  if [ -z "$line" ]; then
    fail ambassador "idle-connection holder did not finish opening: $(tail -n 3 "$WORK/hold.out" | tr '\n' ' ')"
    exec 5>&-; kill_tree "$hp"; stop_pair; return
  fi
  say "ambassador: $line"
  held=$(echo "$line" | sed 's/held=\([0-9]*\).*/\1/')
  put ambassador hold_held "$held"
  put ambassador hold_seconds "$(echo "$line" | sed 's/.*seconds=\([0-9.]*\).*/\1/')"
  sleep "$SETTLE" # let allocations settle while idle
  for i in 0 1; do
    local pid=${PAIR_PIDS[$i]}
    r1[$i]=$(status_kib "$pid" VmRSS)
    put ambassador "hold_rss0_${SIDES[$i]}" "$(mib "${r0[$i]}")"
    put ambassador "hold_rss1_${SIDES[$i]}" "$(mib "${r1[$i]}")"
    put ambassador "hold_fds1_${SIDES[$i]}" "$(ls /proc/"$pid"/fd 2>/dev/null | wc -l)"
    put ambassador "hold_threads1_${SIDES[$i]}" "$(status_kib "$pid" Threads)"
    [ "$held" -gt 0 ] && put ambassador "hold_per_conn_${SIDES[$i]}" \
      "$(awk -v a="${r0[$i]}" -v b="${r1[$i]}" -v n="$held" 'BEGIN{printf "%.2f", (b-a)/n}')"
  done
  echo close >&5
  end=$((SECONDS + 60))
  while [ $SECONDS -lt $end ] && ! grep -q '^closed=' "$WORK/hold.out" && kill -0 $hp 2>/dev/null; do sleep 0.2; done
  exec 5>&-
  local closed; closed=$(grep '^closed=' "$WORK/hold.out")
  wait $hp 2>/dev/null
  sleep "$SETTLE"
  for i in 0 1; do
    r2[$i]=$(status_kib "${PAIR_PIDS[$i]}" VmRSS)
    put ambassador "hold_rss2_${SIDES[$i]}" "$(mib "${r2[$i]}")"
  done
  local note errs
  errs=$(echo "$line" | sed 's/.*errors=//')
  note="holder: ${closed:-did not report closing}; errors while opening: $errs"
  redis_ready "$port" 5 "$PAIR_HOST" && note+="; the pair still answers PING afterwards" || note+="; the pair does NOT answer PING afterwards"
  pair_alive || note+="; an ambassador process died"
  [ -n "$HOLD_NOTE" ] && note+="; $HOLD_NOTE"
  put ambassador hold_note "$note"
  say "ambassador: $note"
  stop_pair
}

# ------------------------------------------------------------------ run
T0=$SECONDS
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
say "work dir $WORK; paths: $SEL_PATHS; ambassador discovery: $DISCOVERY; $([ $QUICK = 1 ] && echo quick || echo full) run$([ "$LAN" = 1 ] && echo "; LAN mode: namespaces $NS_A, $NS_B on a bridge in $NS_SW, MTU 1500")"
ORDER=($SEL_PATHS)
for REP in $(seq 1 "$REPEAT"); do
  # rotate the order of the paths each round, so that no path always runs first or last
  k=$(( (REP - 1) % ${#ORDER[@]} ))
  ROUND=("${ORDER[@]:$k}" "${ORDER[@]:0:$k}")
  [ "$REPEAT" -gt 1 ] && say "round $REP of $REPEAT: ${ROUND[*]}"
  [ "$BULK_ONLY" = 1 ] || for p in "${ROUND[@]}"; do phase_redis "$p"; done
  for p in "${ROUND[@]}"; do phase_bulk "$p"; done
  if [ "$LAN" = 1 ] && [ "$LOSS" -gt 0 ]; then
    if loss_on >"$WORK/loss.log" 2>&1; then
      say "lossy round: $LOSS % random loss on B's input from the link"
      for p in "${ROUND[@]}"; do phase_bulk "$p" lossy; done
    else
      for p in "${ROUND[@]}"; do fail "$p" "cannot set up the loss rule: $(tr '\n' ' ' <"$WORK/loss.log")"; done
    fi
    loss_off
  fi
done
if [ "$PERF" = 1 ]; then
  : >"$PROFILE"
  case " $SEL_PATHS " in *" ambassador "*) phase_profile ambassador ;; esac
  case " $SEL_PATHS " in *" haproxy "*) phase_profile haproxy ;; esac
fi
case " $SEL_PATHS " in *" ambassador "*) [ "$HOLD" -gt 0 ] && [ "$BULK_ONLY" = 0 ] && phase_hold ;; esac

# ------------------------------------------------------------------ report
META="$WORK/meta.tsv"
{
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'kernel\t%s\n' "$(uname -r)"
  printf 'nproc\t%s\n' "$(nproc)"
  printf 'load\t1-min load average %s at the start, %s at the end (anything above ~0.5 means other work shared the CPUs)\n' "$LOAD0" "$(cut -d' ' -f1 /proc/loadavg)"
  printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
  printf 'ambassador\t%s\n' "$AMB_DESC"
  printf 'discovery\t%s\n' "$([ "$DISCOVERY" = mdns ] && echo "mDNS on $IF_A" || echo "static (connect --backend $LINK_B:QUIC_PORT)")"
  if [ "$LAN" = 1 ]; then
    printf 'network\t%s\n' "two network namespaces (A $LINK_A, B $LINK_B), each with a veth at MTU 1500 on a bridge in a third namespace, sharing this machine's cores; veth offloads as the kernel sets them (TSO, GSO, UDP GSO on) except in the lossy runs"
    [ "$LOSS" -gt 0 ] && printf 'loss\t%s\n' "lossy runs: nftables in B drops $LOSS % of the packets entering B from the link (numgen random mod 100 < $LOSS); TSO/GSO off on A's veth meanwhile, so that 1500-byte packets are dropped, not offload batches"
    printf 'loss_pct\t%s\n' "$LOSS"
    printf 'tcp congestion control\t%s\n' "the TCP paths' (direct, stunnel, haproxy): $("${IN_A[@]}" sysctl -n net.ipv4.tcp_congestion_control) in A, $("${IN_B[@]}" sysctl -n net.ipv4.tcp_congestion_control) in B (the host's net.ipv4.tcp_congestion_control, which a new namespace inherits); the ambassador pair's QUIC: $(amb_congestion)"
  fi
  printf 'tools\t%s; %s; %s; %sredis %s; %s\n' "$(iperf3 --version 2>&1 | head -n1 | awk '{print $1" "$2}')" \
    "$(socat -V 2>/dev/null | awk '/socat version/{print "socat "$3; exit}')" \
    "$("$STUNNEL" -version 2>&1 | awk '/^stunnel/{print $1" "$2; exit}')" \
    "$([ "$LAN" = 1 ] && haproxy -v 2>/dev/null | awk '/version/{printf "haproxy %s; ", $3; exit}')" \
    "$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')" "$(openssl version | awk '{print $1" "$2}')"
  if [ "$BULK_ONLY" = 1 ]; then
    printf 'settings\tiperf3 -t %s; bulk runs only (--bulk-only); median of %s\n' "$IPERF_T" "$REPEAT"
  else
    printf 'settings\tiperf3 -t %s; redis-benchmark -t set,get -n %s (1 client) / -n %s (50 clients); connection rate %s s x 32 threads; %s idle connections; median of %s\n' \
      "$IPERF_T" "$N1" "$N50" "$CONN_T" "$HOLD" "$REPEAT"
  fi
} >"$META"
REPORT="$WORK/report.md"
"$PY" "$H" report "$RES" "$META" "$([ $QUICK = 1 ] && echo quick || echo full)" "$([ "$LAN" = 1 ] && echo lan || echo loopback)" >"$REPORT" || { echo "mesh.sh: report failed" >&2; exit 1; }
[ -s "$PROFILE" ] && cat "$PROFILE" >>"$REPORT"
echo
cat "$REPORT"
echo

if [ "$WRITE" = 1 ]; then
  MARK='<!-- Everything below this line is kept when benches/mesh.sh rewrites this file. -->'
  KEEP=""
  [ -f "$OUT" ] && KEEP=$(awk -v m="$MARK" 'f{print} $0==m{f=1}' "$OUT")
  {
    if [ "$LAN" = 1 ]; then
      echo "# Benchmark results: LAN mode"
      echo
      echo "Written by \`benches/mesh.sh --lan\` (issue 16): client → proxy A → a bridge at MTU 1500 → proxy B →"
      echo "target, across two network namespaces sharing this machine's cores, each path measured in the same"
      echo "run. Rerun with \`benches/mesh.sh --lan\` as root (see benches/README.md)."
    else
      echo "# Benchmark results"
      echo
      echo "Written by \`benches/mesh.sh\` (issue 4): client → proxy pair → target, all on loopback,"
      echo "each path measured in the same run. Rerun with \`benches/mesh.sh\` (about 5 minutes; see benches/README.md)."
    fi
    echo
    cat "$REPORT"
    echo
    echo "$MARK"
    if [ -n "$KEEP" ]; then printf '%s\n' "$KEEP"; else printf '\n## Notes\n'; fi
  } >"$OUT.tmp" && mv "$OUT.tmp" "$OUT"
  say "wrote $OUT"
fi

[ "$LAN" = 1 ] && "$PY" "$H" targets "$RES" "$META"
for p in $SEL_PATHS; do
  if [ "${PATH_ERRORS[$p]:-0}" = 0 ]; then echo "summary: $p ok"; else echo "summary: $p ${PATH_ERRORS[$p]} error(s)"; fi
done
say "done in $((SECONDS - T0)) s"
[ "$ERRORS" = 0 ]
