#!/usr/bin/env bash
# benches/scale.sh: how far one LAN goes (issue 15 point 6, a benchmark, not a test). A fleet of
# N hosts on one bridge, each an ambassador announcing two services, and one consumer that
# reaches all of them: how long until the consumer knows every instance, what mDNS (or etcd)
# costs on the wire during the start and at rest, and what one idle ambassador costs in CPU.
#
#   sudo benches/scale.sh            full run (N = 50, then 100; about 14 minutes), writes
#                                    benches/results-scale.md
#   sudo benches/scale.sh --quick    smoke run (N = 10, short windows); writes nothing
#
# Options:
#   --sizes "50 100"   fleet sizes, run one after the other (default "50 100"; quick "10")
#   --modes "a b"      discovery modes, each run on every size (default: mdns etcd etcd+mdns):
#                        mdns       mDNS alone (the default of ambassador), on each host's eth0
#                        etcd       --registry etcd://... with mDNS off (--no-mdns)
#                        etcd+mdns  --registry and mDNS on eth0 both (what a user gets by adding
#                                   --registry to a LAN that has mDNS)
#   --rest S           the at-rest window, in seconds (default 120: one whole TTL cycle of the
#                      120-s host records, whose refresh queries go out at 80 % = 96 s; quick 10)
#   --settle S         wait after convergence before the rest window starts (default 5; quick 2)
#   --write/--no-write write the results file or not (default: write, except with --quick)
#   --out FILE         results file (default benches/results-scale.md)
#   --keep DIR         copy every run's logs (providers, consumer, etcd, 1-s counter samples) into
#                      DIR before the clean-up, for a closer look
#
# Environment: AMBASSADOR_BIN=path/to/ambassador (default: cargo build --release, then
# ${CARGO_TARGET_DIR:-target}/release/ambassador); AMBASSADOR_BIN_DESC names the build.
#
# Exit status: 0 when every run produced its figures, 1 when one failed, 2 on bad usage, 77 without
# root, tools or network namespaces ("SKIPPED: ...").
#
# The network: a namespace holding bridge br0, and one namespace per host, each with lo up and one
# veth (eth0, MTU 1500) plugged into the bridge, an address in 10.79.0.0/16 and a 224.0.0.0/4 route
# on eth0 (IPv6 link-local addresses as the kernel makes them, as on a real LAN; IPv6 mDNS is counted
# apart). Hosts: h1..hN (10.79.1.2 and up), the consumer c (10.79.0.2), etcd e
# (10.79.0.3). Nothing is made in the root namespace; the script changes no sysctl and no firewall
# outside its namespaces. The bridge is made once for the largest size; a run uses the first N hosts.
#
# One run (one size, one mode):
#   - a fresh etcd (etcd modes: one member, data in the run's temporary directory);
#   - the consumer: `ambassador connect redis:6379 svc-1:20001 ... svc-N:2000N` (N + 1 services),
#     its status polled every 0.1 s with `ambassador status --json` on its own status socket;
#   - the fleet: in host i, `ambassador announce redis:6379=127.0.0.1:6380 svc-i:7000=127.0.0.1:6380`,
#     so the consumer sees N instances of one shared service plus N services of one instance each,
#     2N instances in all. One process (benches/scale.py listen) holds a listener on 127.0.0.1:6380
#     in every host namespace, so that each provider's health check finds its target up;
#   - convergence: from the last provider's last "announcing" log line (and from the start of the
#     first provider) until the consumer's status lists all 2N instances, then all 2N healthy;
#   - traffic: nftables counters on the bridge's ingress (each frame counted once, as the host that
#     sent it put it on the wire; IP bytes, Ethernet header excluded): mDNS (UDP port 5353, IPv4 and
#     IPv6), etcd (TCP port 2379), QUIC (every other UDP), all frames; over the start (first
#     provider started until all known) and at rest (--rest seconds, --settle after convergence);
#     peaks from a 1-s sampler;
#   - CPU at rest: utime+stime from /proc over the rest window, as % of one core: host 1's provider
#     ("idle provider"), the mean over all providers, the consumer, etcd.
# Every process is stopped (SIGTERM, then SIGKILL after a deadline) at the end of each run. A trap
# kills whatever is left in the namespaces and deletes them (veths and nftables table with them),
# also on failure or Ctrl-C.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
H="$HERE/scale.py"

