"""No leaks (issue 6): cancelled probes leave nothing behind; open/close cycles cost nothing.

An agent runs for months, starting and abandoning diagnostics all the time. Two things must
hold: cancelling any number of in-flight probes empties the demux table, ends every task the
call started and gives back every reserved resource (the Knocker's source ports); and opening
and closing the objects over and over leaks neither file descriptors nor memory.

The in-flight probes go to dst, which drops them (nft), so they are really outstanding when the
call is cancelled: 10,000 echo requests, 10,000 SYNs (each holding a reserved port), and ~10,000
trace probes spread over many concurrent traces.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trio.testing
from lab import Lab

from netdiag import Knock, Knocker, Ping, Pinger, Trace, Tracer
from netdiag.engine import Lease

N = 10_000

DROP_ALL_FROM_SRC = """
table inet leaks {
    chain in {
        type filter hook input priority 0;
        ip saddr 198.18.1.2 drop
        ip6 saddr 2001:db8:1::2 drop
    }
}
"""


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_leases() -> int:
    """Lease objects still reachable anywhere: the table, the expiry heap, a session."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Lease))


async def _fill_then_cancel(
    results: Callable[[], AsyncIterator[Any]], in_flight: Callable[[], int], want: int
) -> int:
    """Start iterating ``results()``, wait until ``want`` probes are in flight (or 20 s), then
    cancel the iteration. Returns how many were in flight at the moment of cancelling."""
    seen = 0
    async with trio.open_nursery() as nursery:

        async def consume() -> None:
            async for _ in results():
                pass

        nursery.start_soon(consume)
        with trio.move_on_after(20):
            while in_flight() < want:
                await trio.sleep(0.01)
        seen = in_flight()
        nursery.cancel_scope.cancel()
    return seen


@pytest.mark.parametrize("v", [4, 6])
async def test_cancel_10000_pings_in_flight(clean_lab: Lab, v: int) -> None:
    lab = clean_lab
    lab.nft("dst", DROP_ALL_FROM_SRC)
    with lab.enter("src"):
        async with Pinger() as pinger:
            engine = pinger.engine
            tasks = set(engine.nursery.child_tasks)
            ping = Ping(lab.dst.addr(v), count=N, interval=0, expiry=600)  # type: ignore[arg-type]
            seen = await _fill_then_cancel(
                lambda: pinger.results(ping), lambda: len(engine.table), N
            )
            assert seen == N
            await trio.testing.wait_all_tasks_blocked()
            assert engine.table == {}
            assert set(engine.nursery.child_tasks) == tasks
            # Their memory too, long before the 600 s deadlines (the expiry heap compacts).
            assert live_leases() == 0
            # Identifiers are given back too: a new ping to the same target still works.
            lab.nft_flush("dst")
            rs = await pinger.collect(Ping(lab.dst.addr(v), count=2, interval=0.01))  # type: ignore[arg-type]
            assert [r.kind for r in rs] == ["reply", "reply"]
            assert pinger._ident_pool._used == {}


async def test_cancel_a_10000_target_sweep(clean_lab: Lab) -> None:
    """The mass-ping path: one sender task, 10,000 distinct targets, cancelled mid-flight."""
    lab = clean_lab
    # 10,000 addresses of a lab prefix no node has; r1 drops them before its route lookup
    # (which would answer "no route").
    lab.nft(
        "r1",
        """
        table inet leaks {
            chain pre {
                type filter hook prerouting priority 0;
                ip6 daddr 2001:db8:ff::/48 drop
            }
        }""",
    )
    targets = [f"2001:db8:ff::{i:x}" for i in range(1, N + 1)]
    with lab.enter("src"):
        async with Pinger() as pinger:
            engine = pinger.engine
            tasks = set(engine.nursery.child_tasks)
            seen = await _fill_then_cancel(
                lambda: pinger.sweep(targets, count=1, expiry=600),
                lambda: len(engine.table),
                N,
            )
            assert seen == N
            await trio.testing.wait_all_tasks_blocked()
            assert engine.table == {}
            assert set(engine.nursery.child_tasks) == tasks
            assert pinger._ident_pool._used == {}
            assert live_leases() == 0


