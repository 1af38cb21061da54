#!/usr/bin/env python3
"""Small helpers for benches/mesh.sh.

  helpers.py ports N             N free TCP+UDP ports on 127.0.0.1, outside the ephemeral range
  helpers.py peak OUT PID...     sample RSS of each PID plus its children every 100 ms until
                                 SIGTERM (bounded by 30 min), then write "PID peak_kib" lines to OUT
  helpers.py iperf JSONFILE      "bits_per_second bytes" of an iperf3 -J result (receiver side)
  helpers.py iperfcpu JSONFILE   "client_s server_s": CPU seconds iperf3 says each end spent
  helpers.py rbench CSVFILE      "TEST rps p50 p99" lines of a redis-benchmark --csv result
  helpers.py median V...         median of the numbers given
  helpers.py report RESULTS META MODE [lan]  the markdown report (stdout); lan: the LAN mode's
  helpers.py targets RESULTS META  the LAN mode's targets (issue 16), one PASS/FAIL line each
  helpers.py perfstat CSV BYTES  syscalls and context switches per MB from `perf stat -x,` output
  helpers.py perfstat-req CSV N  the same per request (N requests)
  helpers.py perfcat             group `perf report --sort dso,sym --stdio` (stdin) into categories
"""
import os
import random
import signal
import socket
import statistics
import sys
import time


def cmd_ports(n):
    lo, hi = 32768, 60999
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
    except OSError:
        pass
    # candidates outside the ephemeral range, so that no outgoing connection takes them
    pool = [p for p in range(10000, 65000) if not (lo <= p <= hi)] or list(range(10000, 65000))
    random.shuffle(pool)
    got = []
    for p in pool:
        if len(got) == n:
            break
        ok = True
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            got.append(p)
    if len(got) < n:
        sys.exit("no free ports")
    print(" ".join(map(str, got)))


def tree_rss_kib(pid):
    total = 0
    todo = [pid]
    seen = set()
    while todo and len(seen) < 100000:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for tid in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, tid)) as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return total


def cmd_peak(out, pids):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    peak = {p: 0 for p in pids}
    t0 = time.monotonic()
    while not stop and time.monotonic() - t0 < 1800:
        for p in pids:
            peak[p] = max(peak[p], tree_rss_kib(p))
        time.sleep(0.1)
    with open(out, "w") as f:
        for p in pids:
            f.write("%d %d\n" % (p, peak[p]))


def cmd_iperf(path):
    import json

    with open(path) as f:
        j = json.load(f)
    if "error" in j:
        sys.exit("iperf3: " + j["error"])
    r = j["end"]["sum_received"]
    print("%.0f %d" % (r["bits_per_second"], r["bytes"]))


def cmd_iperfcpu(path):
    """CPU seconds of the iperf3 client and server during the test (iperf3's own figures)."""
    import json

    with open(path) as f:
        j = json.load(f)
    end = j["end"]
    secs = end["sum_sent"]["seconds"]
    cpu = end["cpu_utilization_percent"]
    print("%.4f %.4f" % (cpu["host_total"] / 100 * secs, cpu["remote_total"] / 100 * secs))


def cmd_rbench(path):
    import csv

    with open(path) as f:
        rows = list(csv.reader(f))
    head = rows[0]
    for row in rows[1:]:
        d = dict(zip(head, row))
        print(d["test"], d["rps"], d["p50_latency_ms"], d["p99_latency_ms"])


# ---------------------------------------------------------------- perf categories

