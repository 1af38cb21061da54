#!/usr/bin/env python3
"""Helpers of benches/scale.sh (issue 15 point 6), one subcommand each:

  listen PORT NS...        one TCP listener on 127.0.0.1:PORT in each network namespace NS (entered
                           with setns), all served by this one process: it accepts and closes, so
                           that every provider's health check finds its target up, at the cost of one
                           process for the whole fleet. Prints "ready" once every socket listens.
  lastlog PATTERN FILE...  the latest time stamp (Unix seconds) of a log line containing PATTERN
                           in any FILE (plain-format ambassador logs: 2026-11-22T05:50:04.490514Z ...)
  known FILE               from `ambassador status --json` (FILE): "instances healthy" over every
                           connect[] service of the node(s)
  rates FILE T0 T1         from the sampler's lines (epoch then counters), the peak 1-s rate of each
                           counter between T0 and T1: "pkts bytes" per counter, space-separated
  report TSV META          the Markdown report of the results (key\tvalue lines)
"""

import ctypes
import json
import os
import selectors
import socket
import sys
from datetime import datetime, timezone

CLONE_NEWNET = 0x40000000


def listen(port, namespaces):
    libc = ctypes.CDLL(None, use_errno=True)
    sel = selectors.DefaultSelector()
    for ns in namespaces:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            sys.exit(f"setns {ns}: {os.strerror(ctypes.get_errno())}")
        os.close(fd)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(128)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            try:
                c, _ = key.fileobj.accept()
                c.close()
            except OSError:
                pass


def log_epoch(line):
    ts = line.split(None, 1)[0] if line.strip() else ""
    if not ts.endswith("Z"):
        return None
    try:
        return datetime.strptime(ts[:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def lastlog(pattern, files):
    best = None
    for f in files:
        try:
            with open(f, errors="replace") as fh:
                for line in fh:
                    if pattern in line:
                        t = log_epoch(line)
                        if t is not None and (best is None or t > best):
                            best = t
        except OSError:
            pass
    print(f"{best:.3f}" if best is not None else "")


def known(path):
    try:
        with open(path) as f:
            nodes = json.load(f)
    except (OSError, ValueError):
        print("0 0")
        return
    if isinstance(nodes, dict):
        nodes = [nodes]
    n = h = 0
    for node in nodes:
        for c in node.get("connect") or []:
            for i in c.get("instances") or []:
                n += 1
                h += i.get("health") == "healthy"
    print(n, h)


def rates(path, t0, t1):
    rows = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) > 1:
                try:
                    rows.append([float(p[0])] + [int(x) for x in p[1:]])
                except ValueError:
                    pass
    rows = [r for r in rows if t0 - 1.5 <= r[0] <= t1 + 1.5]
    width = min((len(r) for r in rows), default=1) - 1
    peak = [0.0] * width
    for a, b in zip(rows, rows[1:]):
        dt = b[0] - a[0]
        if dt <= 0.2:
            continue
        for k in range(width):
            peak[k] = max(peak[k], (b[k + 1] - a[k + 1]) / dt)
    print(" ".join(f"{x:.0f}" for x in peak))


def fmt(v, unit=""):
    if v in (None, ""):
        return "—"
    return f"{v}{unit}"


def report(tsv, meta):
    res = {}
    order = []
    with open(tsv) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) != 3:
                continue
            run, k, v = p
            if run not in res:
                res[run] = {}
                order.append(run)
            res[run][k] = v
    m = {}
    with open(meta) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            m[k] = v
    out = []
    out.append(f"- date: {m.get('date', '?')}; kernel {m.get('kernel', '?')}; {m.get('nproc', '?')} cores ({m.get('cpu', '?')})")
    out.append(f"- ambassador: {m.get('ambassador', '?')}; etcd {m.get('etcd', '?')}")
    out.append(f"- {m.get('load', '')}")
    out.append(f"- fleet: {m.get('fleet', '')}")
    out.append(f"- windows: {m.get('windows', '')}")
    out.append(f"- counting: {m.get('counting', '')}")
    out.append("")
    out.append("Convergence: seconds from the last provider's last `announcing` log line until the consumer's")
    out.append("status lists half, 90 %, all of the 2N instances, and all of them healthy; the last column from")
    out.append("the first provider's start (the fleet's own start-up on these cores included).")
    out.append("")
    out.append("| hosts | discovery | 50 % known | 90 % known | all known | all healthy | all known, from first start | consumer UDP drops (start / whole run) | providers' UDP drops (whole run) |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for run in order:
        r = res[run]
        cells = [r.get("hosts"), r.get("mode_label", r.get("mode")), r.get("conv_half"), r.get("conv_90"),
                 r.get("conv_last"), r.get("healthy_last"), r.get("conv_first"),
                 f"{r.get('udp_drops_consumer_start', '—')} / {r.get('udp_drops_consumer_run', '—')}",
                 r.get("udp_drops_providers_run")]
        out.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    out.append("")
    out.append("Traffic on the bridge (as sent, per second; kB = 1000 bytes of IP packets) during the start (first")
    out.append("provider started until all known; peak: the busiest second of it) and at rest; CPU at rest as % of")
    out.append("one core: host 1's provider, the mean of all providers, the consumer, etcd.")
    out.append("")
    out.append("| hosts | discovery | mDNS start pkt/s | mDNS start kB/s | mDNS start peak pkt/s | mDNS rest pkt/s | mDNS rest kB/s | mDNS rest peak pkt/s | etcd start kB/s | etcd rest kB/s | QUIC rest kB/s | idle provider CPU % | mean provider CPU % | consumer CPU % | etcd CPU % | provider RSS MiB |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in order:
        r = res[run]
        etcd = r.get("mode", "").startswith("etcd")
        cells = [
            r.get("hosts"), r.get("mode_label", r.get("mode")),
            r.get("mdns_start_pps"), r.get("mdns_start_kBps"), r.get("mdns_start_peak_pps"),
            r.get("mdns_rest_pps"), r.get("mdns_rest_kBps"), r.get("mdns_rest_peak_pps"),
            r.get("etcd_start_kBps") if etcd else None, r.get("etcd_rest_kBps") if etcd else None,
            r.get("quic_rest_kBps"),
            r.get("cpu_idle_provider"), r.get("cpu_mean_provider"), r.get("cpu_consumer"),
            r.get("cpu_etcd") if etcd else None, r.get("rss_provider"),
        ]
        out.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    errs = [(run, res[run]["error"]) for run in order if "error" in res[run]]
    if errs:
        out.append("")
        for run, e in errs:
            out.append(f"- error in {run}: {e}")
    out.append("")
    out.append("Raw figures per run (bytes are IP bytes as the bridge's nftables counters see them, Ethernet header excluded):")
    out.append("")
    out.append("```")
    for run in order:
        out.append(run + ": " + " ".join(f"{k}={v}" for k, v in res[run].items()))
    out.append("```")
    print("\n".join(out))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "listen":
        listen(int(args[0]), args[1:])
    elif cmd == "lastlog":
        lastlog(args[0], args[1:])
    elif cmd == "known":
        known(args[0])
    elif cmd == "rates":
        rates(args[0], float(args[1]), float(args[2]))
    elif cmd == "report":
        report(args[0], args[1])
    else:
        sys.exit(f"scale.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
