"""netdiag.aio: the trio objects under ``asyncio.run`` (issue 16).

Loopback tests run in this process (privileged); lab tests run a script in the lab's ``src``
namespace (``lab.python``), so that trio's I/O thread and asyncio's threads are born there and
never leak into this process's thread pools. What must hold: results identical in kind to the
trio API; one object shared by 100 concurrent asyncio tasks; cancelling an asyncio task stops
its probes and leaves the demux table empty by the time the cancellation has propagated;
exceptions arrive as themselves; the guest run is shared and restarts cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from lab import Lab

from netdiag import Knock, Ping, PingStats, ResolveError, Trace
from netdiag.aio import AsyncioKnocker, AsyncioPinger, AsyncioTracer
from netdiag.testing import UNRESOLVABLE

ROOT = Path(__file__).resolve().parents[1]
ADDRS = [pytest.param("127.0.0.1", id="v4"), pytest.param("::1", id="v6")]


def run(coro_fn, *args):  # type: ignore[no-untyped-def]
    """asyncio.run with a bound: a hang fails the test instead of the suite."""

    async def bounded():  # type: ignore[no-untyped-def]
        return await asyncio.wait_for(coro_fn(*args), 30)

    return asyncio.run(bounded())


# -- loopback ----------------------------------------------------------------------------------


@pytest.mark.privileged
@pytest.mark.parametrize("addr", ADDRS)
def test_ping_rtts_in_order_under_asyncio_run(addr: str) -> None:
    async def main() -> tuple[list[float | None], list[str]]:
        async with AsyncioPinger() as p:
            rtts = [rtt async for rtt in p.ping(Ping(addr, count=3, interval=0.01))]
            results = await p.collect(Ping(addr, count=2, interval=0.01))
            assert p.engine.table == {}
        return rtts, [r.kind for r in results]

    rtts, kinds = run(main)
    assert len(rtts) == 3 and all(isinstance(r, float) and r > 0 for r in rtts)
    assert kinds == ["reply", "reply"]


@pytest.mark.privileged
def test_100_concurrent_tasks_share_one_pinger() -> None:
    async def one(p: AsyncioPinger, i: int) -> PingStats:
        addr = "127.0.0.1" if i % 2 else "::1"
        if i % 3 == 0:  # the in-order RTT stream and the rich one, mixed
            rtts = [rtt async for rtt in p.ping(Ping(addr, count=3, interval=0.01))]
            assert len(rtts) == 3 and None not in rtts
            return PingStats(sent=3, received=3)
        return PingStats.of(await p.collect(Ping(addr, count=3, interval=0.01)))

    async def main() -> list[PingStats]:
        async with AsyncioPinger() as p:
            stats = await asyncio.gather(*(one(p, i) for i in range(100)))
            assert p.engine.table == {}
            return stats

    stats = run(main)
    assert len(stats) == 100
    assert all((s.sent, s.received) == (3, 3) for s in stats)


@pytest.mark.privileged
def test_cancelling_a_task_mid_ping_releases_its_keys() -> None:
    async def main() -> None:
        async with AsyncioPinger() as p:
            first = asyncio.Event()

            async def long_ping() -> None:
                async for _ in p.results(Ping("127.0.0.1", count=1000, interval=0.5)):
                    first.set()

            task = asyncio.create_task(long_ping())
            await first.wait()
            # The answered probe's key is still held (a duplicate or late reply would need it).
            assert len(p.engine.table) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert p.engine.table == {}
            # The object is still fine for the next call.
            assert [r.kind for r in await p.collect(Ping("127.0.0.1", count=1))] == ["reply"]

    run(main)


@pytest.mark.privileged
def test_leaving_the_loop_early_with_aclosing_releases_the_keys() -> None:
    async def main() -> None:
        async with AsyncioPinger() as p:
            stream = p.ping(Ping("::1", count=1000, interval=0.5))
            async with contextlib.aclosing(stream) as rtts:
                async for _ in rtts:
                    break
            assert p.engine.table == {}

    run(main)


@pytest.mark.privileged
def test_exceptions_arrive_as_themselves() -> None:
    async def main() -> None:
        async with AsyncioPinger() as p:
            # Refused by the IDNA codec before any lookup: no DNS traffic.
            with pytest.raises(ResolveError, match="invalid"):
                await p.collect(Ping(UNRESOLVABLE))
            with pytest.raises(ValueError, match="rate"):
                async for _ in p.sweep(["127.0.0.1"], rate=-1.0):
                    pass
            with pytest.raises(ValueError, match="at least one target"):
                async for _ in p.sweep([]):
                    pass
            with pytest.raises(TypeError, match=r"netdiag\.Ping"):
                await p.collect("127.0.0.1")  # type: ignore[arg-type]
            # After all that, the object still works.
            assert len(await p.collect(Ping("127.0.0.1", count=1))) == 1
        async with AsyncioTracer() as t:
            with pytest.raises(ResolveError):
                await t.collect(Trace(UNRESOLVABLE))

    run(main)


@pytest.mark.privileged
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
def test_privilege_error_on_entering_arrives_as_itself() -> None:
    """Without CAP_NET_RAW (root with it dropped, as tests/test_unprivileged.py does), entering
    an AsyncioKnocker raises PrivilegeError itself, and the guest run is released: the next
    object on the loop (a Pinger on ICMP datagram sockets, or the same error) still works."""
    code = textwrap.dedent(
        """
        import asyncio
        from netdiag import PrivilegeError, sync
        from netdiag.aio import AsyncioKnocker, AsyncioTracer

        async def main():
            for cls in (AsyncioKnocker, AsyncioTracer):
                try:
                    async with cls(**({"privileged": True} if cls is AsyncioTracer else {})):
                        print("entered")
                except PrivilegeError as e:
                    print(cls.__name__, type(e).__name__, "CAP_NET_RAW" in str(e))

        asyncio.run(main())
        try:
            sync.knock("127.0.0.1", 9)
        except PrivilegeError as e:
            print("sync", type(e).__name__)
        """
    )
    drop = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw"]
    proc = subprocess.run(
        [*drop, sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == [
        "AsyncioKnocker PrivilegeError True",
        "AsyncioTracer PrivilegeError True",
        "sync PrivilegeError",
    ]


def test_arguments_are_checked_at_once_and_use_needs_async_with() -> None:
    with pytest.raises(TypeError, match="privileged"):
        AsyncioPinger(privileged="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rcvbuf"):
        AsyncioKnocker(rcvbuf=1)

    async def main() -> None:
        p = AsyncioPinger()
        with pytest.raises(RuntimeError, match="async with"):
            await p.collect(Ping("127.0.0.1", count=1))

    run(main)


@pytest.mark.privileged
def test_a_call_running_when_the_object_closes_raises() -> None:
    async def main() -> None:
        pinger = AsyncioPinger()
        first = asyncio.Event()

        async def long_ping() -> None:
            async for _ in pinger.results(Ping("127.0.0.1", count=1000, interval=0.5)):
                first.set()

        async with pinger:
            task = asyncio.create_task(long_ping())
            await first.wait()
        with pytest.raises(RuntimeError, match="closed during the call"):
            await task
        assert pinger.engine.table == {}
        with pytest.raises(RuntimeError, match="async with"):
            await pinger.collect(Ping("127.0.0.1", count=1))

    run(main)


@pytest.mark.privileged
def test_tracer_and_knocker_share_the_loop_with_a_pinger() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]

        async def main() -> None:
            async with AsyncioPinger() as p, AsyncioTracer() as t, AsyncioKnocker() as k:
                route, hops, knocks, pings = await asyncio.gather(
                    t.collect(Trace("127.0.0.1", proto="icmp")),
                    _hops(t, Trace("::1")),
                    k.collect(Knock("127.0.0.1", port, count=2, interval=0.01)),
                    p.collect(Ping("::1", count=2, interval=0.01)),
                )
                assert route.reached and len(route.hops) == 1
                assert hops[-1].last and hops[-1].reached
                assert [r.kind for r in knocks] == ["open", "open"]
                assert [r.kind for r in pings] == ["reply", "reply"]
                opened = [rtt async for rtt in k.knock(Knock("127.0.0.1", port, count=1))]
                assert len(opened) == 1 and opened[0] is not None
                with socket.socket() as spare:  # a port nothing listens on
                    spare.bind(("127.0.0.1", 0))
                    closed = spare.getsockname()[1]
                pairs = [("127.0.0.1", port), ("127.0.0.1", closed)]
                sweep = k.sweep(pairs, count=2, interval=0.01)
                swept = sorted([(r.port, r.kind) async for r in sweep])
                assert swept == sorted([(port, "open"), (closed, "closed")] * 2)
                assert t.mode == "raw"

        run(main)


async def _hops(t: AsyncioTracer, trace: Trace) -> list:  # type: ignore[type-arg]
    return [hop async for hop in t.results(trace)]


@pytest.mark.privileged
def test_guest_run_restarts_across_loops_and_objects() -> None:
    async def main() -> int:
        n = 0
        for _ in range(3):  # enter and leave: the guest run stops and starts again
            async with AsyncioPinger() as p:
                n += len(await p.collect(Ping("127.0.0.1", count=1)))
        return n

    assert run(main) == 3
    assert run(main) == 3  # a second asyncio.run: a new loop, a new guest run
    # and the thread is free for trio again afterwards
    assert trio.run(trio.sleep, 0) is None


@pytest.mark.privileged
def test_sweep_through_asyncio_matches_native() -> None:
    targets = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"]

    async def main() -> list[tuple[str, int, str]]:
        async with AsyncioPinger() as p:
            sweep = p.sweep(targets, count=2, interval=0.01)
            got = [(str(r.addr), r.seq, r.kind) async for r in sweep]
            return sorted(got)

    got = run(main)
    want = sorted((a, s, "reply") for a in targets for s in (1, 2))
    assert got == want


@pytest.mark.privileged
def test_a_slow_consumer_gets_everything_in_batches() -> None:
    """More results than one batch holds: the trio side waits for the consumer, nothing is
    lost or reordered within a target."""
    n = 600

    async def main() -> list[int]:
        async with AsyncioPinger() as p:
            seqs = []
            async for r in p.results(Ping("127.0.0.1", count=n, interval=0.0)):
                seqs.append(r.seq)
                if len(seqs) % 100 == 0:
                    await asyncio.sleep(0.01)
            return seqs

    import netdiag.aio as aio

    old, aio._BATCH_LIMIT = aio._BATCH_LIMIT, 64
    try:
        seqs = run(main)
    finally:
        aio._BATCH_LIMIT = old
    assert sorted(seqs) == list(range(1, n + 1))


# -- the core stays free of asyncio --------------------------------------------------------


def test_core_imports_no_asyncio() -> None:
    """The trio path (every netdiag module except netdiag.aio and the netdiag.testing helper)
    must not import asyncio; the probe is checked to see asyncio when netdiag.aio is imported,
    so it cannot pass vacuously."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import netdiag
        # netdiag.testing is the suite's lab helper (it imports pytest): not the trio path.
        names = [m.name for m in pkgutil.walk_packages(netdiag.__path__, "netdiag.")
                 if m.name != "netdiag.aio" and not m.name.endswith("__main__")
                 and not m.name.startswith("netdiag.testing")]
        for name in names:
            importlib.import_module(name)
        before = "asyncio" in sys.modules
        import netdiag.aio
        print(len(names), before, "asyncio" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert int(out[0]) >= 15  # netdiag, ping, trace, knock, sync, cli, wire.*...
    assert out[1:] == ["False", "True"]


# -- the lab -----------------------------------------------------------------------------------

LAB_SCRIPT = """
import asyncio, json, sys
from netdiag import Ping, PingStats, Trace, Knock
from netdiag.aio import AsyncioPinger, AsyncioTracer, AsyncioKnocker

v4, v6, silent, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

async def main():
    out = {}
    async with AsyncioPinger() as p, AsyncioTracer() as t, AsyncioKnocker() as k:
        async def one(i):
            addr = v4 if i % 2 else v6
            return PingStats.of(await p.collect(Ping(addr, count=2, interval=0.01))).received
        got = await asyncio.gather(*(one(i) for i in range(100)))
        out["received"] = sum(got)
        out["table_after_gather"] = len(p.engine.table)

        started = asyncio.Event()
        async def stuck():
            async for r in p.results(Ping(silent, count=50, interval=0.05, expiry=30)):
                pass
        async def watch():
            while not p.engine.table:
                await asyncio.sleep(0.01)
            started.set()
        task = asyncio.create_task(stuck())
        await asyncio.wait_for(watch(), 10)
        out["table_in_flight"] = len(p.engine.table)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            out["cancelled"] = True
        out["table_after_cancel"] = len(p.engine.table)

        routes = await asyncio.gather(*(t.collect(Trace(a, proto=pr)) for a in (v4, v6)
                                        for pr in ("udp", "icmp", "tcp")))
        out["routes"] = [[r.reached, len(r.hops)] for r in routes]
        knocks = await asyncio.gather(*(k.collect(Knock(a, port, count=2, interval=0.01))
                                        for a in (v4, v6)))
        out["knocks"] = [[r.kind for r in ks] for ks in knocks]
    print(json.dumps(out))

asyncio.run(asyncio.wait_for(main(), 60))
"""


def test_asyncio_api_in_the_lab(clean_lab: Lab, dst_listener: int) -> None:
    lab = clean_lab
    # dst drops echo requests to a second address, so the cancelled ping is really in flight.
    lab.exec("dst", "ip", "addr", "add", "198.18.6.99/32", "dev", "lo")
    try:
        lab.nft(
            "dst",
            """
            table inet t {
                chain in {
                    type filter hook input priority 0;
                    ip daddr 198.18.6.99 drop
                }
            }""",
        )
        proc = lab.python(
            "src",
            "-c",
            LAB_SCRIPT,
            lab.dst.v4,
            lab.dst.v6,
            "198.18.6.99",
            dst_listener,
            timeout=90,
        )
    finally:
        lab.exec("dst", "ip", "addr", "del", "198.18.6.99/32", "dev", "lo", check=False)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["received"] == 200
    assert out["table_after_gather"] == 0
    assert out["table_in_flight"] >= 1
    assert out["cancelled"] is True
    assert out["table_after_cancel"] == 0
    # src -> r1 -> r2a|r2b -> r3 -> dst: four hops, reached, for every protocol and family.
    assert out["routes"] == [[True, 4]] * 6
    assert out["knocks"] == [["open", "open"], ["open", "open"]]
