#!/usr/bin/env python3
"""What kernel transmit stamps cost per probe (issue 12): an in-process A/B on loopback.

As root, from the repository root: ``python benchmarks/txstamp_cost.py [--targets N] [--rounds R]``

One ``Pinger.sweep`` of N loopback targets (127.1.0.0 upwards, count 1) with the kernel's
transmit stamps and one with them refused (``ProbeSocket.enable_tx_stamps`` returning False,
i.e. the user-space send clock), alternated R times; prints the CPU (``process_time``) per probe
of each run and the minimum per mode. Stamps cost one more ``recvmsg`` (on the error queue) per
probe. Only loopback is used; every run is bounded by its 2 s expiry.
"""

from __future__ import annotations

import argparse
import ipaddress
import time

import trio

from netdiag import Pinger
from netdiag.sock import ProbeSocket

ORIGINAL = ProbeSocket.enable_tx_stamps


async def run(targets: list[ipaddress.IPv4Address], stamps: bool) -> tuple[float, int, int]:
    ProbeSocket.enable_tx_stamps = ORIGINAL if stamps else (lambda self: False)  # type: ignore[method-assign]
    async with Pinger() as p:
        c0 = time.process_time()
        replies = kernel = 0
        async for r in p.sweep(targets, count=1, expiry=2):
            replies += r.kind == "reply"
            kernel += r.tx_kernel
        return time.process_time() - c0, replies, kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    base = int(ipaddress.IPv4Address("127.1.0.0"))
    targets = [ipaddress.IPv4Address(base + i) for i in range(min(args.targets, 1 << 16))]
    best: dict[bool, float] = {}
    for _ in range(args.rounds):
        for stamps in (False, True):
            cpu, replies, kernel = trio.run(run, targets, stamps)
            per = cpu / len(targets) * 1e6
            best[stamps] = min(best.get(stamps, per), per)
            print(f"{'kernel' if stamps else 'user  '} stamps: {per:6.1f} µs CPU/probe, "
                  f"{replies} replies, {kernel} timed by kernel TX stamps", flush=True)
    print(f"min: user {best[False]:.1f} µs/probe, kernel {best[True]:.1f} µs/probe, "
          f"cost {best[True] - best[False]:+.1f} µs/probe")


if __name__ == "__main__":
    main()
