"""Pinger over loopback: real raw sockets, no lab needed (but privileges are)."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys

import pytest
import trio
import trio.testing

from netdiag import FamilyUnavailableError, Ping, Pinger, PingStats
from netdiag.ping import PingResult
from netdiag.wire.bpf import Range

privileged = pytest.mark.privileged

LOOPBACKS = ["127.0.0.1", "::1"]


@privileged
@pytest.mark.parametrize("addr", LOOPBACKS)
async def test_ping_loopback_yields_rtts_in_order(addr: str) -> None:
    async with Pinger() as pinger:
        rtts = [rtt async for rtt in pinger.ping(Ping(addr, count=3, interval=0.05))]
        assert len(rtts) == 3
        assert all(r is not None and 0 <= r < 0.5 for r in rtts)
        assert pinger.engine.table == {}


@privileged
@pytest.mark.parametrize("addr", LOOPBACKS)
async def test_results_carry_ttl_size_responder(addr: str) -> None:
    async with Pinger() as pinger:
        results = await pinger.collect(Ping(addr, count=2, interval=0.01, size=100, ttl=7))
    assert [r.seq for r in sorted(results, key=lambda r: r.seq)] == [1, 2]
    for r in results:
        assert r.kind == "reply" and not r.duplicate and not r.late
        assert r.responder == ipaddress.ip_address(addr)
        assert r.size == 108  # ICMP header + payload
        assert r.ttl == 64  # the reply's TTL, not the one we sent
    stats = PingStats.of(results)
    assert (stats.sent, stats.received, stats.loss) == (2, 2, 0.0)


@privileged
async def test_many_concurrent_pings_share_one_pinger() -> None:
    """200 concurrent calls to several loopback targets: every request answered, none mixed."""
    targets = [f"127.0.0.{i}" for i in range(1, 11)] + ["::1"]
    got: dict[tuple[str, int], list[PingResult]] = {}
    async with Pinger() as pinger:

        async def one(n: int) -> None:
            addr = targets[n % len(targets)]
            rs = await pinger.collect(Ping(addr, count=5, interval=0.01, expiry=2))
            got[(addr, n)] = rs

        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(one, n)
        assert pinger.engine.table == {}
        assert pinger.engine.stats.sink_errors == 0
    for (addr, _), rs in got.items():
        replies = [r for r in rs if r.kind == "reply"]
        assert sorted(r.seq for r in replies) == [1, 2, 3, 4, 5]
        assert all(str(r.responder) == addr and str(r.addr) == addr for r in replies)
        assert not any(r.duplicate or r.late for r in rs)


@privileged
async def test_interval_is_honoured_without_waiting_for_replies() -> None:
    """Requests leave on schedule: 5 requests at 0.1 s take ~0.4 s even to a silent target."""
    async with Pinger() as pinger:
        start = trio.current_time()
        # 127.0.0.1 answers; the schedule, not the replies, paces the requests.
        results = await pinger.collect(Ping("127.0.0.1", count=5, interval=0.1))
        elapsed = trio.current_time() - start
    assert len(results) == 5
    assert 0.4 <= elapsed < 2.0


@privileged
async def test_cancellation_leaves_the_table_empty() -> None:
    async with Pinger() as pinger:
        async with trio.open_nursery() as nursery:
            for i in range(50):
                ping = Ping(f"127.0.1.{i}", count=100, interval=0.05, expiry=60)
                nursery.start_soon(pinger.collect, ping)
            await trio.sleep(0.3)
            assert len(pinger.engine.table) >= 50  # probes really are in flight
            # 50 calls running, and no task of theirs in the Pinger: one scheduler sends
            # for all (expiry + scheduler + one receive loop per socket).
            assert len(pinger.engine.nursery.child_tasks) == 4
            nursery.cancel_scope.cancel()
        assert pinger.engine.table == {}
        await trio.testing.wait_all_tasks_blocked()
        # Only the engine's own tasks remain: expiry + scheduler + one receive loop per socket.
        assert len(pinger.engine.nursery.child_tasks) == 4


@privileged
@pytest.mark.skipif(shutil.which("ping") is None, reason="iputils ping not installed")
async def test_concurrent_system_ping_never_shows_up() -> None:
    """iputils ping to the same target at the same time: its replies reach our raw socket too
    (every raw ICMP socket sees every reply) and must never be taken for ours."""
    proc = await trio.lowlevel.open_process(
        ["ping", "-c", "40", "-i", "0.01", "-s", "56", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with Pinger() as pinger:
            # The kernel filter (issue 12) would keep the system ping's replies out unless its
            # identifier fell in our block: let everything through, so the token check is
            # what must refuse them.
            pinger._kernel_filter(Range(0, 0))
            results = await pinger.collect(Ping("127.0.0.1", count=20, interval=0.02))
            foreign = pinger.foreign + pinger.engine.stats.unmatched
    finally:
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
    assert sorted(r.seq for r in results) == list(range(1, 21))
    assert all(r.kind == "reply" and not r.duplicate and not r.late for r in results)
    # The system ping's replies were seen and rejected, not silently absent.
    assert foreign > 0


@privileged
async def test_df_oversized_probe_is_an_error_result_not_a_crash() -> None:
    """EMSGSIZE for a DF probe bigger than the path MTU becomes an error result; the ping and
    the Pinger carry on. (::1 has MTU 65536: 65507 bytes of payload + 48 of headers exceed it.)"""
    async with Pinger() as pinger:
        results = await pinger.collect(Ping("::1", count=2, interval=0.01, size=65507, df=True))
        ok = await pinger.collect(Ping("::1", count=1, size=1000, df=True))
    assert [r.kind for r in results] == ["error", "error"]
    assert all(r.error is not None and r.error.local for r in results)
    assert "too long" in results[0].error.text  # type: ignore[union-attr]
    stats = PingStats.of(results)
    assert (stats.sent, stats.errors) == (0, 2)
    assert ok[0].kind == "reply"


def test_family_unavailable_is_reported_when_used() -> None:
    """A Pinger whose IPv6 socket failed still pings IPv4 and explains the IPv6 failure."""

    async def main() -> None:
        pinger = Pinger()

        def opener(v6: bool) -> object:
            if v6:
                raise FamilyUnavailableError(97, "Address family not supported by protocol")
            return "v4 family"

        pinger._families.open(opener, lambda fam: None)  # type: ignore[arg-type]
        assert pinger._family(False) == "v4 family"
        with pytest.raises(FamilyUnavailableError, match="IPv6 unavailable"):
            pinger._family(True)

    trio.run(main)


def test_ping_validation() -> None:
    bad = [
        {"count": 0},
        {"count": 1.5},
        {"interval": -1},
        {"interval": float("nan")},
        {"expiry": 0},
        {"expiry": 1e9},
        {"size": -1},
        {"size": 70000},
        {"ttl": 0},
        {"ttl": 256},
        {"tos": 300},
    ]
    for kw in bad:
        with pytest.raises((ValueError, TypeError)):
            Ping("127.0.0.1", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Ping("")
    with pytest.raises(TypeError):
        Ping(12345)  # type: ignore[arg-type]


def test_pinger_outside_async_with_says_so() -> None:
    async def main() -> None:
        pinger = Pinger()
        with pytest.raises(RuntimeError, match="async with"):
            async for _ in pinger.ping(Ping("127.0.0.1")):
                pass

    trio.run(main)


def test_module_importable_without_privileges() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import netdiag; print(netdiag.Pinger, netdiag.Ping, netdiag.PingStats)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Pinger" in out.stdout


@privileged
async def test_answered_probes_are_forgotten_as_the_ping_goes_on() -> None:
    """A long ping keeps a bounded table: leases are released 2 x expiry after their deadline,
    answered or not, instead of piling up until the ping ends."""
    async with Pinger() as pinger:
        peak = 0
        n = 0
        async for r in pinger.results(Ping("127.0.0.1", count=60, interval=0.01, expiry=0.02)):
            n += r.kind == "reply"
            peak = max(peak, len(pinger.engine.table))
        assert n == 60
        # (0.02 expiry + 0.04 grace) / 0.01 interval = 6 live probes, plus scheduling slack.
        assert peak < 20
