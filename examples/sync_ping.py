"""Ping, trace and sweep from a plain script: no event loop, no async (netdiag.sync).

Run as root (or with CAP_NET_RAW on the interpreter); loopback only by default:

    python examples/sync_ping.py 127.0.0.1 ::1
"""

import sys

from netdiag import sync

hosts = sys.argv[1:] or ["127.0.0.1", "::1"]
for host in hosts:
    r = sync.ping(host, count=4, interval=0.2)
    avg = f"{r.rtt.avg * 1e3:.3f} ms" if r.rtt.avg is not None else "-"
    print(f"{r.addr}: {r.received}/{r.sent} received, loss {r.loss:.0%}, avg {avg}")
route = sync.trace(hosts[0], proto="icmp")
print(f"route to {route.target}: {len(route.hops)} hops, reached={route.reached}")
for report in sync.sweep(hosts, count=2, interval=0.1):
    print(f"sweep {report.addr}: {report.received}/{report.sent}")