QUICK=0
WRITE=""
OUT="$HERE/results-scale.md"
SIZES=""
MODES="mdns etcd etcd+mdns"
REST=""
SETTLE=""
KEEP_DIR=""

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --write) WRITE=1 ;;
    --no-write) WRITE=0 ;;
    --out) OUT=${2:?--out needs a file}; shift ;;
    --sizes) SIZES=${2:?--sizes needs a list}; shift ;;
    --modes) MODES=${2:?--modes needs a list}; shift ;;
    --rest) REST=${2:?--rest needs seconds}; shift ;;
    --settle) SETTLE=${2:?--settle needs seconds}; shift ;;
    --keep) KEEP_DIR=${2:?--keep needs a directory}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "scale.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  SIZES=${SIZES:-10}; REST=${REST:-10}; SETTLE=${SETTLE:-2}; WRITE=${WRITE:-0}
else
  SIZES=${SIZES:-50 100}; REST=${REST:-120}; SETTLE=${SETTLE:-5}; WRITE=${WRITE:-1}
fi
for n in $SIZES "$REST" "$SETTLE"; do
  case "$n" in ''|*[!0-9]*) echo "scale.sh: --sizes, --rest and --settle take whole numbers" >&2; exit 2 ;; esac
done
MAXN=0
for n in $SIZES; do
  { [ "$n" -ge 1 ] && [ "$n" -le 1000 ]; } || { echo "scale.sh: a size is 1 to 1000 hosts" >&2; exit 2; }
  [ "$n" -gt "$MAXN" ] && MAXN=$n
done
[ "$REST" -ge 1 ] || { echo "scale.sh: --rest is at least 1 s" >&2; exit 2; }
for m in $MODES; do
  case $m in mdns|etcd|etcd+mdns) ;; *) echo "scale.sh: unknown mode $m (mdns, etcd, etcd+mdns)" >&2; exit 2 ;; esac
done

say() { printf '[scale.sh %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
now() { date +%s.%N; }

# ------------------------------------------------------------------ root, tools
if [ "$(id -u)" != 0 ]; then
  echo "SKIPPED: scale.sh needs root (network namespaces, veths, a bridge, nftables); run it as root"
  exit 77
fi
declare -A PKG=([ip]=iproute2 [nft]=nftables [etcd]=etcd-server [etcdctl]=etcd-client
  [python3]=python3 [timeout]=coreutils [awk]=gawk)
missing_pkgs() {
  local c
  for c in "${!PKG[@]}"; do command -v "$c" >/dev/null || echo "${PKG[$c]}"; done | sort -u | xargs
}
MISSING=$(missing_pkgs)
if [ -n "$MISSING" ] && command -v apt-get >/dev/null; then
  say "installing: $MISSING"
  # shellcheck disable=SC2086
  { DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends $MISSING ||
    { timeout 300 apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends $MISSING; }; } >/dev/null 2>&1 || true
  MISSING=$(missing_pkgs)
fi
if [ -n "$MISSING" ]; then
  echo "SKIPPED: tools missing: $MISSING (apt-get install $MISSING)"
  exit 77
fi
# the interpreter itself, not a version-manager shim (a shim costs ~0.3 s per call)
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)
[ -x "$PY" ] || PY=$(command -v python3)

