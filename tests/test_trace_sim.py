"""The Tracer without privileges: the real engine and trace session over simulated sockets, on
trio's virtual clock.

The simulated network replaces only the sockets (a fake socket set that turns each probe into
the ICMP bytes a router would send back, or the error-queue entry a datagram-mode flow socket
would get); the classifiers, the engine with its one demux table and expiry heap, the session
and the planner are the real ones. That is how the "late reply" promise is tested exactly: a
reply engineered to arrive after its probe expired, while the trace is still running and other
probes of the same flow are in flight, must be counted as late and never credited to anything.
How MDA decides is tested without any IO in test_trace_planner.py; the lab tests
(test_trace_lab.py) cover the same code over real sockets.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import struct
import warnings
from collections import deque
from collections.abc import Callable

import pytest
import trio
import trio.testing

from netdiag.errors import FamilyUnavailableError, PrivilegeError
from netdiag.sock import ExtErr, Packet
from netdiag.trace import Trace, Tracer, TraceResult
from netdiag.trace.sockets import (
    DgramSockets,
    Outgoing,
    RawSockets,
    icmp_classifier,
    queued_udp_classifier,
)
from netdiag.trace.tracer import FlowBlocks, FlowsExhausted
from netdiag.wire.ip import build_ipv4_header
from netdiag.wire.trace import MDA_95, PROTO_ICMP, PROTO_UDP

SRC4, DST4 = bytes([198, 18, 1, 2]), bytes([198, 18, 6, 2])
DST6 = ipaddress.IPv6Address("2001:db8:6::2").packed

#: Simulated topology: src -> r1 -> {r2a | r2b} -> r3 -> dst, branch chosen by hashing the
#: flow's source port (a Paris-respecting balancer), r3 answering from the branch's address.
R1, R2A, R2B = bytes([198, 18, 1, 1]), bytes([198, 18, 2, 2]), bytes([198, 18, 3, 2])
R3A, R3B = bytes([198, 18, 4, 2]), bytes([198, 18, 5, 2])

Delay = Callable[[int, int, int], float | None]  # (ttl, sport, nth probe) -> seconds or drop


def icmp4_error(router: bytes, typ: int, code: int, quote: bytes, rest: int = 0) -> bytes:
    body = struct.pack("!BBHI", typ, code, 0, rest) + quote
    return build_ipv4_header(router, SRC4, 1, len(body), ttl=63) + body


class FakeSock:
    v6 = False
    drops = 0

    def __init__(self) -> None:
        self.queue: deque[Packet] = deque()
        self.ready = trio.Event()

    async def wait_readable(self) -> None:
        while not self.queue:
            self.ready = trio.Event()
            await self.ready.wait()

    def recv_batch(self, limit: int = 512) -> tuple[list[Packet], None]:
        out = list(self.queue)
        self.queue.clear()
        return out, None

    def deliver(self, data: bytes, src: bytes) -> None:
        now = int(trio.current_time() * 1e9)
        self.queue.append(Packet(data, src, SRC4, 60, now, True))
        self.ready.set()

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


class SimSend:
    """Stands in for the socket a probe leaves through: "sending" runs the simulation, which
    schedules the answer the simulated network would give."""

    def __init__(self, simulate: Callable[[], int]) -> None:
        self.simulate = simulate

    def send_nowait(
        self, data: bytes, dst: str, anc: object, port: int = 0, stamp: object = None
    ) -> int:
        return self.simulate()

    async def send(
        self, data: bytes, dst: str, anc: object, port: int = 0, stamp: object = None
    ) -> int:
        return self.simulate()


class SimSockets(RawSockets):
    """Stands in for one family's raw sockets (the flows and their flow id blocks are the
    real ones); answers every probe as the diamond would."""

    def __init__(
        self, tracer: Tracer, delay: Delay, hash_: Callable[[int], int], depth: int = 4
    ) -> None:
        self.v6 = False
        self.blocks = tracer._flows
        self.depth = depth  # the destination's distance; routers beyond r3 are 198.18.100.ttl
        self.sock = FakeSock()
        self.tracer = tracer
        self.delay = delay
        self.hash = hash_
        self.sent: list[tuple[int, int, int]] = []
        tracer.engine.add_socket(self.sock, icmp_classifier(False))  # type: ignore[arg-type]

    def source(self, dst: object) -> bytes:
        return SRC4

    def first_hops(self, dst: object) -> int | None:
        return 1  # as the kernel's route to the diamond says: one gateway, r1

    def raw_packet(
        self, proto: int, src: bytes, dst: bytes, dst_str: str, ttl: int, pid: int, data: bytes
    ) -> Outgoing:
        sim = SimSend(lambda: self._simulate(proto, src, dst, ttl, pid, data))
        return Outgoing(sim, data, dst_str, [])  # type: ignore[arg-type]

    def _simulate(self, proto: int, src: bytes, dst: bytes, ttl: int, pid: int, data: bytes) -> int:
        sport = struct.unpack_from("!H", data)[0]
        nth = sum(1 for t, s, _ in self.sent if (t, s) == (ttl, sport))
        self.sent.append((ttl, sport, pid))
        wait = self.delay(ttl, sport, nth)
        if wait is not None:
            branch = self.hash(sport)
            router = {1: R1, 2: (R2A, R2B)[branch], 3: (R3A, R3B)[branch]}.get(
                ttl, bytes([198, 18, 100, ttl])
            )
            if ttl >= self.depth:
                router = dst
            typ, code = (11, 0) if ttl < self.depth else (3, 3)
            # the header as it arrived: TTL 1 where it expired, less one per router before
            # the destination (the distance probe's answer says how far it went)
            left = 1 if ttl < self.depth else ttl - self.depth + 1
            quote = build_ipv4_header(src, dst, proto, len(data), ttl=left, ident=pid) + data
            reply = icmp4_error(router, typ, code, quote)

            async def later() -> None:
                await trio.sleep(wait)
                self.sock.deliver(reply, router)

            self.tracer.engine.nursery.start_soon(later)
        return int(trio.current_time() * 1e9)

    def close(self) -> None:
        pass


class SimTracer(Tracer):
    def __init__(
        self, delay: Delay, hash_: Callable[[int], int] = lambda p: p % 2, depth: int = 4
    ) -> None:
        super().__init__()
        self._delay = delay
        self._hash = hash_
        self._depth = depth
        self.fam: SimSockets | None = None

    def _open(self) -> None:
        self.fam = SimSockets(self, self._delay, self._hash, self._depth)

        def opener(v6: bool) -> SimSockets:
            if v6:
                raise FamilyUnavailableError(97, "simulated IPv4 only")
            return self.fam  # type: ignore[return-value]

        self._families.open(opener, lambda fam: None)


def run_virtual(fn: Callable[[], object]) -> object:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def addrs(*packed: bytes) -> frozenset:
    return frozenset(ipaddress.ip_address(p) for p in packed)


def test_sim_mda_finds_both_branches_and_follows_the_rule() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with SimTracer(lambda ttl, sport, n: 0.001) as t:
            r = await t.collect(Trace("198.18.6.2", expiry=1.0))
            return r, t.fam

    r, fam = run_virtual(main)  # type: ignore[misc]
    assert [h.addrs for h in r.hops] == [
        addrs(R1),
        addrs(R2A, R2B),
        addrs(R3A, R3B),
        addrs(DST4),
    ]
    assert r.reached and r.hops[-1].last and not any(h.last for h in r.hops[:-1])
    assert r.late == 0
    flows_at = {h.ttl: len(h.probes) for h in r.hops}
    # the planner's counts, through the engine (test_trace_planner pins them without it)
    # (the destination's hop: one flow through each of r3's two interfaces)
    # (hop 1: one probe, as the kernel's route has one gateway)
    assert flows_at == {1: 1, 2: MDA_95[1], 3: MDA_95[1], 4: 2}
    assert r.sent == len(fam.sent) == 25
    # the distance probe left first with TTL 30; the destination's answer quoted the TTL it
    # arrived with (27: three routers), so it is flow 0's probe at TTL 4 -- and nothing went
    # past the destination
    assert fam.sent[0][0] == 30
    assert 0 in {p.flow for p in r.hops[3].probes} and r.past == ()
    assert max(ttl for ttl, _, _ in fam.sent[1:]) == 4
    # Paris: each flow took one branch at every TTL -- its r2 and r3 agree -- and kept its
    # source port at every TTL
    for flow in range(flows_at[2]):
        at2 = {p.addr for p in r.hops[1].probes if p.flow == flow}
        at3 = {p.addr for p in r.hops[2].probes if p.flow == flow}
        if at2 and at3:
            assert (at2 == addrs(R2A)) == (at3 == addrs(R3A))
    per_ttl_ports = [sorted(s for t, s, _ in fam.sent if t == ttl) for ttl in (1, 2, 3)]
    assert per_ttl_ports[0] == per_ttl_ports[1][:1] and per_ttl_ports[1] == per_ttl_ports[2]
    # the whole route took about one round trip of virtual time, not hops x probes x expiry
    assert r.elapsed < 0.1


def test_sim_silent_hop_times_out_and_tracing_goes_on() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with SimTracer(lambda ttl, sport, n: None if ttl == 1 else 0.001) as t:
            return await t.collect(Trace("198.18.6.2", expiry=0.5))

    r: TraceResult = run_virtual(main)  # type: ignore[assignment]
    h1 = r.hops[0]
    assert h1.responders == () and h1.timeouts == MDA_95[0]
    assert r.reached and r.hops[-1].addrs == addrs(DST4)
    # two expiries (the engine's), not one per hop: hop 1 is one gateway (the kernel's route),
    # so its scout goes alone; only its silence sends the MDA's other flows there
    assert 1.0 <= r.elapsed < 1.1


def test_sim_late_reply_counted_late_never_credited() -> None:
    """Flow 0's probe at TTL 2 is answered 1.5 expiries after it left. Meanwhile odd flows'
    TTL-2 answers take 0.9 expiries, so the MDA's second wave (sent when r2b shows up) is still
    in flight -- further probes at the same TTL, through the same router -- when the straggler
    arrives. It must be counted late and change nothing."""
    expiry = 1.0
    first_port = 61000  # the cursor is set so flow i has source port 61000 + i

    def delay(ttl: int, sport: int, nth: int) -> float | None:
        if ttl == 2 and sport == first_port:
            return 1.5 * expiry
        if ttl == 2 and sport % 2 == 1:
            return 0.9 * expiry
        return 0.001

    async def main():  # type: ignore[no-untyped-def]
        async with SimTracer(delay) as t:
            t._flows.cursor = 0
            r = await t.collect(Trace("198.18.6.2", expiry=expiry))
            return r, t.late

    r, late_total = run_virtual(main)  # type: ignore[misc]
    hop2 = r.hops[1]
    assert r.late == 1 and late_total == 1
    p = next(p for p in hop2.probes if p.flow == 0)
    assert p.kind == "timeout" and p.addr is None
    # nothing was credited with the straggler: every answer's RTT is what its own probe got
    rtts = [p.rtt for h in r.hops for p in h.probes if p.rtt is not None]
    assert max(rtts) < expiry
    assert hop2.addrs == addrs(R2A, R2B)
    for p in hop2.probes:  # each answer belongs to its own flow's branch
        if p.flow != 0:
            assert p.addr == ipaddress.ip_address((R2A, R2B)[p.flow % 2])
    assert r.elapsed > 1.5 * expiry  # the straggler really arrived while the trace ran


def test_sim_concurrent_traces_use_disjoint_flows_and_linger() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with SimTracer(lambda ttl, sport, n: 0.001) as t:
            async with trio.open_nursery() as n:
                results: list = []

                async def one() -> None:
                    results.append(await t.collect(Trace("198.18.6.2", expiry=0.2, max_flows=32)))

                for _ in range(3):
                    n.start_soon(one)
            blocks = sorted(t._flows.blocks[(DST4, PROTO_UDP)])
            # finished traces keep their blocks (and keys) until the linger ends...
            assert len(blocks) == 3
            await trio.sleep(5)
            return results, blocks, dict(t._flows.blocks), len(t.engine.table)

    results, blocks, after, table = run_virtual(main)  # type: ignore[misc]
    for (b1, s1), (b2, _s2) in itertools.pairwise(blocks):
        assert b1 + s1 <= b2
    assert after == {} and table == 0  # ...then free them and their keys
    assert all(r.reached for r in results)


def test_flow_blocks_disjoint_and_refused_when_full() -> None:
    for _ in range(50):
        b = FlowBlocks()
        b.cursor = random.randrange(1 << 16)
        got = []
        with pytest.raises(FlowsExhausted, match="too many concurrent traces"):
            for _ in range(10):
                got.append(b.alloc(DST4, PROTO_UDP, 1024))
        assert len(got) >= 3  # 4536 ports: first fit always leaves room for three blocks
        assert all(x >= 61000 and x + 1024 - 1 <= 65535 for x in got)
        spans = sorted(got)
        assert all(x + 1024 <= y for x, y in itertools.pairwise(spans))
        # other targets and protocols have their own blocks
        assert 61000 <= b.alloc(DST4, PROTO_ICMP, 1024) <= 65535 - 1023  # the ports' range
        assert b.alloc(DST6, PROTO_UDP, 1024) >= 61000
        # freed blocks can be reserved again; nothing is kept for a target with none
        for x in got:
            b.free(DST4, PROTO_UDP, x)
        assert (DST4, PROTO_UDP) not in b.blocks
        assert b.alloc(DST4, PROTO_UDP, 1024) >= 61000


def test_traces_beyond_the_flow_blocks_wait_for_one_instead_of_failing() -> None:
    """A loop of short traces to one target: each holds its block of 64 source ports for the
    trace and its linger (2 s), and 61000-65535 makes 70 blocks. The 71st trace used to fail
    with "too many concurrent traces"; it now waits until a lingering block is given back --
    and so do 100 traces started at once."""

    async def main():  # type: ignore[no-untyped-def]
        async with SimTracer(lambda ttl, sport, n: 0.001) as t:
            start = trio.current_time()
            looped = [await t.collect(Trace("198.18.6.2", expiry=0.5)) for _ in range(100)]
            loop_time = trio.current_time() - start
            at_once: list[TraceResult] = []

            async def one() -> None:
                at_once.append(await t.collect(Trace("198.18.6.2", expiry=0.5)))

            async with trio.open_nursery() as n:
                for _ in range(100):
                    n.start_soon(one)
            return looped, loop_time, at_once

    looped, loop_time, at_once = run_virtual(main)  # type: ignore[misc]
    assert len(looped) == len(at_once) == 100
    assert all(r.reached and len(r.hops) == 4 for r in looped + at_once)
    # 70 traces took ~1 ms each; the rest waited for the first blocks' linger to end
    assert 2.0 <= loop_time < 3.0


# -- the deprecated names ------------------------------------------------------------------------


def test_trace_and_route_are_deprecated_aliases_of_results_and_collect() -> None:
    """One DeprecationWarning per call, pointing at the caller; same results as the new names,
    which warn nothing."""
    trace = Trace("198.18.6.2", flows=2, expiry=0.5)

    async def main():  # type: ignore[no-untyped-def]
        async with SimTracer(lambda ttl, sport, n: 0.001) as t:
            with pytest.warns(DeprecationWarning, match=r"Tracer\.route\(\).*collect") as w1:
                old_route = await t.route(trace)
            with pytest.warns(DeprecationWarning, match=r"Tracer\.trace\(\).*results") as w2:
                old_hops = [h async for h in t.trace(trace)]
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                new_route = await t.collect(trace)
                new_hops = [h async for h in t.results(trace)]
            return w1, w2, old_route, old_hops, new_route, new_hops

    w1, w2, old_route, old_hops, new_route, new_hops = run_virtual(main)  # type: ignore[misc]
    assert len(w1) == 1 and len(w2) == 1
    assert w1[0].filename == w2[0].filename == __file__

    def shape(hops):  # type: ignore[no-untyped-def]
        return [(h.ttl, h.addrs, len(h.probes), h.last, h.reached) for h in hops]

    assert shape(old_route.hops) == shape(new_route.hops) == shape(old_hops) == shape(new_hops)
    assert old_route.sent == new_route.sent


# -- datagram mode (no raw sockets): one socket per flow, error queues ---------------------------

EE_ICMP = 2


class SimDgramSockets(DgramSockets):
    """Stands in for the datagram mode's per-flow UDP sockets (the trace's flows are the real
    ones): each flow gets a fake socket (with its own receive loop on the real engine) and every
    probe's answer comes back as an error-queue entry, the offender being the diamond's router
    for that flow."""

    def __init__(self, tracer: Tracer, quote: Callable[[int], int | None], depth: int = 4):
        self.v6 = False
        self.engine = tracer.engine
        self.quote = quote  # ttl -> payload bytes the router quotes (None: all)
        self.depth = depth
        self.ports: dict[FakeSock, int] = {}
        self.next_port = 40000
        self.opened = 0
        self.closed: list[FakeSock] = []
        self.sent: list[tuple[int, int]] = []

    def source(self, dst: object) -> bytes:
        return SRC4

    def first_hops(self, dst: object) -> int | None:
        return None  # the kernel was not asked: hop 1 gets the MDA

    def open_flow(self, src: bytes) -> tuple[FakeSock, int]:  # type: ignore[override]
        sock, port = FakeSock(), self.next_port
        self.next_port += 7
        self.ports[sock] = port
        self.opened += 1
        self.engine.add_socket(sock, queued_udp_classifier(False, port))  # type: ignore[arg-type]
        return sock, port

    def close_flow(self, sock: FakeSock) -> None:  # type: ignore[override]
        self.closed.append(sock)
        self.engine.remove_socket(sock)  # type: ignore[arg-type]

    def flow_packet(  # type: ignore[override]
        self, sock: FakeSock, data: bytes, dst: str, port: int, ttl: int
    ) -> Outgoing:
        sim = SimSend(lambda: self._simulate(sock, data, port, ttl))
        return Outgoing(sim, data, dst, [], port)  # type: ignore[arg-type]

    def _simulate(self, sock: FakeSock, data: bytes, port: int, ttl: int) -> int:
        sport = self.ports[sock]
        self.sent.append((ttl, sport))
        branch = sport % 2
        router = {1: R1, 2: (R2A, R2B)[branch], 3: (R3A, R3B)[branch]}.get(ttl, DST4)
        typ, code = (11, 0) if ttl < self.depth else (3, 3)
        err = ExtErr(113 if ttl < self.depth else 111, EE_ICMP, typ, code, 0, router)
        quoted = data[: self.quote(ttl)]

        async def later() -> None:
            await trio.sleep(0.001)
            now = int(trio.current_time() * 1e9)
            sock.queue.append(Packet(quoted, DST4, SRC4, 60, now, True, port, False, err))
            sock.ready.set()

        self.engine.nursery.start_soon(later)
        return int(trio.current_time() * 1e9)

    def close(self) -> None:
        pass


class SimDgramTracer(Tracer):
    def __init__(self, quote: Callable[[int], int | None] = lambda ttl: None) -> None:
        super().__init__(privileged=False)
        self._quote = quote
        self.fam: SimDgramSockets | None = None

    def _open(self) -> None:
        self.fam = SimDgramSockets(self, self._quote)
        self.mode = "datagram"

        def opener(v6: bool) -> SimDgramSockets:
            if v6:
                raise FamilyUnavailableError(97, "simulated IPv4 only")
            return self.fam  # type: ignore[return-value]

        self._families.open(opener, lambda fam: None)


def test_sim_dgram_mode_mda_one_socket_per_flow_closed_after_linger() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with SimDgramTracer() as t:
            r = await t.collect(Trace("198.18.6.2", expiry=1.0, max_flows=16))
            fam = t.fam
            assert fam is not None
            open_after_route = fam.opened - len(fam.closed)
            tasks_during = len(t.engine.nursery.child_tasks)
            await trio.sleep(5)  # past the linger
            return r, fam, open_after_route, tasks_during, t

    r, fam, open_after_route, tasks_during, t = run_virtual(main)  # type: ignore[misc]
    assert [h.addrs for h in r.hops] == [addrs(R1), addrs(R2A, R2B), addrs(R3A, R3B), addrs(DST4)]
    assert r.reached and r.late == 0 and all(h.timeouts == 0 for h in r.hops)
    assert r.hops[3].responders[0].destination
    # One socket per flow (the MDA's 11 at two next hops, within max_flows=16), opened once
    # and reused at every TTL (Paris), each with its own port
    per_hop = max(len(h.probes) for h in r.hops)
    assert fam.opened == per_hop == len({s for _, s in fam.sent}) <= 16
    assert open_after_route == fam.opened  # still open while the keys linger...
    assert tasks_during >= 1 + fam.opened  # ...each with its receive loop
    assert len(fam.closed) == fam.opened  # ...then closed, loops gone
    assert t.engine.table == {} and t._flows.blocks == {}  # (no flow id blocks in this mode)


def test_sim_dgram_mode_max_flows_bounds_the_sockets() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with SimDgramTracer() as t:
            r = await t.collect(Trace("198.18.6.2", expiry=0.5, max_flows=3))
            return r, t.fam

    r, fam = run_virtual(main)  # type: ignore[misc]
    assert fam.opened == 3 and all(len(h.probes) <= 3 for h in r.hops)


def test_sim_dgram_mode_truncated_quotes_time_out() -> None:
    """A router quoting no payload (8 bytes of UDP) cannot be credited: its hop shows
    timeouts, the others are unaffected, and the engine counts the entries as ignored."""

    async def main():  # type: ignore[no-untyped-def]
        async with SimDgramTracer(lambda ttl: 0 if ttl == 2 else None) as t:
            r = await t.collect(Trace("198.18.6.2", expiry=0.5, flows=4))
            return r, t.engine.stats

    r, stats = run_virtual(main)  # type: ignore[misc]
    assert [h.ttl for h in r.hops] == [1, 2, 3, 4]
    assert r.hops[1].responders == () and r.hops[1].timeouts == 4
    assert r.hops[0].addrs == addrs(R1) and r.hops[3].addrs == addrs(DST4) and r.reached
    assert stats.ignored >= 4


def test_dgram_mode_refuses_icmp_and_tcp_traces() -> None:
    with pytest.raises(TypeError, match="privileged"):
        Tracer(privileged="no")  # type: ignore[arg-type]
    t = Tracer(privileged=False)
    t.mode = "datagram"
    t.prepare(Trace("198.18.6.2"))
    for proto, flag in (("icmp", "-I"), ("tcp", "-T")):
        with pytest.raises(PrivilegeError, match="CAP_NET_RAW") as e:
            t.prepare(Trace("198.18.6.2", proto=proto))  # type: ignore[arg-type]
        assert flag in str(e.value)


# -- Trace validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        ({"proto": "sctp"}, ValueError),
        ({"proto": "icmp", "port": 80}, ValueError),
        ({"port": 0}, ValueError),
        ({"first_ttl": 5, "max_ttl": 4}, ValueError),
        ({"max_ttl": 256}, ValueError),
        ({"expiry": 0}, ValueError),
        ({"flows": 0}, ValueError),
        ({"flows": 100, "max_flows": 64}, ValueError),
        ({"confidence": 95}, ValueError),
        ({"window": 0}, ValueError),
        ({"reach": 0}, ValueError),
        ({"reach": 256}, ValueError),
        ({"reach": 2.0}, TypeError),
        ({"max_ttl": 3.0}, TypeError),
        ({"dns": "yes"}, TypeError),
        ({"minimize": "time"}, ValueError),
        ({"stop_at_first_arrival": 1}, TypeError),
    ],
)
def test_trace_validation(kw: dict, exc: type) -> None:
    with pytest.raises(exc):
        Trace("198.18.6.2", **kw)


def test_trace_defaults() -> None:
    assert Trace("x").dport == 33434
    assert Trace("x", proto="tcp").dport == 80
    assert Trace("x", proto="icmp").dport == 0
    with pytest.raises(TypeError):
        Trace(42)  # type: ignore[arg-type]
