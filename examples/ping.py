"""Ping a few hosts concurrently over one Pinger: the `async for rtt in pinger.ping(...)` loop.

Run as root (or with CAP_NET_RAW on the interpreter):

    python examples/ping.py 127.0.0.1 ::1
"""

from __future__ import annotations

import sys

import trio

from netdiag import Ping, Pinger, PingStats


async def ping_one(pinger: Pinger, host: str) -> None:
    seq = 0
    async for rtt in pinger.ping(Ping(host, count=4, interval=0.5, expiry=1.0)):
        seq += 1
        if rtt is None:
            print(f"{host} seq {seq} timeout")
        else:
            print(f"{host} seq {seq} RTT {rtt * 1000:.3f} ms")


async def main(hosts: list[str]) -> None:
    async with Pinger() as pinger:
        # Many pings share the Pinger's two sockets.
        async with trio.open_nursery() as nursery:
            for host in hosts:
                nursery.start_soon(ping_one, pinger, host)
        # The richer stream: every reply with TTL, size, duplicates, ICMP errors; and stats.
        results = await pinger.collect(Ping(hosts[0], count=3, interval=0.2))
        for r in results:
            print(r)
        stats = PingStats.of(results)
        print(f"{stats.received}/{stats.sent} received, p50 {stats.rtt.p50}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1:] or ["127.0.0.1", "::1"])
