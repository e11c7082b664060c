#!/usr/bin/env python3
"""Knock RTTs with and without kernel transmit stamps: an in-process A/B on loopback.

As root, from the repository root: ``python benchmarks/knock_txstamp.py [--count N] [--rounds R]``

A listener on 127.0.0.1 (an ephemeral port); per round, one ``Knocker.collect`` of N SYNs
5 ms apart with the kernel's transmit stamps, and one with them refused
(``ProbeSocket.enable_tx_stamps`` returning False: the clock read before ``sendmsg``),
alternated R times. Prints per mode the median and p99 RTT (µs) over all rounds, and how many
results say ``tx_kernel``. The difference is the send path (Python after the clock read, the
syscall, the qdisc) that a stamped RTT no longer contains. Loopback only; bounded by N x R.
"""

from __future__ import annotations

import argparse
import socket
import statistics

import trio

from netdiag import Knock, Knocker
from netdiag.sock import ProbeSocket

ORIGINAL = ProbeSocket.enable_tx_stamps


async def run(port: int, count: int, stamps: bool) -> tuple[list[float], int]:
    ProbeSocket.enable_tx_stamps = ORIGINAL if stamps else (lambda self: False)  # type: ignore[method-assign]
    async with Knocker() as k:
        rs = await k.collect(Knock("127.0.0.1", port, count=count, interval=0.005, expiry=1.0))
    return [r.rtt for r in rs if r.rtt is not None], sum(r.tx_kernel for r in rs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    out: dict[bool, list[float]] = {True: [], False: []}
    kernel = {True: 0, False: 0}
    try:
        for _ in range(args.rounds):
            for stamps in (True, False):
                rtts, k = trio.run(run, port, args.count, stamps)
                out[stamps] += rtts
                kernel[stamps] += k
    finally:
        listener.close()
    for stamps in (True, False):
        v = sorted(x * 1e6 for x in out[stamps])
        name = "kernel TX stamps" if stamps else "user-space clock"
        p99 = v[int(len(v) * 0.99) - 1]
        print(f"{name:17}  n={len(v):5}  tx_kernel={kernel[stamps]:5}  "
              f"median {statistics.median(v):6.1f} µs  p99 {p99:6.1f} µs")  # fmt: skip


if __name__ == "__main__":
    main()