CATEGORIES = [
    ("crypto (AES-GCM, header protection)", ("ring::", "ring_core", "aes_", "aesni", "gcm", "ghash", "chacha", "poly1305")),
    ("TLS record layer (rustls, OpenSSL's libssl)", ("rustls", "ssl3_", "tls13_", "SSL_", "ossl_", "EVP_", "tls_")),
    ("quinn-proto (QUIC state machine)", ("quinn_proto::",)),
    ("quinn / quinn-udp (endpoint, socket I/O glue)", ("quinn::", "quinn_udp::")),
    ("tokio (runtime, wakers, channels)", ("tokio::", "mio::")),
    ("memcpy/memmove (user)", ("memmove", "memcpy", "memset")),
    ("allocator and buffers (malloc, free, bytes)", ("malloc", "free", "_int_", "realloc", "alloc::", "bytes::", "cfree")),
    ("kernel: scheduling and wake-ups", ("finish_task_switch", "schedule", "try_to_wake_up", "_raw_spin_unlock_irq",
                                         "futex", "pick_next", "enqueue_", "dequeue_", "update_curr", "ttwu",
                                         "switch_mm", "__switch_to", "pv_queued_spin", "native_queued")),
    ("kernel: copies to/from user", ("copy_to_iter", "copy_from_iter", "copy_user", "check_object_size",
                                     "virt_addr_valid", "check_heap_object", "rep_movs")),
    ("kernel: TCP/UDP/IP stack", ("tcp_", "udp", "ip_", "ip6", "__dev_", "dev_", "skb", "sk_", "sock_", "__sock",
                                  "loopback", "net_", "netif", "napi", "inet", "__ip", "__tcp", "__udp", "bbr", "__sk",
                                  "raw_spin_lock_bh", "release_sock", "lock_sock", "softirq", "__kfree_skb",
                                  "__alloc_skb", "kmem_cache", "page_frag", "__napi", "gso", "gro")),
    ("kernel: syscall entry/exit, epoll, fd", ("do_syscall", "entry_SYSCALL", "syscall_exit", "fdget", "__fget",
                                               "ep_", "epoll", "__x64_sys", "syscall", "read_tsc", "ktime")),
]


def cmd_perfstat(path, nbytes):
    ev = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or line.startswith("#"):
                continue
            try:
                ev[parts[2]] = float(parts[0])
            except ValueError:
                pass
    mb = max(nbytes / 1e6, 1e-9)
    cpu = ev.get("task-clock", 0) / 1e3  # ms -> s
    print("CPU %.2f s for %.0f MB (%.2f s/GB); context switches %.0f (%.1f per MB)" % (
        cpu, mb, cpu / (mb / 1e3), ev.get("context-switches", 0), ev.get("context-switches", 0) / mb))
    names = [("raw_syscalls:sys_enter", "all syscalls")] + [
        ("syscalls:sys_enter_" + n, n) for n in ("sendto", "sendmsg", "write", "recvfrom", "recvmmsg", "futex", "epoll_wait")]
    out = []
    for key, label in names:
        n = ev.get(key)
        if n:
            out.append("%s %.0f (%.0f B each)" % (label, n, nbytes / n))
    print("syscalls: " + "; ".join(out))


def cmd_perfstat_req(path, requests):
    ev = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or line.startswith("#"):
                continue
            try:
                ev[parts[2]] = float(parts[0])
            except ValueError:
                pass
    n = max(requests, 1)
    cpu = ev.get("task-clock", 0) / 1e3  # ms -> s
    print("CPU %.2f s for %.0f requests (%.1f us each); context switches %.2f per request" % (
        cpu, n, cpu * 1e6 / n, ev.get("context-switches", 0) / n))
    names = [("raw_syscalls:sys_enter", "all syscalls")] + [
        ("syscalls:sys_enter_" + k, k) for k in ("sendto", "sendmsg", "write", "recvfrom", "recvmmsg", "futex", "epoll_wait")]
    out = ["%s %.2f" % (label, ev[key] / n) for key, label in names if ev.get(key)]
    print("syscalls per request: " + "; ".join(out))