# ------------------------------------------------------------------ work dir, processes, clean-up
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ambassador-scale.XXXXXX")
ID="ambscale-$$"
NS_BR="$ID-br"; NS_C="$ID-c"; NS_E="$ID-e"
LAN_NS=()   # every namespace made so far
PIDS=()     # every background process started (bounded stop at the end)
stop_pids() { # PID...: SIGTERM all, wait for all up to 20 s, then SIGKILL what is left
  local p left end=$((SECONDS + 20))
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  while [ $SECONDS -lt $end ]; do
    left=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && { left=1; break; }; done
    [ $left = 0 ] && break
    sleep 0.2
  done
  kill -KILL "$@" 2>/dev/null || true
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
cleanup() {
  local rc=$? p ns alive=()
  trap - EXIT INT TERM
  set +e
  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
  stop_pids "${alive[@]}"
  # whatever still runs in our namespaces is ours too; deleting a namespace takes its veth ends
  # and nftables table along
  for ns in "${LAN_NS[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for ns in "${LAN_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  if [ -n "$KEEP_DIR" ]; then
    mkdir -p "$KEEP_DIR" && cp -r "$WORK"/run-* "$WORK"/results.tsv "$KEEP_DIR"/ 2>/dev/null &&
      find "$KEEP_DIR" -name etcd-data -prune -exec rm -rf {} + && echo "scale.sh: logs kept in $KEEP_DIR" >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "scale.sh: interrupted" >&2; exit 130' INT TERM

spawn() { # LOG CMD...: start in the background, pid in LAST_PID
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
until_true() { # SECONDS CMD...: run CMD every 0.1 s until it succeeds (0) or the deadline passes (1)
  local end; end=$(awk -v n="$(now)" -v s="$1" 'BEGIN{printf "%.3f", n+s}'); shift
  while :; do
    "$@" && return 0
    awk -v n="$(now)" -v e="$end" 'BEGIN{exit !(n>=e)}' && return 1
    sleep 0.1
  done
}
calc() { awk "BEGIN{printf \"%.${2:-1}f\", $1}"; } # EXPR [DECIMALS]

# Namespaces left by a run that was killed outright, with nothing running in them.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^ambscale-[0-9]*-' || true); do
  pid=${ns#ambscale-}; pid=${pid%%-*}
  [ -d "/proc/$pid" ] || [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] || ip netns del "$ns" 2>/dev/null || true
done

# ------------------------------------------------------------------ the ambassador binary
AMB=${AMBASSADOR_BIN:-}
if [ -z "$AMB" ]; then
  say "building ambassador (cargo build --release)"
  (cd "$ROOT" && timeout 1200 cargo build --release --quiet) || { echo "scale.sh: cargo build failed" >&2; exit 1; }
  AMB="${CARGO_TARGET_DIR:-$ROOT/target}/release/ambassador"
fi
[ -x "$AMB" ] || { echo "scale.sh: no ambassador binary at $AMB" >&2; exit 1; }
AMB_DESC=${AMBASSADOR_BIN_DESC:-commit $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)}
AMB_DESC="$("$AMB" --version 2>/dev/null), $AMB_DESC"
# a private copy: a rebuild during the run changes nothing
cp "$AMB" "$WORK/ambassador"; AMB="$WORK/ambassador"
export XDG_CONFIG_HOME="$WORK/xdg"
mkdir -p "$XDG_CONFIG_HOME"
KEY="$WORK/mesh.key"
timeout 20 "$AMB" mesh new --out "$KEY" >/dev/null 2>"$WORK/mesh.log" || { cat "$WORK/mesh.log" >&2; echo "scale.sh: ambassador mesh new failed" >&2; exit 1; }

# ------------------------------------------------------------------ the network
host_ip() { echo "10.79.$(( $1 / 250 + 1 )).$(( $1 % 250 + 1 ))"; } # host i (1-based)
C_IP=10.79.0.2; E_IP=10.79.0.3
ETCD_URL="etcd://$E_IP:2379"
plug() { # NS PORT IP: namespace NS with eth0 at IP/16 on bridge port PORT
  ip netns add "$1" && LAN_NS+=("$1") &&
    ip -n "$1" link set lo up &&
    ip -n "$NS_BR" link add "$2" mtu 1500 type veth peer name eth0 mtu 1500 netns "$1" &&
    ip -n "$NS_BR" link set "$2" master br0 up &&
    ip -n "$1" addr add "$3/16" dev eth0 &&
    ip -n "$1" link set eth0 up &&
    ip -n "$1" route add 224.0.0.0/4 dev eth0
}
lan_up() {
  local i
  ip netns add "$NS_BR" && LAN_NS+=("$NS_BR") &&
    ip -n "$NS_BR" link set lo up &&
    ip -n "$NS_BR" link add br0 type bridge &&
    ip -n "$NS_BR" link set br0 up || return 1
  plug "$NS_C" c0 "$C_IP" && plug "$NS_E" e0 "$E_IP" || return 1
  for i in $(seq 1 "$MAXN"); do plug "$ID-h$i" "h$i" "$(host_ip "$i")" || return 1; done
  # counters on the bridge's ingress (prerouting): each frame once, as its sender put it on the
  # wire; a multicast frame is then delivered to every other port, which is not counted again
  ip netns exec "$NS_BR" nft -f - <<EOF_NFT
table bridge ambscale {
  counter mdns4 {}
  counter mdns6 {}
  counter etcd {}
  counter quic {}
  counter frames {}
  chain pre {
    type filter hook prerouting priority -300; policy accept;
    counter name "frames"
    # one counter per frame: "accept" ends this chain (the frame goes on as usual). Two matches
    # "udp sport != X udp dport != X" would be merged by nft into one != on both ports together.
    ether type ip udp sport 5353 counter name "mdns4" accept
    ether type ip udp dport 5353 counter name "mdns4" accept
    ether type ip6 udp sport 5353 counter name "mdns6" accept
    ether type ip6 udp dport 5353 counter name "mdns6" accept
    ether type ip tcp sport 2379 counter name "etcd" accept
    ether type ip tcp dport 2379 counter name "etcd" accept
    ether type { ip, ip6 } meta l4proto udp counter name "quic" accept
  }
}
EOF_NFT
}
say "work dir $WORK; making the LAN: bridge, $MAXN hosts, consumer, etcd"
if ! lan_up >"$WORK/lan.log" 2>&1; then
  cat "$WORK/lan.log" >&2
  echo "SKIPPED: cannot set up the network namespaces (ip netns, veth, bridge, nftables bridge table)"
  exit 77
fi
COUNTER_NAMES="mdns4 mdns6 etcd quic frames"
counters() { # "pkts bytes" of each counter, in COUNTER_NAMES order
  ip netns exec "$NS_BR" nft list counters table bridge ambscale 2>/dev/null | awk -v names="$COUNTER_NAMES" '
    $1 == "counter" { name = $2 }
    $1 == "packets" { p[name] = $2; b[name] = $4 }
    END { n = split(names, a, " "); for (i = 1; i <= n; i++) printf "%d %d ", p[a[i]], b[a[i]]; print "" }'
}
TCK=$(getconf CLK_TCK)
cpu_ticks() { # utime+stime of a process (0 when it is gone)
  local s
  s=$(cat /proc/"$1"/stat 2>/dev/null) || { echo 0; return; }
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $(( ${12} + ${13} ))
}
rss_mib() { awk '$1=="VmRSS:"{printf "%.1f", $2/1024; f=1} END{if(!f) print 0}' /proc/"$1"/status 2>/dev/null || echo 0; }

# the targets: one listener on 127.0.0.1:6380 in every host namespace, one process for all
TPORT=6380
HOST_NS=(); for i in $(seq 1 "$MAXN"); do HOST_NS+=("$ID-h$i"); done
spawn "$WORK/listen.log" "$PY" "$H" listen "$TPORT" "${HOST_NS[@]}"
until_true 20 grep -q '^ready' "$WORK/listen.log" || { cat "$WORK/listen.log" >&2; echo "scale.sh: the target listeners did not start" >&2; exit 1; }

ETCD_VERSION=$(etcd --version 2>/dev/null | awk '/etcd Version/{print $3; exit}')

# ------------------------------------------------------------------ one run
RES="$WORK/results.tsv"; : >"$RES"
ERRORS=0
put() { printf '%s\t%s\t%s\n' "$RUN" "$1" "$2" >>"$RES"; }
got() { awk -F'\t' -v r="$RUN" -v k="$1" '$1 == r && $2 == k {v = $3} END {print v}' "$RES"; }
fail() { say "ERROR $RUN: $1"; put error "$1"; ERRORS=$((ERRORS + 1)); }
status_of() { # DIR: the consumer's status (JSON) into $RUNDIR/status.json; "known healthy" out
  XDG_RUNTIME_DIR="$1" timeout 5 "$AMB" status --json >"$RUNDIR/status.json" 2>/dev/null || true
  "$PY" "$H" known "$RUNDIR/status.json"
}
all_known() { # also notes when half and 90 % of the instances were first known (T_HALF, T_90)
  read -r KNOWN HEALTHY < <(status_of "$C_RUN")
  [ -n "$T_HALF" ] || [ $((2 * KNOWN)) -lt "$WANT" ] || T_HALF=$(now)
  [ -n "$T_90" ] || [ $((10 * KNOWN)) -lt $((9 * WANT)) ] || T_90=$(now)
  [ "$KNOWN" -ge "$WANT" ]
}
udp_errors() { # PID...: UDP receive-buffer drops (RcvbufErrors) in the namespaces of these processes, summed
  local p
  for p in "$@"; do cat /proc/"$p"/net/snmp 2>/dev/null; done | snmp_rcvbuf
}
udp_errors_ns() { # NS...: the same, of namespaces (with or without a process in them)
  local ns
  for ns in "$@"; do ip netns exec "$ns" cat /proc/net/snmp 2>/dev/null; done | snmp_rcvbuf
}
snmp_rcvbuf() {
  awk '
    $1 == "Udp:" && $2 !~ /^[0-9]+$/ { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") c = i; next }
    $1 == "Udp:" && c { n += $c }
    END { print n + 0 }'
}
all_healthy() { read -r KNOWN HEALTHY < <(status_of "$C_RUN"); [ "$HEALTHY" -ge "$WANT" ]; }
consumer_up() { XDG_RUNTIME_DIR="$C_RUN" timeout 5 "$AMB" status --json 2>/dev/null | grep -q '"node"'; }
etcd_up() { timeout 5 ip netns exec "$NS_E" etcdctl --endpoints "http://$E_IP:2379" endpoint health >/dev/null 2>&1; }
delta() { # "A..." "B..." SECONDS: per-second rates of B - A, pairwise
  awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN{n = split(a, x, " "); split(b, y, " ");
    for (i = 1; i <= n; i++) printf "%.3f ", (y[i] - x[i]) / t; print ""}'
}
put_rates() { # PREFIX RATES: mdns (v4+v6), etcd, quic, all frames: pkt/s and kB/s
  local r; read -r -a r <<<"$2"
  put "$1_pps" "$(calc "${r[0]} + ${r[2]}" 1)"; put "$1_kBps" "$(calc "(${r[1]} + ${r[3]}) / 1000" 2)"
  put "$1_v6_pps" "$(calc "${r[2]}" 1)"
  put "etcd_${1#mdns_}_pps" "$(calc "${r[4]}" 1)"; put "etcd_${1#mdns_}_kBps" "$(calc "${r[5]} / 1000" 2)"
  put "quic_${1#mdns_}_pps" "$(calc "${r[6]}" 1)"; put "quic_${1#mdns_}_kBps" "$(calc "${r[7]} / 1000" 2)"
  put "frames_${1#mdns_}_pps" "$(calc "${r[8]}" 1)"; put "frames_${1#mdns_}_kBps" "$(calc "${r[9]} / 1000" 2)"
}

run_fleet() { # N MODE
  local n=$1 mode=$2 i mdns=(--interface eth0) reg=() prov=() pids=() specs=() logs=() etcd_pid="" c_pid sampler
  local t_first t_conv t_last t_healthy c0 c1 c2 c3 t_r0 t_r1 cpu0=() cpu1=() sum0 sum1 tag peak
  RUN="$mode-$n"; RUNDIR="$WORK/run-$RUN"; mkdir -p "$RUNDIR"
  tag="r$RANDOM"
  WANT=$((2 * n))
  case $mode in etcd) mdns=(--no-mdns); reg=(--registry "$ETCD_URL") ;; etcd+mdns) reg=(--registry "$ETCD_URL") ;; esac
  put hosts "$n"; put mode "$mode"
  case $mode in mdns) put mode_label "mDNS" ;; etcd) put mode_label "etcd (mDNS off)" ;; etcd+mdns) put mode_label "etcd + mDNS" ;; esac
  say "run $RUN: $n hosts, $WANT instances, discovery $mode"

  if [ ${#reg[@]} -gt 0 ]; then
    spawn "$RUNDIR/etcd.log" ip netns exec "$NS_E" etcd --name scale --data-dir "$RUNDIR/etcd-data" \
      --listen-client-urls "http://$E_IP:2379" --advertise-client-urls "http://$E_IP:2379" \
      --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
      --initial-cluster scale=http://127.0.0.1:2380
    etcd_pid=$LAST_PID
    if ! until_true 30 etcd_up; then fail "etcd did not answer within 30 s: $(tail -n 2 "$RUNDIR/etcd.log" | tr '\n' ' ')"; stop_pids "$etcd_pid"; return; fi
  fi

  # the consumer: every service of the fleet
  specs=("redis:6379")
  for i in $(seq 1 "$n"); do specs+=("svc-$i:$((20000 + i))"); done
  C_RUN="$RUNDIR/c.run"; mkdir -m 700 "$C_RUN"
  spawn "$RUNDIR/consumer.log" ip netns exec "$NS_C" env XDG_RUNTIME_DIR="$C_RUN" "$AMB" connect "${specs[@]}" \
    "${mdns[@]}" --node "consumer-$tag" --mesh-key-file "$KEY" --bind "$C_IP" --drain-timeout 1s "${reg[@]}"
  c_pid=$LAST_PID
  if ! until_true 20 consumer_up; then fail "the consumer did not come up: $(tail -n 3 "$RUNDIR/consumer.log" | tr '\n' ' ')"; stop_pids "$c_pid" ${etcd_pid:+"$etcd_pid"}; return; fi
  sleep 1

  # the 1-s sampler of the bridge counters (for the peaks)
  (
    end=$((SECONDS + 600 + REST + n))
    while [ $SECONDS -lt $end ]; do echo "$(now) $(counters)"; sleep 1; done
  ) >"$RUNDIR/samples.txt" 2>/dev/null &
  sampler=$!; PIDS+=("$sampler")

  local ue_c0 ue_c1 ue_c2 ue_p0 ue_p1
  ue_c0=$(udp_errors "$c_pid"); ue_p0=$(udp_errors_ns "${HOST_NS[@]:0:$n}")
  T_HALF=""; T_90=""
  c0=$(counters); t_first=$(now)
  for i in $(seq 1 "$n"); do
    mkdir -m 700 "$RUNDIR/h$i.run"
    spawn "$RUNDIR/h$i.log" ip netns exec "$ID-h$i" env XDG_RUNTIME_DIR="$RUNDIR/h$i.run" "$AMB" announce \
      "redis:6379=127.0.0.1:$TPORT" "svc-$i:7000=127.0.0.1:$TPORT" \
      "${mdns[@]}" --node "h$i-$tag" --mesh-key-file "$KEY" --bind "$(host_ip "$i")" --drain-timeout 1s "${reg[@]}"
    prov+=("$LAST_PID"); logs+=("$RUNDIR/h$i.log")
  done
  if until_true $((60 + n)) all_known; then
    t_conv=$(now); c1=$(counters); ue_c1=$(udp_errors "$c_pid")
  else
    t_conv=""; c1=$(counters); ue_c1=$(udp_errors "$c_pid")
    fail "the consumer knew $KNOWN of $WANT instances after $((60 + n)) s"
  fi
  t_last=$("$PY" "$H" lastlog announcing "${logs[@]}")
  local started
  started=$(grep -l announcing "${logs[@]}" 2>/dev/null | wc -l)
  [ "$started" = "$n" ] || fail "only $started of $n providers logged \"announcing\""
  if [ -n "$t_conv" ]; then
    put conv_last "$(calc "$t_conv - ${t_last:-$t_first}" 2)"
    put conv_first "$(calc "$t_conv - $t_first" 2)"
    put conv_half "$(calc "${T_HALF:-$t_conv} - ${t_last:-$t_first}" 2)"
    put conv_90 "$(calc "${T_90:-$t_conv} - ${t_last:-$t_first}" 2)"
    put_rates mdns_start "$(delta "$c0" "$c1" "$(calc "$t_conv - $t_first" 3)")"
    if until_true 30 all_healthy; then
      t_healthy=$(now); put healthy_last "$(calc "$t_healthy - ${t_last:-$t_first}" 2)"
    else
      fail "the consumer saw $HEALTHY of $WANT instances healthy 30 s after all were known"
    fi
    say "run $RUN: all $WANT known $(calc "$t_conv - ${t_last:-$t_first}" 2) s after the last announce ($(calc "$t_conv - $t_first" 2) s after the first start)"
  fi

  # at rest
  sleep "$SETTLE"
  c2=$(counters); t_r0=$(now)
  # totals: the start (first provider started until all known), and the start with its tail
  # (until the rest window begins: announcements repeated, the consumer's backed-off queries)
  local a b; read -r -a a <<<"$c0"; read -r -a b <<<"$c1"
  put mdns_start_pkts "$(( b[0] + b[2] - a[0] - a[2] ))"; put mdns_start_bytes "$(( b[1] + b[3] - a[1] - a[3] ))"
  put etcd_start_bytes "$(( b[5] - a[5] ))"
  read -r -a b <<<"$c2"
  put mdns_tail_pkts "$(( b[0] + b[2] - a[0] - a[2] ))"; put etcd_tail_bytes "$(( b[5] - a[5] ))"
  for i in "${prov[@]}"; do cpu0+=("$(cpu_ticks "$i")"); done
  local cc0 ce0 cc1 ce1
  cc0=$(cpu_ticks "$c_pid"); ce0=0; [ -n "$etcd_pid" ] && ce0=$(cpu_ticks "$etcd_pid")
  sleep "$REST"
  c3=$(counters); t_r1=$(now)
  for i in "${prov[@]}"; do cpu1+=("$(cpu_ticks "$i")"); done
  cc1=$(cpu_ticks "$c_pid"); ce1=0; [ -n "$etcd_pid" ] && ce1=$(cpu_ticks "$etcd_pid")
  local win; win=$(calc "$t_r1 - $t_r0" 3)
  put_rates mdns_rest "$(delta "$c2" "$c3" "$win")"
  sum0=0; sum1=0
  for i in $(seq 0 $((n - 1))); do sum0=$((sum0 + cpu0[i])); sum1=$((sum1 + cpu1[i])); done
  put cpu_idle_provider "$(calc "100 * (${cpu1[0]} - ${cpu0[0]}) / $TCK / $win" 2)"
  put cpu_mean_provider "$(calc "100 * ($sum1 - $sum0) / $TCK / $win / $n" 2)"
  put cpu_all_providers "$(calc "100 * ($sum1 - $sum0) / $TCK / $win" 1)"
  put cpu_consumer "$(calc "100 * ($cc1 - $cc0) / $TCK / $win" 2)"
  [ -n "$etcd_pid" ] && put cpu_etcd "$(calc "100 * ($ce1 - $ce0) / $TCK / $win" 2)"
  put rss_provider "$(rss_mib "${prov[0]}")"
  put rss_consumer "$(rss_mib "$c_pid")"
  put rest_seconds "$(calc "$win" 1)"
  # peaks of the 1-s sampler: start (first provider until all known), rest window
  if [ -n "$t_conv" ]; then
    read -r -a peak < <("$PY" "$H" rates "$RUNDIR/samples.txt" "$t_first" "$t_conv")
    [ ${#peak[@]} -ge 4 ] && put mdns_start_peak_pps "$((peak[0] + peak[2]))" && put mdns_start_peak_kBps "$(calc "(${peak[1]} + ${peak[3]}) / 1000" 1)"
  fi
  read -r -a peak < <("$PY" "$H" rates "$RUNDIR/samples.txt" "$t_r0" "$t_r1")
  [ ${#peak[@]} -ge 4 ] && put mdns_rest_peak_pps "$((peak[0] + peak[2]))" && put mdns_rest_peak_kBps "$(calc "(${peak[1]} + ${peak[3]}) / 1000" 1)"
  for i in "${prov[@]}" "$c_pid"; do kill -0 "$i" 2>/dev/null || { fail "an ambassador died during the run"; break; }; done
  ue_c2=$(udp_errors "$c_pid"); ue_p1=$(udp_errors "${prov[@]}")
  put udp_drops_consumer_start "$((ue_c1 - ue_c0))"; put udp_drops_consumer_run "$((ue_c2 - ue_c0))"
  put udp_drops_providers_run "$((ue_p1 - ue_p0))"
  read -r KNOWN HEALTHY < <(status_of "$C_RUN")
  put known_at_end "$KNOWN"; put healthy_at_end "$HEALTHY"
  [ "$KNOWN" -ge "$WANT" ] || fail "the consumer knew only $KNOWN of $WANT instances at the end of the rest window"
  say "run $RUN: rest: mDNS $(got mdns_rest_pps) pkt/s, etcd $(got etcd_rest_kBps) kB/s, idle provider CPU $(got cpu_idle_provider) %"

  # stop the run: the fleet and the consumer (they drain 1 s), then etcd and the sampler
  pids=("${prov[@]}" "$c_pid")
  stop_pids "${pids[@]}"
  stop_pids "$sampler" ${etcd_pid:+"$etcd_pid"}
  sleep 2 # goodbyes and retransmissions out of the way of the next run
}

# ------------------------------------------------------------------ run
T0=$SECONDS
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
for n in $SIZES; do
  for m in $MODES; do run_fleet "$n" "$m"; done
done

# ------------------------------------------------------------------ report
META="$WORK/meta.tsv"
{
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'kernel\t%s\n' "$(uname -r)"
  printf 'nproc\t%s\n' "$(nproc)"
  printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
  printf 'load\t1-min load average %s at the start, %s at the end (the whole fleet shares these cores with whatever else runs)\n' "$LOAD0" "$(cut -d' ' -f1 /proc/loadavg)"
  printf 'ambassador\t%s\n' "$AMB_DESC"
  printf 'etcd\t%s (one member)\n' "${ETCD_VERSION:-?}"
  printf 'fleet\t%s\n' "sizes $SIZES; each host announces redis:6379 (shared: N instances) and svc-i:7000 (its own), both to one listener; one consumer connects to all N+1 services (2N instances); mDNS on each host's eth0 (IPv6 link-local addresses are there too, IPv6 mDNS is counted apart: raw mdns_*_v6_pps), etcd modes with --registry etcd://$E_IP:2379"
  printf 'windows\t%s\n' "start: from the first provider's start until the consumer lists all 2N instances; rest: $REST s, beginning $SETTLE s after that"
  printf 'counting\t%s\n' "nftables counters on the bridge's ingress: each frame once as sent, IP bytes without the Ethernet header (a multicast frame then reaches every one of the N+1 other hosts); mDNS = UDP port 5353 both families, etcd = TCP port 2379, QUIC = every other UDP"
} >"$META"
REPORT="$WORK/report.md"
"$PY" "$H" report "$RES" "$META" >"$REPORT" || { echo "scale.sh: report failed" >&2; exit 1; }
echo
cat "$REPORT"
echo

if [ "$WRITE" = 1 ]; then
  MARK='<!-- Everything below this line is kept when benches/scale.sh rewrites this file. -->'
  KEEP=""
  [ -f "$OUT" ] && KEEP=$(awk -v m="$MARK" 'f{print} $0==m{f=1}' "$OUT")
  {
    echo "# Benchmark results: how far one LAN goes"
    echo
    echo "Written by \`benches/scale.sh\` (issue 15 point 6): N hosts on one bridge, each an ambassador"
    echo "announcing two services, one consumer of all of them; through mDNS, then through etcd. Rerun"
    echo "with \`sudo benches/scale.sh\` (see benches/README.md)."
    echo
    cat "$REPORT"
    echo
    echo "$MARK"
    if [ -n "$KEEP" ]; then printf '%s\n' "$KEEP"; else printf '\n## Notes\n'; fi
  } >"$OUT.tmp" && mv "$OUT.tmp" "$OUT"
  say "wrote $OUT"
fi
say "done in $((SECONDS - T0)) s, $ERRORS error(s)"
[ "$ERRORS" = 0 ]
