"""Faults (issue 6): the network or the host misbehaves; netdiag reports it and carries on.

Each test breaks one thing in the lab (and puts it back in ``finally``): the target's link goes
down and comes back mid-ping, a route loses a branch mid-trace, the socket receive buffer
overflows, a probe is too big to leave with DF, IPv6 is missing, a router rate-limits its ICMP
errors. What must hold: every probe is resolved exactly once -- as a reply, a timeout or an
error result, never a crash or a hang -- and measuring resumes when the fault is gone.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import trio
from lab import Lab

from netdiag import Knock, Knocker, Ping, Pinger, PingStats, Trace, Tracer
from netdiag.errors import FamilyUnavailableError
from netdiag.wire.icmp import ErrorKind

pytestmark = pytest.mark.lab


# -- the target goes away, then comes back -----------------------------------------------------


@pytest.mark.parametrize("v", [4, 6])
async def test_target_link_down_mid_ping_then_recovery(clean_lab: Lab, v: int) -> None:
    lab = clean_lab
    count, interval = 40, 0.05
    dst = lab.dst.addr(v)
    results = []
    with lab.enter("src"):
        async with Pinger() as pinger:

            async def ping() -> None:
                p = Ping(dst, count=count, interval=interval, expiry=0.5)  # type: ignore[arg-type]
                results.extend(await pinger.collect(p))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ping)
                await trio.sleep(0.5)  # ~10 requests answered
                lab.set_link("r3", "dst", up=False)
                try:
                    await trio.sleep(0.6)  # ~12 requests into the void
                finally:
                    lab.set_link("r3", "dst", up=True)
            assert pinger.engine.table == {}
    by_seq = {r.seq: r for r in results}
    assert sorted(by_seq) == list(range(1, count + 1)) and len(results) == count
    kinds = [by_seq[s].kind for s in range(1, count + 1)]
    assert kinds[:8] == ["reply"] * 8
    assert kinds[-8:] == ["reply"] * 8  # recovered
    lost = [r for r in results if r.kind != "reply"]
    assert len(lost) >= 6, kinds
    r3 = set(lab.r3.addresses(v))  # type: ignore[arg-type]
    for r in lost:
        # r3 lost its route to dst's subnet: "unreachable" from r3, or nothing at all.
        assert r.kind == "timeout" or (
            r.kind == "error" and r.error is not None and r.responder in r3
        ), r
    stats = PingStats.of(results)
    assert stats.sent == count and stats.received == count - len(lost)


async def test_target_link_down_mid_knock_then_recovery(clean_lab: Lab, dst_listener: int) -> None:
    lab = clean_lab
    results = []
    with lab.enter("src"):
        async with Knocker() as knocker:

            async def knock() -> None:
                k = Knock(lab.dst.v4, dst_listener, count=30, interval=0.05, expiry=0.5)
                results.extend(await knocker.collect(k))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(knock)
                await trio.sleep(0.4)
                lab.set_link("r3", "dst", up=False)
                try:
                    await trio.sleep(0.5)
                finally:
                    lab.set_link("r3", "dst", up=True)
            assert knocker.engine.table == {} and knocker.reserved_ports() == set()
    kinds = [r.kind for r in sorted(results, key=lambda r: r.seq)]
    assert len(kinds) == 30
    assert kinds[:6] == ["open"] * 6 and kinds[-6:] == ["open"] * 6
    assert sum(k in ("filtered", "error") for k in kinds) >= 5, kinds


async def test_route_loses_a_branch_mid_trace(clean_lab: Lab) -> None:
    """r1 loses its link to r2a while a multipath trace runs: the trace still completes, every
    responder is a real hop, probes lost in the switch-over are timeouts."""
    lab = clean_lab
    with lab.enter("src"):
        async with Tracer() as tracer:
            t = Trace(lab.dst.v4, proto="udp", flows=24, window=4, expiry=0.5)
            async with trio.open_nursery() as nursery:

                async def flap() -> None:
                    await trio.sleep(0.005)
                    lab.set_link("r1", "r2a", up=False)

                nursery.start_soon(flap)
                result = await tracer.collect(t)
            assert tracer.engine.stats.classifier_errors == tracer.engine.stats.sink_errors == 0
            # After the change, one branch only.
            after = await tracer.collect(Trace(lab.dst.v4, proto="udp", flows=8, expiry=0.5))
    assert result.reached and after.reached
    for hop in result.hops:
        assert hop.addrs <= lab.topology.expected_hops("src", "dst", hop.ttl, 4), hop
    assert after.hops[1].addrs == {lab.r2b.v4}


# -- the host is overloaded --------------------------------------------------------------------


async def test_full_receive_buffer_is_counted_loss_with_a_warning(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    """A tiny receive buffer, a burst of 1,000 big replies (a sweep sends back to back) and a
    process busy elsewhere: the kernel drops most of them. Each drop is a timeout result
    (nothing crashes, nothing is double counted), the engine counts exactly as many kernel drops
    (SO_RXQ_OVFL, reported with the next packet that gets through), and a warning says why."""
    count = 1000
    caplog.set_level(logging.WARNING, logger="netdiag.engine")
    results = []
    with lab.enter("src"):
        async with Pinger(rcvbuf=4096) as pinger:

            async def burst() -> None:
                targets = [lab.dst.v4] * count
                results.extend([r async for r in pinger.sweep(targets, expiry=1.0, size=1400)])

            async def busy() -> None:  # another part of the program hogs the event loop
                for _ in range(20):
                    time.sleep(0.005)
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(burst)
                nursery.start_soon(busy)
            # Still healthy afterwards (and these replies carry the final drop count).
            after = await pinger.collect(Ping(lab.dst.v4, count=3, interval=0.01))
            drops = pinger.engine.stats.kernel_drops
            assert pinger.engine.table == {}
    assert len(results) == count
    timeouts = sum(r.kind == "timeout" for r in results)
    replies = sum(r.kind == "reply" for r in results)
    assert timeouts + replies == count
    assert timeouts > 0, "the burst did not overflow the buffer: the test proves nothing"
    assert drops == timeouts
    assert any("receive buffer full" in rec.getMessage() for rec in caplog.records)
    assert [r.kind for r in after] == ["reply"] * 3


# -- a probe that cannot leave -----------------------------------------------------------------


@pytest.mark.parametrize("v", [4, 6])
async def test_oversized_df_probe_is_an_error_result(lab: Lab, v: int) -> None:
    """The lab's links have MTU 1500: a 2000-byte DF echo fails with EMSGSIZE in sendmsg. That
    is an error result per request (counted as an error, not as sent), then pinging goes on."""
    with lab.enter("src"):
        async with Pinger() as pinger:
            big = await pinger.collect(
                Ping(lab.dst.addr(v), count=3, interval=0.01, size=2000, df=True)  # type: ignore[arg-type]
            )
            ok = await pinger.collect(Ping(lab.dst.addr(v), count=2, size=1400, df=True))  # type: ignore[arg-type]
            assert pinger.engine.table == {}
    assert [r.kind for r in big] == ["error"] * 3
    for r in big:
        assert r.error is not None and r.error.local
        assert r.error.text == "Message too long"
    stats = PingStats.of(big)
    assert (stats.sent, stats.errors, stats.received) == (0, 3, 0)
    assert [r.kind for r in ok] == ["reply", "reply"]


# -- IPv6 missing --------------------------------------------------------------------------------


class _NoInet6(socket.socket):
    """What socket() does on a kernel booted with ipv6.disable=1."""

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno=None) -> None:  # type: ignore[no-untyped-def]
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, type, proto, fileno)


async def test_without_ipv6_the_objects_work_for_ipv4(
    lab: Lab, dst_listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "socket", _NoInet6)
    with lab.enter("src"):
        async with Pinger() as pinger, Knocker() as knocker, Tracer() as tracer:
            monkeypatch.undo()  # only the opening is affected
            rs = await pinger.collect(Ping(lab.dst.v4, count=2, interval=0.01))
            assert [r.kind for r in rs] == ["reply", "reply"]
            ks = await knocker.collect(Knock(lab.dst.v4, dst_listener, count=1))
            assert [r.kind for r in ks] == ["open"]
            tr = await tracer.collect(Trace(lab.dst.v4, proto="icmp", flows=1))
            assert tr.reached
            with pytest.raises(FamilyUnavailableError, match="IPv6"):
                await pinger.collect(Ping(lab.dst.v6, count=1))
            with pytest.raises(FamilyUnavailableError, match="IPv6"):
                await knocker.collect(Knock(lab.dst.v6, dst_listener, count=1))
            with pytest.raises(FamilyUnavailableError, match="IPv6"):
                await tracer.collect(Trace(lab.dst.v6))


NO_IPV6_SCRIPT = """
import json, trio
from netdiag import Ping, Pinger