def cmd_perfcat():
    import re

    tot = {}
    other_k = other_u = 0.0
    line_re = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$")
    for line in sys.stdin:
        m = line_re.match(line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        for name, keys in CATEGORIES:
            if name.startswith("kernel") != (kind == "k"):
                continue
            if any(k in sym for k in keys):
                tot[name] = tot.get(name, 0.0) + pct
                break
        else:
            if kind == "k":
                other_k += pct
            else:
                other_u += pct
    rows = sorted(tot.items(), key=lambda kv: -kv[1])
    rows += [("kernel: other", other_k), ("user: other", other_u)]
    for name, pct in rows:
        print("%6.1f%%  %s" % (pct, name))


# ---------------------------------------------------------------- report

PATHS = ["direct", "socat", "stunnel", "haproxy", "ambassador"]

# (key, label, format, better: "hi" or "lo")
ROWS = [
    ("bulk_up1", "bulk 1 stream, client→target (Gbit/s)", "gbit", "hi"),
    ("bulk_down1", "bulk 1 stream, target→client (-R) (Gbit/s)", "gbit", "hi"),
    ("bulk_up8", "bulk 8 streams, client→target (Gbit/s)", "gbit", "hi"),
    ("bulk_down8", "bulk 8 streams, target→client (Gbit/s)", "gbit", "hi"),
    ("cpu_gb", "CPU s per GB, both proxies (bulk runs)", "f2", "lo"),
    ("cpu_gb1", "CPU s per GB, both proxies (bulk 1 stream)", "f2", "lo"),
    ("mcpu_gb", "CPU s per GB, whole machine: clients, proxies, targets, kernel (bulk 1 stream)", "f2", "lo"),
    ("ecpu_gb", "of which iperf3 client and server (bulk 1 stream)", "f2", "lo"),
    ("ocpu_gb", "of which elsewhere: softirq on other cores, kernel threads (bulk 1 stream)", "f2", "lo"),
    ("busy_pct", "cores busy during bulk 1 stream (% of both)", "f1", "-"),
    ("steal_pct", "CPU stolen by the hypervisor then (% of both)", "f1", "-"),
    ("get_rps_1", "GET rps, 1 client", "int", "hi"),
    ("get_p50_1", "GET p50 ms, 1 client", "ms", "lo"),
    ("get_p99_1", "GET p99 ms, 1 client", "ms", "lo"),
    ("set_rps_1", "SET rps, 1 client", "int", "hi"),
    ("set_p50_1", "SET p50 ms, 1 client", "ms", "lo"),
    ("set_p99_1", "SET p99 ms, 1 client", "ms", "lo"),
    ("get_rps_50", "GET rps, 50 clients", "int", "hi"),
    ("get_p50_50", "GET p50 ms, 50 clients", "ms", "lo"),
    ("get_p99_50", "GET p99 ms, 50 clients", "ms", "lo"),
    ("set_rps_50", "SET rps, 50 clients", "int", "hi"),
    ("set_p50_50", "SET p50 ms, 50 clients", "ms", "lo"),
    ("set_p99_50", "SET p99 ms, 50 clients", "ms", "lo"),
    ("cpu_req_1", "CPU µs per request, both proxies, 1 client", "f1", "lo"),
    ("cpu_req_50", "CPU µs per request, both proxies, 50 clients", "f1", "lo"),
    ("mcpu_req_50", "CPU µs per request, whole machine: client, proxies, redis, kernel, 50 clients", "f1", "lo"),
    ("busy_req_50", "cores busy during the 50-client runs (% of both)", "f1", "-"),
    ("conn_rate", "new connections/s (PING, 32 parallel)", "int", "hi"),
    ("conn_p50", "connect+PING+close p50 ms", "ms", "lo"),
    ("conn_errors", "failed connections in that test (– = none)", "int", "lo"),
    ("rss_idle", "idle RSS MiB (larger of the pair)", "mib", "lo"),
    ("rss_redis", "peak RSS MiB, redis 1+50 clients (larger)", "mib", "lo"),
    ("rss_bulk", "peak RSS MiB, bulk runs (larger)", "mib", "lo"),
]

# LAN mode only, after the CPU row: the lossy runs ({loss} is the loss percentage)
LOSS_ROWS = [
    ("bulk_loss_up1", "bulk 1 stream, client→target, {loss} % loss on B's input (Gbit/s)", "gbit", "hi"),
    ("bulk_loss_down1", "bulk 1 stream, target→client, {loss} % loss on B's input (Gbit/s)", "gbit", "hi"),
    ("loss_pct", "packets dropped by the loss rule in those runs (%)", "f2", "-"),
    ("loss_pkt_bytes", "mean size of the packets entering B in those runs (bytes)", "int", "-"),
]


def rows_for(lan, loss):
    if not lan:
        return ROWS
    i = [k for k, *_ in ROWS].index("cpu_gb") + 1
    lossy = [(k, label.format(loss=loss), kind, b) for k, label, kind, b in LOSS_ROWS]
    return ROWS[:i] + lossy + ROWS[i:]


def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "gbit":
        return "%.2f" % v
    if kind == "int":
        return "{:,.0f}".format(v)
    if kind == "ms":
        return "%.3f" % v
    if kind in ("mib", "f1"):
        return "%.1f" % v
    return "%.2f" % v


def load(path):
    d = {}
    d["errors"] = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                continue
            k, m, v = parts
            if m == "error":
                d["errors"].append((k, v))
                continue
            try:
                x = float(v)
            except ValueError:
                d[(k, m)] = v
                continue
            cur = d.get((k, m))
            if isinstance(cur, list):
                cur.append(x)
            else:
                d[(k, m)] = [x]
    # several rounds: keep the raw values, report the median
    raw = {}
    for key, v in list(d.items()):
        if isinstance(key, tuple) and isinstance(v, list):
            raw[key] = v
            d[key] = statistics.median(v)
    d["raw"] = raw
    return d


def load_meta(meta):
    m = {}
    with open(meta) as f:
        for line in f:
            if "\t" in line:
                k, v = line.rstrip("\n").split("\t", 1)
                m[k] = v
    return m


def lan_targets(r):
    """Issue 16, point 2: (name, PASS/FAIL/n/a, detail) against the haproxy-TLS pair of the run."""
    def val(path, key):
        v = r.get((path, key))
        return v if isinstance(v, float) else None

    out = []
    for key, name, op, want in (
            ("bulk_up1", "bulk 1 stream client→target ≥ 1.2× haproxy", ">=", 1.2),
            ("bulk_down1", "bulk 1 stream target→client ≥ 1.2× haproxy", ">=", 1.2),
            ("cpu_gb", "CPU s per GB, both proxies ≤ 0.8× haproxy", "<=", 0.8),
            ("get_rps_50", "GET rps at 50 clients ≥ 1.5× haproxy", ">=", 1.5),
            ("get_p50_1", "GET p50 at 1 client ≤ 0.9× haproxy", "<=", 0.9),
            ("conn_rate", "new connections/s ≥ 5× haproxy", ">=", 5.0),
            ("bulk_loss_up1", "lossy bulk 1 stream client→target ≥ 1.3× haproxy", ">=", 1.3),
            ("bulk_loss_down1", "lossy bulk 1 stream target→client ≥ 1.3× haproxy", ">=", 1.3)):
        a, h = val("ambassador", key), val("haproxy", key)
        if a is None or not h:
            out.append((name, "n/a", "not measured in this run"))
            continue
        x = a / h
        ok = x >= want if op == ">=" else x <= want
        out.append((name, "PASS" if ok else "FAIL", "%.2f× haproxy (%s against %s; want %s %.1f×)" % (
            x, fmt_plain(a), fmt_plain(h), op, want)))
    return out


def fmt_plain(v):
    return "%.3g" % v if v < 1000 else "{:,.0f}".format(v)


def cmd_targets(results, meta):
    for name, res, detail in lan_targets(load(results)):
        print("target %s: %s: %s" % (res, name, detail))


def cmd_report(results, meta, mode, setup="loopback"):
    r = load(results)
    m = load_meta(meta)
    lan = setup == "lan"
    rows = rows_for(lan, m.get("loss_pct", "?"))

    def val(path, key):
        v = r.get((path, key))
        return v if isinstance(v, float) else None

    out = []
    w = out.append
    w("## Results (%s run%s)" % (mode, ", LAN mode" if lan else ""))
    w("")
    w("| | |")
    w("|---|---|")
    for k in ("date", "kernel", "nproc", "cpu", "load", "ambassador", "discovery", "network", "loss",
              "tcp congestion control", "tools", "settings"):
        if k in m:
            w("| %s | %s |" % (k, m[k]))
    w("")
    present = [p for p in PATHS if any(isinstance(k, tuple) and k[0] == p for k in r)]
    others = [p for p in present if p != "ambassador"]
    # ratio columns: the ambassador against every other path; in LAN mode also haproxy ÷ direct
    ratios = [("ambassador", o) for o in others] if "ambassador" in present else []
    if lan and "haproxy" in present and "direct" in present:
        ratios.append(("haproxy", "direct"))
    short = {"ambassador": "amb"}
    head = "| measure | " + " | ".join(present)
    if ratios:
        head += " | " + " | ".join("%s/%s" % (short.get(a, a), b) for a, b in ratios)
    w(head + " |")
    w("|---" * (1 + len(present) + len(ratios)) + "|")
    for key, label, kind, better in rows:
        cells = [fmt(val(p, key), kind) for p in present]
        for num, den in ratios:
            a, b = val(num, key), val(den, key)
            cells.append("%.2f×" % (a / b) if a is not None and b and better != "-" else "–")
        w("| %s | %s |" % (label, " | ".join(cells)))
    w("")
    if lan:
        w("Ratios are the first path ÷ the second (amb = ambassador): above 1 is better for rates "
          "and throughput, below 1 is better for latency, CPU and memory.")
    else:
        w("Ratios are ambassador ÷ other path: above 1 is better for rates and throughput, "
          "below 1 is better for latency, CPU and memory.")
    w("")

    if lan:
        w("### Targets (issue 16, point 2: against the haproxy-TLS pair of this run)")
        w("")
        w("| target | | measured |")
        w("|---|---|---|")
        for name, res, detail in lan_targets(r):
            w("| %s | **%s** | %s |" % (name, res, detail))
        w("")
    else:
        loopback_targets(w, val)
    per_process(w, r, val, present, rows)
    print("\n".join(out))


def loopback_targets(w, val):
    # targets
    A = lambda k: val("ambassador", k)  # noqa: E731
    S = lambda k: val("stunnel", k)  # noqa: E731
    targets = []

    def ratio_target(name, key, op, want):
        a, s = A(key), S(key)
        if a is None or not s:
            targets.append((name, "n/a", "–"))
            return
        x = a / s
        ok = x >= want if op == ">=" else x <= want
        targets.append((name, "PASS" if ok else "MISS", "%.2f× stunnel (want %s %.1f×)" % (x, op, want)))

    ratio_target("bulk 1 stream client→target ≥ 1.0× stunnel", "bulk_up1", ">=", 1.0)
    ratio_target("bulk 1 stream target→client ≥ 1.0× stunnel", "bulk_down1", ">=", 1.0)
    ratio_target("bulk 8 streams client→target ≥ 1.0× stunnel", "bulk_up8", ">=", 1.0)
    ratio_target("bulk 8 streams target→client ≥ 1.0× stunnel", "bulk_down8", ">=", 1.0)
    ratio_target("GET rps at 50 clients ≥ 1.5× stunnel", "get_rps_50", ">=", 1.5)
    ratio_target("GET p50 at 1 client ≤ 1.1× stunnel", "get_p50_1", "<=", 1.1)
    ratio_target("new connections/s ≥ 5× stunnel", "conn_rate", ">=", 5.0)
    for key, name, lim in (("rss_redis", "peak RSS per ambassador under 50-client load ≤ 20 MiB", 20.0),
                           ("rss_idle", "idle RSS per ambassador ≤ 10 MiB", 10.0)):
        c, s = val("ambassador", key + "_c"), val("ambassador", key + "_s")
        if c is None or s is None:
            targets.append((name, "n/a", "–"))
        else:
            ok = max(c, s) <= lim
            targets.append((name, "PASS" if ok else "MISS",
                            "connect %.1f MiB, announce %.1f MiB" % (c, s)))
    held, want = val("ambassador", "hold_held"), val("ambassador", "hold_count")
    if held is None or want is None:
        targets.append(("10,000 concurrent idle connections through one pair", "n/a", "–"))
    else:
        ok = held >= want and want >= 10000
        pc, ps = val("ambassador", "hold_per_conn_c"), val("ambassador", "hold_per_conn_s")
        detail = "%d of %d held" % (held, want)
        if pc is not None and ps is not None:
            detail += "; %.1f KiB/conn in connect, %.1f KiB/conn in announce" % (pc, ps)
        if want < 10000:
            detail += " (smaller count in this mode)"
        targets.append(("10,000 concurrent idle connections through one pair",
                        "PASS" if ok else ("MISS" if want >= 10000 else "n/a"), detail))
    w("### Targets (issue 4)")
    w("")
    w("| target | | measured |")
    w("|---|---|---|")
    for name, res, detail in targets:
        w("| %s | **%s** | %s |" % (name, res, detail))
    w("")


def per_process(w, r, val, present, rows):
    # per-process detail
    w("### Per process")
    w("")
    w("| path | process | idle RSS MiB | peak RSS MiB, redis load | peak RSS MiB, bulk | CPU s/GB (bulk) | context switches/MB (bulk; threads that outlive the connection only) |")
    w("|---|---|---|---|---|---|---|")
    for p in present:
        if p == "direct":
            continue
        for side, name in (("c", "client side"), ("s", "server side")):
            w("| %s | %s | %s | %s | %s | %s | %s |" % (
                p, r.get((p, "proc_" + side), name),
                fmt(val(p, "rss_idle_" + side), "mib"), fmt(val(p, "rss_redis_" + side), "mib"),
                fmt(val(p, "rss_bulk_" + side), "mib"), fmt(val(p, "cpu_gb_" + side), "f2"),
                fmt(val(p, "ctx_mb_" + side), "f2")))
    w("")
    if val("ambassador", "hold_count") is not None:
        w("### Idle connections held through the ambassador pair")
        w("")
        w("| | connect | announce |")
        w("|---|---|---|")
        for key, label in (("hold_rss0", "RSS before (MiB)"), ("hold_rss1", "RSS holding (MiB)"),
                           ("hold_rss2", "RSS after closing (MiB)"), ("hold_fds1", "open fds holding"),
                           ("hold_threads1", "threads holding")):
            kind = "mib" if key.startswith("hold_rss") else "int"
            w("| %s | %s | %s |" % (label, fmt(val("ambassador", key + "_c"), kind),
                                   fmt(val("ambassador", key + "_s"), kind)))
        pc, ps = val("ambassador", "hold_per_conn_c"), val("ambassador", "hold_per_conn_s")
        w("| RSS growth per connection (KiB) | %s | %s |" % (fmt(pc, "f2"), fmt(ps, "f2")))
        w("")
        w("%d of %d connections opened and answered PING in %.1f s; %s." % (
            val("ambassador", "hold_held") or 0, val("ambassador", "hold_count") or 0,
            val("ambassador", "hold_seconds") or 0, r.get(("ambassador", "hold_note"), "")))
        w("")
    raw = r["raw"]
    if any(len(v) > 1 for v in raw.values()):
        w("<details><summary>Raw figures of each round (the tables show medians)</summary>")
        w("")
        w("| measure | " + " | ".join(present) + " |")
        w("|---" * (1 + len(present)) + "|")
        for key, label, kind, _ in rows:
            cells = [", ".join(fmt(x, kind) for x in raw.get((p, key), [])) or "–" for p in present]
            if any(c != "–" for c in cells):
                w("| %s | %s |" % (label, " | ".join(cells)))
        w("")
        w("</details>")
        w("")
    errs = r["errors"]
    if errs:
        w("### Errors")
        w("")
        for p, v in errs:
            w("- %s: %s" % (p, v))
        w("")


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    c = a[0]
    if c == "ports":
        cmd_ports(int(a[1]))
    elif c == "peak":
        cmd_peak(a[1], [int(x) for x in a[2:]])
    elif c == "iperf":
        cmd_iperf(a[1])
    elif c == "iperfcpu":
        cmd_iperfcpu(a[1])
    elif c == "rbench":
        cmd_rbench(a[1])
    elif c == "median":
        print(statistics.median(float(x) for x in a[1:]))
    elif c == "perfstat":
        cmd_perfstat(a[1], float(a[2]))
    elif c == "perfstat-req":
        cmd_perfstat_req(a[1], float(a[2]))
    elif c == "perfcat":
        cmd_perfcat()
    elif c == "report":
        cmd_report(*a[1:5])
    elif c == "targets":
        cmd_targets(a[1], a[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