@pytest.mark.parametrize("v", [4, 6])
async def test_cancel_10000_knocks_releases_every_port(clean_lab: Lab, v: int) -> None:
    lab = clean_lab
    lab.nft("dst", DROP_ALL_FROM_SRC)
    with lab.enter("src"):
        async with Knocker() as knocker:
            engine = knocker.engine
            tasks = set(engine.nursery.child_tasks)
            before = fds()
            knock = Knock(lab.dst.addr(v), 80, count=N, interval=0, expiry=600)  # type: ignore[arg-type]
            seen = await _fill_then_cancel(
                lambda: knocker.results(knock), lambda: len(knocker.reserved_ports()), N
            )
            assert seen == N  # 10,000 SYNs out, each holding its own source port
            await trio.testing.wait_all_tasks_blocked()
            assert engine.table == {}
            assert knocker.reserved_ports() == set()
            assert fds() == before  # the port-holding sockets are closed
            assert set(engine.nursery.child_tasks) == tasks
            assert live_leases() == 0


async def test_cancel_concurrent_traces_with_10000_probes_in_flight(clean_lab: Lab) -> None:
    """165 ICMP traces x 64 TTLs, all silent past r3. After cancelling, keys linger for the
    documented grace time (so stragglers are recognised as late), then everything is gone."""
    lab = clean_lab
    lab.nft("dst", DROP_ALL_FROM_SRC)
    traces = 165
    with lab.enter("src"):
        async with Tracer() as tracer:
            engine = tracer.engine
            tasks = set(engine.nursery.child_tasks)
            # reach=64: probe every TTL at once (the default probes 8 ahead of what answered).
            t = Trace(lab.dst.v6, proto="icmp", flows=1, max_flows=1, max_ttl=64, window=64,
                      reach=64, expiry=1.0)  # fmt: skip
            # Routers answer TTL 1-3 at once; the rest (61 per trace) wait for their expiry.
            want = traces * 61

            async def one() -> None:
                async for _ in tracer.results(t):
                    pass

            async with trio.open_nursery() as nursery:
                for _ in range(traces):
                    nursery.start_soon(one)
                with trio.move_on_after(20):
                    while sum(1 for lease in engine.table.values() if lease.active) < want:
                        await trio.sleep(0.005)
                in_flight = sum(1 for lease in engine.table.values() if lease.active)
                nursery.cancel_scope.cancel()
            assert in_flight >= want >= N
            with trio.fail_after(10):
                while engine.table or set(engine.nursery.child_tasks) != tasks:
                    await trio.sleep(0.1)
            assert tracer._flows.blocks == {}


# -- open/close cycles -------------------------------------------------------------------------

CYCLES = 1000


async def _cycle(factory: Callable[[], Any]) -> None:
    async with factory():
        pass


@pytest.mark.privileged
@pytest.mark.parametrize("factory", [Pinger, Knocker, Tracer], ids=lambda f: f.__name__)
async def test_open_close_cycles_leak_no_fds_and_no_memory(factory: Callable[[], Any]) -> None:
    """1,000 open/close cycles after a warm-up: the fd count is unchanged and Python memory
    grows by less than 100 bytes per cycle (a leak of one socket object, lease or task per
    cycle is far bigger than that, so the test can fail; allocator noise is far smaller)."""
    for _ in range(50):  # warm-up: lazy imports, caches, interned strings
        await _cycle(factory)
    gc.collect()
    fd_before = fds()
    tracemalloc.start()
    try:
        gc.collect()
        mem_before = tracemalloc.get_traced_memory()[0]
        for _ in range(CYCLES):
            await _cycle(factory)
        gc.collect()
        mem_after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert fds() == fd_before
    assert mem_after - mem_before < 100 * CYCLES, (mem_before, mem_after)


class _Sink:
    def __init__(self) -> None:
        self.expired: list[Any] = []

    def on_event(self, lease: Lease, event: Any, packet: Any) -> None:
        pass

    def on_expire(self, lease: Lease) -> None:
        self.expired.append(lease.key)


def test_expiry_heap_compacts_without_losing_a_live_deadline() -> None:
    """The heap drops answered/released entries early (bounded memory), but every probe still
    active expires exactly once, at its deadline."""
    from netdiag.engine import Engine

    async def main() -> None:
        sink = _Sink()
        async with Engine() as engine:
            leases = [engine.register(i, sink, 3600.0 + i) for i in range(3000)]
            for lease in leases[:2000:2]:
                lease.finish()  # answered: deadline gone, key kept
            for lease in leases[1:2000:2]:
                lease.release()  # cancelled
            assert engine.heap_size <= 1000 + 1024  # compacted, not 3000
            await trio.sleep(3600.0 + 3000)
            assert sorted(sink.expired) == list(range(2000, 3000))
            for lease in leases:
                lease.release()
            assert engine.table == {} and engine.heap_size == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
