#!/usr/bin/env python3
"""Open N idle TCP connections to a Redis-speaking port and hold them.

Each connection does one PING/PONG (so the tunnel stream really exists end to end), then
stays open and idle. Prints one line "held=N failed=F seconds=S errors=..." when all are
open, then waits for a line on stdin (or --hold-max seconds) before closing them all and
printing "closed=N". Every socket operation has a timeout; the whole run is bounded.
"""
import argparse
import collections
import socket
import sys
import time
import select
import selectors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=10.0, help="per batch")
    ap.add_argument("--hold-max", type=float, default=120.0)
    a = ap.parse_args()

    held = []
    failed = 0
    errors = collections.Counter()
    t0 = time.monotonic()
    remaining = a.count
    while remaining > 0 and time.monotonic() - t0 < 300:
        n = min(a.batch, remaining)
        remaining -= n
        batch = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(a.timeout)
            try:
                s.connect((a.host, a.port))
                s.sendall(b"PING\r\n")
                s.setblocking(False)
                batch.append([s, b""])
            except OSError as e:
                failed += 1
                errors["connect: " + (e.strerror or type(e).__name__)] += 1
                s.close()
        # read every PONG of this batch, bounded by the batch timeout (epoll: fds go past 1024)
        pending = {item[0].fileno(): item for item in batch}
        sel = selectors.DefaultSelector()
        for fd in pending:
            sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + a.timeout
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                fd = key.fd
                item = pending[fd]
                try:
                    data = item[0].recv(64)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data = None
                    errors["recv: " + (e.strerror or type(e).__name__)] += 1
                if not data or item[1] + data != b"+PONG\r\n"[: len(item[1] + data)]:
                    if data is None:
                        pass
                    elif not data:
                        errors["closed by the proxy before PONG"] += 1
                    else:
                        errors["unexpected reply %r" % (item[1] + data)[:20]] += 1
                    failed += 1
                    sel.unregister(fd)
                    item[0].close()
                    del pending[fd]
                    continue
                item[1] += data
                if item[1] == b"+PONG\r\n":
                    sel.unregister(fd)
                    held.append(item[0])
                    del pending[fd]
        sel.close()
        for item in pending.values():
            errors["no PONG within %.0fs" % a.timeout] += 1
            failed += 1
            item[0].close()
        if failed > max(100, a.count // 10):
            errors["gave up after %d failures" % failed] += 1
            break
    took = time.monotonic() - t0
    err = ";".join("%s x%d" % (k, v) for k, v in errors.most_common(5)) or "none"
    print("held=%d failed=%d seconds=%.2f errors=%s" % (len(held), failed, took, err), flush=True)

    # hold until told (a line or EOF on stdin) or until --hold-max
    select.select([sys.stdin], [], [], a.hold_max)
    # check that the held connections are still alive: one more PING on a sample
    alive = 0
    sample = held[:: max(1, len(held) // 100)]
    for s in sample:
        try:
            s.setblocking(True)
            s.settimeout(5)
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                alive += 1
        except OSError:
            pass
    for s in held:
        s.close()
    print("closed=%d sample_alive=%d/%d" % (len(held), alive, len(sample)), flush=True)


if __name__ == "__main__":
    main()
