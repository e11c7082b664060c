#!/usr/bin/env python3
"""Loopback check of what many concurrent calls cost beyond a sweep, and the garbage
collector's share of it (issue 12). Not part of run.py's table: no lab, no peers.

As root (raw sockets), from the repository root::

    python benchmarks/many_loopback.py 10000          # sweep N x 3, then N concurrent ping() x 3
    python benchmarks/many_loopback.py 10000 --no-gc  # the same with gc.disable()

Targets are 127.1.0.1 onwards (loopback: the kernel answers inside ``sendmsg``). Prints replies
and CPU per probe (``time.process_time``) for both shapes.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio

from netdiag import Ping, Pinger


async def main(n: int, count: int) -> None:
    first = int(ipaddress.IPv4Address("127.1.0.1"))
    addrs = [ipaddress.IPv4Address(first + i) for i in range(n)]
    total = n * count
    async with Pinger(privileged=True) as pinger:
        cpu0 = time.process_time()
        got = 0
        async for r in pinger.sweep(addrs, count=count, interval=0.2):
            got += r.kind == "reply"
        cpu = time.process_time() - cpu0
        print(f"sweep {n}x{count}: {got}/{total} replies, {cpu / total * 1e6:.1f} µs CPU/probe")
        got = 0

        async def one(addr: ipaddress.IPv4Address) -> None:
            nonlocal got
            async for rtt in pinger.ping(Ping(addr, count=count, interval=0.2)):
                got += rtt is not None

        cpu0 = time.process_time()
        async with trio.open_nursery() as nursery:
            for a in addrs:
                nursery.start_soon(one, a)
        cpu = time.process_time() - cpu0
        print(f"{n} concurrent ping() x{count}: {got}/{total} replies, "
              f"{cpu / total * 1e6:.1f} µs CPU/probe, "
              f"kernel drops {pinger.engine.stats.kernel_drops}")  # fmt: skip


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("n", type=int, nargs="?", default=10000)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--no-gc", action="store_true", help="gc.disable() first")
    args = p.parse_args()
    if not 1 <= args.n <= 65000:
        p.error("n must be between 1 and 65000 (127.1.0.1 onwards)")
    if args.no_gc:
        gc.disable()
    trio.run(main, args.n, args.count)
