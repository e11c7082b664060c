"""Trace routes to a few hosts concurrently over one Tracer, printing hops as they settle.

Run as root (or with CAP_NET_RAW on the interpreter):

    python examples/trace.py 127.0.0.1 ::1

Each hop lists every interface that answered and which flows reached it: on a network with
load balancers, several interfaces share a TTL (the MDA keeps sending new flows until it is
95% sure it has seen them all).
"""

from __future__ import annotations

import sys

import trio

from netdiag import Trace, Tracer


async def trace_one(tracer: Tracer, host: str, proto: str) -> None:
    async for hop in tracer.results(Trace(host, proto=proto, expiry=1.0)):  # type: ignore[arg-type]
        if not hop.responders:
            print(f"{host} [{proto}] {hop.ttl:2d}  * ({hop.timeouts} probes unanswered)")
        for r in hop.responders:
            rtt = min(r.rtts) * 1000 if r.rtts else float("nan")
            tail = " (target)" if r.destination else f" {r.mark}" if r.mark else ""
            flows = list(r.flows)
            print(f"{host} [{proto}] {hop.ttl:2d}  {r.addr}  {rtt:.3f} ms  flows {flows}{tail}")


async def main(hosts: list[str]) -> None:
    async with Tracer() as tracer:
        # Many traces share the Tracer's sockets and its one demux table.
        async with trio.open_nursery() as nursery:
            for host in hosts:
                for proto in ("udp", "icmp"):
                    nursery.start_soon(trace_one, tracer, host, proto)
        # The collected form, with counters.
        route = await tracer.collect(Trace(hosts[0], proto="tcp", port=80, flows=3))
        print(
            f"{route.target}: {len(route.hops)} hops, reached={route.reached}, "
            f"{route.sent} probes in {route.elapsed * 1000:.1f} ms, {route.late} late"
        )


if __name__ == "__main__":
    trio.run(main, sys.argv[1:] or ["127.0.0.1"])