async def main():
    out = {}
    async with Pinger() as pinger:
        for addr in ("127.0.0.1", "::1"):
            try:
                rs = await pinger.collect(Ping(addr, count=2, interval=0.01, expiry=0.5))
                out[addr] = [[r.kind, r.error.text if r.error else None] for r in rs]
            except Exception as e:
                out[addr] = [type(e).__name__, str(e)]
        out["table"] = len(pinger.engine.table)
    print(json.dumps(out))

trio.run(main)
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing")
def test_ipv6_disabled_by_sysctl_ipv4_still_works() -> None:
    """A fresh network namespace (loopback only) with net.ipv6.conf.all.disable_ipv6=1: the
    Pinger opens, pings 127.0.0.1, and pinging ::1 gives per-request error results saying why
    (sockets still open, sending fails) -- never a crash."""
    shell = (
        "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
        "net.ipv6.conf.lo.disable_ipv6=1 && exec " + sys.executable + ' -c "$0"'
    )
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", shell, NO_IPV6_SCRIPT],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": _root(), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["127.0.0.1"] == [["reply", None], ["reply", None]]
    v6 = doc["::1"]
    assert len(v6) == 2 and all(kind == "error" and text for kind, text in v6), v6
    assert doc["table"] == 0


def _root() -> str:
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- a router rate-limits its ICMP errors ----------------------------------------------------------

