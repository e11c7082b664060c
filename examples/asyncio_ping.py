"""Ping from asyncio: one AsyncioPinger shared by concurrent asyncio tasks (netdiag.aio).

Run as root (or with CAP_NET_RAW on the interpreter); loopback only by default:

    python examples/asyncio_ping.py 127.0.0.1 ::1
"""

from __future__ import annotations

import asyncio
import sys

from netdiag import Ping, PingStats
from netdiag.aio import AsyncioPinger


async def ping_one(pinger: AsyncioPinger, host: str) -> None:
    seq = 0
    async for rtt in pinger.ping(Ping(host, count=4, interval=0.2, expiry=1.0)):
        seq += 1
        print(f"{host} seq {seq}", "timeout" if rtt is None else f"RTT {rtt * 1e3:.3f} ms")


async def main(hosts: list[str]) -> None:
    async with AsyncioPinger() as pinger:
        # Many asyncio tasks share the Pinger's sockets.
        await asyncio.gather(*(ping_one(pinger, h) for h in hosts))
        # The rich stream, collected, and its statistics.
        stats = PingStats.of(await pinger.collect(Ping(hosts[0], count=3, interval=0.1)))
        print(f"{hosts[0]}: {stats.received}/{stats.sent} received, p50 {stats.rtt.p50}")
        # A mass ping: one sender for every target, results as they come.
        async for r in pinger.sweep(hosts, count=1):
            print(f"sweep {r.addr} {r.kind} {r.rtt}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["127.0.0.1", "::1"]))
