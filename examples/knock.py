"""Knock on a few host:port targets concurrently over one Knocker (half-open TCP RTT).

Run as root (or with CAP_NET_RAW on the interpreter); loopback only by default:

    python examples/knock.py 127.0.0.1:22 [::1]:22
"""

from __future__ import annotations

import sys

import trio

from netdiag import Knock, Knocker, KnockStats


def split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


async def knock_one(knocker: Knocker, host: str, port: int) -> None:
    # The simple stream: the RTT when the port answered open, else None.
    seq = 1  # 1-based, as KnockResult.seq
    async for rtt in knocker.knock(Knock(host, port, count=4, interval=0.5, expiry=1.0)):
        print(
            f"{host} port {port} seq {seq}", "no SYN-ACK" if rtt is None else f"{rtt * 1e3:.3f} ms"
        )
        seq += 1


async def main(targets: list[str]) -> None:
    async with Knocker() as knocker:
        # Many knocks share the Knocker's sockets.
        async with trio.open_nursery() as nursery:
            for target in targets:
                nursery.start_soon(knock_one, knocker, *split(target))
        # The richer stream: open / closed (RST) / filtered / ICMP error, RTT of every answer.
        host, port = split(targets[0])
        results = await knocker.collect(Knock(host, port, count=3, interval=0.2, expiry=1.0))
        for r in results:
            print(f"port {r.port} {r.label}: seq={r.seq} rtt={r.rtt} sport={r.sport}")
        s = KnockStats.of(results)
        print(f"{s.sent} sent, {s.open} open, {s.closed} closed, {s.filtered} filtered")


if __name__ == "__main__":
    trio.run(main, sys.argv[1:] or ["127.0.0.1:22", "[::1]:22"])
