"""netdiag.sync: one blocking call per diagnostic (issue 16).

Loopback (privileged) and the lab, IPv4 and IPv6, each diagnostic; calls from a thread, from
inside a running asyncio loop and from inside trio (the call then runs in a fresh worker
thread, which must also be in the caller's network namespace); parameters match the
dataclasses; errors arrive as themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import ipaddress
import socket
import subprocess
import sys
import threading

import pytest
import trio
from lab import Lab

from netdiag import Knock, KnockStats, Ping, PingStats, ResolveError, Trace, TraceResult, sync
from netdiag.testing import UNRESOLVABLE

ADDRS = [pytest.param("127.0.0.1", id="v4"), pytest.param("::1", id="v6")]
V = [pytest.param(4, id="v4"), pytest.param(6, id="v6")]


def _dst(lab: Lab, v: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return lab.dst.v4 if v == 4 else lab.dst.v6


# -- the API's shape ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "spec", "skip"),
    [
        (sync.ping, Ping, {"bind", "privileged"}),
        (sync.trace, Trace, {"bind", "privileged"}),
        (sync.knock, Knock, {"bind"}),
    ],
)
def test_parameters_are_the_dataclasses(fn, spec, skip) -> None:  # type: ignore[no-untyped-def]
    """Same names, same order, same defaults: a field added to Ping/Trace/Knock (or a changed
    default) fails here until the function follows."""
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if n not in skip}
    fields = dataclasses.fields(spec)
    assert list(params) == [f.name for f in fields]
    for f in fields:
        if f.default is not dataclasses.MISSING:
            assert params[f.name].default == f.default, f.name


def test_sweep_parameters_are_pinger_sweeps() -> None:
    from netdiag import Pinger

    ours = inspect.signature(sync.sweep).parameters
    theirs = inspect.signature(Pinger.sweep).parameters
    for name, p in theirs.items():
        if name != "self":
            assert name in ours and ours[name].default == p.default, name


def test_bad_parameters_raise_before_anything_opens() -> None:
    with pytest.raises(ValueError, match="count"):
        sync.ping("127.0.0.1", count=0)
    with pytest.raises(ValueError, match="expiry"):
        sync.sweep(["127.0.0.1"], expiry=0)
    with pytest.raises(ValueError, match="first_ttl"):
        sync.trace("127.0.0.1", first_ttl=9, max_ttl=3)
    with pytest.raises(ValueError, match="port"):
        sync.knock("127.0.0.1", 0)
    with pytest.raises(TypeError, match="privileged"):
        sync.ping("127.0.0.1", privileged="yes")  # type: ignore[arg-type]


# -- loopback ----------------------------------------------------------------------------------


@pytest.mark.privileged
@pytest.mark.parametrize("addr", ADDRS)
def test_ping_returns_stats_with_results(addr: str) -> None:
    report = sync.ping(addr, count=3, interval=0.01)
    assert isinstance(report, PingStats)
    assert (report.sent, report.received, report.loss) == (3, 3, 0.0)
    assert report.addr == ipaddress.ip_address(addr)
    assert sorted(r.seq for r in report.results) == [1, 2, 3]
    assert report.rtt.count == 3
    d = report.as_dict()
    assert d["addr"] == addr and len(d["results"]) == 3 and d["received"] == 3


@pytest.mark.privileged
def test_sweep_one_report_per_address_in_the_given_order() -> None:
    targets = ["::1", "127.0.0.1", "127.0.0.2", "127.0.0.1"]
    reports = sync.sweep(targets, count=2, interval=0.01)
    assert [str(r.addr) for r in reports] == ["::1", "127.0.0.1", "127.0.0.2"]
    assert [(r.sent, r.received) for r in reports] == [(2, 2)] * 3
    assert all({x.addr for x in r.results} == {r.addr} for r in reports)


@pytest.mark.privileged
@pytest.mark.parametrize("addr", ADDRS)
def test_trace_and_knock_on_loopback(addr: str) -> None:
    route = sync.trace(addr, proto="icmp")
    assert isinstance(route, TraceResult)
    assert route.reached and [h.ttl for h in route.hops] == [1]
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as srv:
        srv.bind((addr, 0))
        srv.listen(8)
        report = sync.knock(addr, srv.getsockname()[1], count=2, interval=0.01)
    assert isinstance(report, KnockStats)
    assert (report.sent, report.open) == (2, 2)
    assert report.addr == ipaddress.ip_address(addr) and len(report.results) == 2


@pytest.mark.privileged
def test_errors_arrive_as_themselves() -> None:
    # Refused by the IDNA codec before any lookup: no DNS traffic.
    with pytest.raises(ResolveError, match="invalid"):
        sync.ping(UNRESOLVABLE, count=1)
    with pytest.raises(ResolveError):
        sync.trace(UNRESOLVABLE)
    with pytest.raises(ValueError, match="rate"):
        sync.sweep(["127.0.0.1"], rate=-1.0)
    with pytest.raises(ValueError, match="at least one target"):
        sync.sweep([])


@pytest.mark.privileged
def test_works_from_threads_asyncio_and_trio() -> None:
    out: list[PingStats] = []
    threads = [
        threading.Thread(target=lambda: out.append(sync.ping("127.0.0.1", count=2, interval=0)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.received for r in out] == [2] * 4

    async def in_asyncio() -> PingStats:
        return sync.ping("::1", count=2, interval=0)  # a running loop: runs in a worker thread

    assert asyncio.run(in_asyncio()).received == 2

    async def in_trio() -> PingStats:
        return sync.ping("127.0.0.1", count=1)

    assert trio.run(in_trio).received == 1


# -- the lab -----------------------------------------------------------------------------------


@pytest.mark.parametrize("v", V)
def test_ping_and_sweep_in_the_lab(lab: Lab, v: int) -> None:
    with lab.enter("src"):
        report = sync.ping(_dst(lab, v), count=3, interval=0.02)
        r1 = lab.r1.v4 if v == 4 else lab.r1.v6
        reports = sync.sweep([r1, _dst(lab, v)], count=2, interval=0.02)
    assert (report.sent, report.received) == (3, 3)
    assert {r.ttl for r in report.results} == {61}  # three routers on the way back
    assert [(r.sent, r.received) for r in reports] == [(2, 2), (2, 2)]


@pytest.mark.parametrize("v", V)
@pytest.mark.parametrize("proto", ["udp", "icmp", "tcp"])
def test_trace_in_the_lab(lab: Lab, v: int, proto: str) -> None:
    with lab.enter("src"):
        route = sync.trace(_dst(lab, v), proto=proto)  # type: ignore[arg-type]
    assert route.reached
    assert [h.ttl for h in route.hops] == [1, 2, 3, 4]
    r1 = lab.r1.v4 if v == 4 else lab.r1.v6
    assert route.hops[0].addrs == {r1}
    assert route.hops[-1].addrs == {_dst(lab, v)}


@pytest.mark.parametrize("v", V)
def test_knock_in_the_lab(lab: Lab, dst_listener: int, v: int) -> None:
    with lab.enter("src"):
        report = sync.knock(_dst(lab, v), dst_listener, count=3, interval=0.02)
    assert (report.sent, report.open, report.filtered) == (3, 3, 0)
    assert report.port == dst_listener


@pytest.mark.parametrize("v", V)
def test_from_a_running_loop_the_worker_thread_is_in_the_callers_namespace(
    lab: Lab, v: int
) -> None:
    """The host namespace has no route to the lab: only a worker born in src reaches dst."""

    async def main() -> PingStats:
        return sync.ping(_dst(lab, v), count=2, interval=0.02)

    with lab.enter("src"):
        report = asyncio.run(main())
    assert report.received == 2


@pytest.mark.privileged
def test_ctrl_c_stops_a_call_running_in_the_worker_thread() -> None:
    """As in Jupyter: a loop runs in the main thread (without asyncio.run's SIGINT handler), a
    long sync.ping runs in a worker thread, SIGINT arrives. The KeyboardInterrupt must reach
    the caller after the worker's ping was cancelled (no thread left behind), not after the
    100 s the ping would take."""
    code = """
import asyncio, os, signal, threading
from netdiag import sync

async def main():
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        sync.ping("127.0.0.1", count=1000, interval=0.1)
    except KeyboardInterrupt:
        print("interrupted", [t.name for t in threading.enumerate()])

asyncio.new_event_loop().run_until_complete(main())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "interrupted ['MainThread']"
