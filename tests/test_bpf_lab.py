"""The kernel filters on real sockets (issue 12): what they drop never reaches Python, what is
ours still does -- replies and ICMP errors, IPv4 and IPv6."""

from __future__ import annotations

import socket

import pytest
import trio
from lab import Lab

from netdiag import Ping, Pinger
from netdiag.wire.icmp import build_echo

pytestmark = [pytest.mark.lab, pytest.mark.privileged]

FOREIGN = 300  # echo requests another program sends from the same host, bounded


def _foreign_pings(v6: bool, dst: str, ident: int) -> socket.socket:
    """Send FOREIGN echo requests with ``ident`` from a plain raw socket; return an
    unfiltered raw socket opened before, which hears every reply (the control)."""
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    control = socket.socket(fam, socket.SOCK_RAW, proto)
    control.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    with socket.socket(fam, socket.SOCK_RAW, proto) as s:
        for seq in range(FOREIGN):
            s.sendto(build_echo(ident, seq, b"foreign!" * 4, v6), (dst, 0))
    return control


def _count_replies(control: socket.socket, v6: bool, ident: int) -> int:
    control.setblocking(False)
    n = 0
    while True:
        try:
            data = control.recv(2048)
        except BlockingIOError:
            return n
        off = 0 if v6 else (data[0] & 0x0F) * 4
        if data[off] == (129 if v6 else 0) and int.from_bytes(data[off + 4 : off + 6]) == ident:
            n += 1


@pytest.mark.parametrize("v", [4, 6])
async def test_foreign_replies_stay_in_the_kernel(lab: Lab, v: int) -> None:
    v6 = v == 6
    dst = str(lab.dst.v4 if v == 4 else lab.dst.v6)
    with lab.enter("src"):
        async with Pinger() as p:
            fam_sock = p._family(v6).sock  # test-only peek: the socket the filter is on
            assert fam_sock.kernel_filter, fam_sock.kernel_filter_error
            foreign_ident = (p._ident_pool.base ^ 0x8000) & 0xFFFF  # outside our block
            control = _foreign_pings(v6, dst, foreign_ident)
            rs = await p.collect(Ping(dst, count=20, interval=0.005, expiry=1.0))
            await trio.sleep(0.2)  # let every foreign reply arrive
            with control:
                heard = _count_replies(control, v6, foreign_ident)
            stats = p.engine.stats
    assert [r.kind for r in rs] == ["reply"] * 20
    assert heard >= FOREIGN * 0.9  # the replies did reach the host ...
    # ... but not the Pinger: it received only its own 20 (the filter passed nothing else).
    assert stats.received == 20, stats
    assert stats.ignored == stats.unmatched == stats.kernel_drops == 0
    assert stats.filter_updates >= 1


@pytest.mark.parametrize("v", [4, 6])
async def test_errors_quoting_our_requests_pass(lab: Lab, v: int) -> None:
    dst = str(lab.dst.v4 if v == 4 else lab.dst.v6)
    with lab.enter("src"):
        async with Pinger() as p:
            rs = await p.collect(Ping(dst, count=3, interval=0.01, expiry=1.0, ttl=1))
    assert [r.kind for r in rs] == ["error"] * 3
    assert all(r.error is not None and r.error.kind.name == "TIME_EXCEEDED" for r in rs)


async def test_tracer_and_knocker_filters_attach_and_they_still_work(
    lab: Lab, dst_listener: int
) -> None:
    from netdiag import Knock, Knocker, Trace, Tracer

    dst = str(lab.dst.v4)
    with lab.enter("src"):
        async with Tracer() as tracer, Knocker() as knocker:
            hops = [h async for h in tracer.results(Trace(dst, flows=2))]
            rs = await knocker.collect(Knock(dst, dst_listener, count=2, interval=0.01))
            t_updates = tracer.engine.stats.filter_updates
            k_updates = knocker.engine.stats.filter_updates
    assert hops[-1].reached
    assert [r.kind for r in rs] == ["open"] * 2, rs
    assert t_updates == 4 and k_updates == 4  # ICMP + TCP socket, both families


@pytest.mark.parametrize("v", [4, 6])
async def test_a_pinger_beside_a_tracer_does_not_wake_it(lab: Lab, v: int) -> None:
    """An ICMP trace and a Pinger in one process (as the exporter runs them): the Tracer's
    echo ids come from its flow ports' range, so its ICMP socket's filter keeps the Pinger's
    replies in the kernel (before, the Tracer received and dropped every one of them)."""
    from netdiag import Trace, Tracer

    dst = str(lab.dst.v4 if v == 4 else lab.dst.v6)
    with lab.enter("src"):
        async with Tracer() as t, Pinger() as p:
            async with trio.open_nursery() as n:
                n.start_soon(p.collect, Ping(dst, count=60, interval=0.002, expiry=1.0))
                r = await t.collect(Trace(dst, proto="icmp", flows=1, expiry=1.0))
            await trio.sleep(0.2)
            stats = t.engine.stats
    assert r.reached and r.hops[0].probes[0].flow == 0
    assert stats.unmatched == 0 and stats.received == stats.matched, stats
    assert stats.received == r.sent - sum(h.timeouts for h in r.hops), stats


async def test_knock_filter_follows_a_changed_port_range(lab: Lab, dst_listener: int) -> None:
    """ip_local_port_range changed while a Knocker is open: its reserved ports now come from
    outside the range its filter was built for, so the filter grows to cover them (else the
    SYN-ACKs would stay in the kernel and the port would look filtered)."""
    from netdiag import Knock, Knocker

    dst = str(lab.dst.v4)
    old = lab.exec("src", "sysctl", "-n", "net.ipv4.ip_local_port_range").stdout.split()
    lab.exec("src", "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40100")
    try:
        with lab.enter("src"):
            async with Knocker() as knocker:
                before = knocker.engine.stats.filter_updates
                lab.exec("src", "sysctl", "-qw", "net.ipv4.ip_local_port_range=50000 50100")
                rs = await knocker.collect(Knock(dst, dst_listener, count=3, interval=0.01))
                after = knocker.engine.stats.filter_updates
    finally:
        lab.exec("src", "sysctl", "-qw", f"net.ipv4.ip_local_port_range={old[0]} {old[1]}")
    assert all(50000 <= r.sport <= 50100 for r in rs), rs
    assert [r.kind for r in rs] == ["open"] * 3, rs
    assert after > before == 4


async def test_identifier_block_grows_and_the_filter_follows() -> None:
    """300 concurrent pings to one target need more than the first block's 256 identifiers:
    the block grows (4x), the filter is re-attached for it, and every reply still arrives."""
    results: list[list] = []
    async with Pinger() as p:
        first = p.engine.stats.filter_updates

        async def one() -> None:
            results.append(await p.collect(Ping("127.0.0.1", count=2, interval=0.05)))

        async with trio.open_nursery() as n:
            for _ in range(300):
                n.start_soon(one)
        grown = p.engine.stats.filter_updates
        bits = p._ident_pool.bits  # test-only peek
    assert len(results) == 300
    assert all([r.kind for r in rs] == ["reply", "reply"] for rs in results)
    assert bits == 10 and grown > first