#: Linux defaults, which the lab turns off (0 / 1000000) so bursts are not mistaken for loss.
RATELIMIT_DEFAULTS = {
    "net.ipv4.icmp_ratelimit": "1000",
    "net.ipv4.icmp_msgs_per_sec": "1000",
    "net.ipv4.icmp_msgs_burst": "50",
    "net.ipv6.icmp.ratelimit": "1000",
}


@pytest.fixture
def r1_ratelimited(lab: Lab) -> Iterator[Lab]:
    names = list(RATELIMIT_DEFAULTS)
    old = lab.exec("r1", "sysctl", "-n", *names).stdout.split()
    assert len(old) == len(names)
    lab.exec("r1", "sysctl", "-qw", *(f"{k}={v}" for k, v in RATELIMIT_DEFAULTS.items()))
    try:
        yield lab
    finally:
        lab.exec("r1", "sysctl", "-qw", *(f"{k}={v}" for k, v in zip(names, old, strict=True)))


@pytest.mark.parametrize("v", [4, 6])
async def test_icmp_rate_limited_router_shows_as_timeouts(r1_ratelimited: Lab, v: int) -> None:
    lab = r1_ratelimited
    # 1.5 s of requests: r1's bucket (one error per second, bursts of 6) may start empty, as
    # the lab ran with limiting off until now.
    count = 60
    with lab.enter("src"):
        async with Pinger() as pinger, Tracer() as tracer:
            rs = await pinger.collect(
                Ping(lab.dst.addr(v), count=count, interval=0.025, ttl=1, expiry=0.5)  # type: ignore[arg-type]
            )
            tr = await tracer.collect(
                Trace(lab.dst.addr(v), proto="icmp", flows=12, max_ttl=2, expiry=0.5)  # type: ignore[arg-type]
            )
            assert pinger.engine.table == {}
    assert sorted(r.seq for r in rs) == list(range(1, count + 1))
    errors = [r for r in rs if r.kind == "error"]
    timeouts = [r for r in rs if r.kind == "timeout"]
    assert len(errors) + len(timeouts) == count
    assert errors, "the router answered nothing at all"
    assert len(timeouts) >= count // 2, "no rate limiting happened: the test proves nothing"
    r1 = lab.r1.addr(v)  # type: ignore[arg-type]
    assert all(
        r.responder == r1 and r.error is not None and r.error.kind is ErrorKind.TIME_EXCEEDED
        for r in errors
    )
    # The trace's first hop: what r1 still answered, the rest silent -- and the trace goes on.
    hop1 = tr.hops[0]
    assert hop1.addrs <= {r1} and hop1.timeouts > 0
    assert len(tr.hops) == 2
