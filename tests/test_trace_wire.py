"""The tracer without privileges: Paris probe encoding, reply classification, the MDA rule, and
the whole Tracer session driven over a simulated network with trio's virtual clock.

The simulated network replaces only the sockets (a fake family that turns each probe into the
ICMP bytes a router would send back); the classifier, the engine with its one demux table and
expiry heap, and the MDA session logic are the real ones. That is how the "late reply" promise
is tested exactly: a reply engineered to arrive after its probe expired, while the trace is
still running and other probes of the same flow are in flight, must be counted as late and
never credited to anything. (The lab tests cover the same code over real sockets.)
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import struct
from collections import Counter, deque
from collections.abc import Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from netdiag.errors import FamilyUnavailableError, NetdiagError, PrivilegeError
from netdiag.sock import ExtErr, Packet
from netdiag.trace import (
    _REACH,
    Trace,
    Tracer,
    TraceResult,
    _icmp_classifier,
    _queued_udp_classifier,
)
from netdiag.wire.checksum import checksum, pseudo_header_v6
from netdiag.wire.icmp import Unreach
from netdiag.wire.ip import build_ipv4_header, parse_ipv4
from netdiag.wire.trace import (
    DGRAM_MARKER,
    MAX_ATTEMPT,
    MDA_95,
    MDA_99,
    PROTO_ICMP,
    PROTO_ICMP6,
    PROTO_TCP,
    PROTO_UDP,
    ReplyKind,
    build_dgram_payload,
    build_icmp_probe,
    build_tcp_probe,
    build_udp_probe,
    classify_icmp,
    classify_queued_udp,
    classify_tcp,
    decode_dgram_payload,
    decode_pid,
    encode_pid,
    key_from_quote,
    mda_probes,
    tcp_seq,
)
from netdiag.wire.udp import build_udp, build_udp_dpkt, parse_udp, udp_checksum_ok

SRC4, DST4 = bytes([198, 18, 1, 2]), bytes([198, 18, 6, 2])
R4 = bytes([198, 18, 2, 2])
SRC6 = ipaddress.IPv6Address("2001:db8:1::2").packed
DST6 = ipaddress.IPv6Address("2001:db8:6::2").packed
R6 = ipaddress.IPv6Address("2001:db8:2::2").packed

ttls = st.integers(1, 255)
attempts = st.integers(0, 0xFE)
ports = st.integers(1, 65535)


# -- probe identity ----------------------------------------------------------------------------


@given(ttls, attempts)
def test_pid_round_trip(ttl: int, attempt: int) -> None:
    pid = encode_pid(ttl, attempt)
    assert 0 < pid < 0xFFFF
    assert decode_pid(pid) == (ttl, attempt)


@pytest.mark.parametrize(("ttl", "attempt"), [(0, 0), (256, 0), (1, -1), (1, 0xFF)])
def test_pid_rejects_out_of_range(ttl: int, attempt: int) -> None:
    with pytest.raises(ValueError):
        encode_pid(ttl, attempt)


def test_pids_unique_per_ttl_and_attempt() -> None:
    pids = {encode_pid(t, a) for t in range(1, 256) for a in range(0, 0xFF)}
    assert len(pids) == 255 * 255


# -- UDP: checksum is the probe id, ports are the flow ---------------------------------------


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4), ports, ports, ttls)
def test_udp_probe_checksum_is_pid_v4(src: bytes, dst: bytes, sport: int, dport: int, ttl: int):
    pid = encode_pid(ttl)
    d = build_udp_probe(src, dst, sport, dport, pid)
    h = parse_udp(d)
    assert h is not None
    assert (h.sport, h.dport, h.length, h.checksum) == (sport, dport, len(d), pid)
    assert udp_checksum_ok(src, dst, d)


@given(st.binary(min_size=16, max_size=16), ports, ttls, attempts)
def test_udp_probe_checksum_is_pid_v6(src: bytes, sport: int, ttl: int, attempt: int) -> None:
    pid = encode_pid(ttl, attempt)
    d = build_udp_probe(src, DST6, sport, 33434, pid)
    assert struct.unpack_from("!H", d, 6)[0] == pid
    assert udp_checksum_ok(src, DST6, d)
    # What the kernel does with IPV6_CHECKSUM: zero the field, sum, complement. Same value.
    zeroed = d[:6] + b"\x00\x00" + d[8:]
    assert checksum(pseudo_header_v6(src, DST6, 17, len(d)) + zeroed) == pid


def test_udp_flow_fields_constant_across_ttls() -> None:
    """Every probe of a flow hashes the same: ports and length identical at every TTL."""
    heads = {build_udp_probe(SRC4, DST4, 61234, 33434, encode_pid(t))[:6] for t in range(1, 31)}
    assert len(heads) == 1
    cks = {build_udp_probe(SRC4, DST4, 61234, 33434, encode_pid(t))[6:8] for t in range(1, 31)}
    assert len(cks) == 30


@given(st.binary(min_size=4, max_size=4), ports, ports, st.binary(max_size=64))
def test_build_udp_matches_dpkt(src: bytes, sport: int, dport: int, payload: bytes) -> None:
    assert build_udp(src, DST4, sport, dport, payload) == build_udp_dpkt(
        src, DST4, sport, dport, payload
    )


# -- ICMP: identifier is the flow, checksum constant within it --------------------------------


def test_icmp_checksum_constant_within_flow_v4() -> None:
    token = b"\x01\x02\x03\x04"
    probes = [
        build_icmp_probe(4242, encode_pid(t, a), token, False)
        for t in (1, 7, 30, 255)
        for a in (0, 3)
    ]
    assert len({p[:4] for p in probes}) == 1  # type, code, checksum: what balancers hash
    assert len({p[4:6] for p in probes}) == 1  # identifier
    assert len({p[6:8] for p in probes}) == 8  # sequence = probe id
    assert all(checksum(p) == 0 for p in probes)  # and every checksum is valid
    other = build_icmp_probe(4243, encode_pid(1), token, False)
    assert other[2:4] != probes[0][2:4]  # another flow hashes differently


def test_icmp_checksum_constant_within_flow_v6() -> None:
    """ICMPv6 checksums are filled by the kernel; compute what it will write."""

    def kernel_ck(p: bytes) -> int:
        return checksum(pseudo_header_v6(SRC6, DST6, 58, len(p)) + p)

    token = b"abcd"
    cks = {kernel_ck(build_icmp_probe(7, encode_pid(t), token, True)) for t in range(1, 40)}
    assert len(cks) == 1


def test_tcp_probe_seq_carries_token_and_pid() -> None:
    for v6, src, dst in ((False, SRC4, DST4), (True, SRC6, DST6)):
        segs = [
            build_tcp_probe(src, dst, 61000, 80, encode_pid(t), 0xBEEF, v6_kernel_csum=v6)
            for t in range(1, 20)
        ]
        assert len({s[:4] for s in segs}) == 1  # ports
        for t, s in enumerate(segs, 1):
            (seq,) = struct.unpack_from("!I", s, 4)
            assert seq == tcp_seq(0xBEEF, encode_pid(t))
            assert decode_pid(seq & 0xFFFF) == (t, 0)
        if not v6:
            assert checksum(SRC4 + DST4 + struct.pack("!BBH", 0, 6, len(segs[0])) + segs[0]) == 0


# -- classification of crafted replies ----------------------------------------------------------


def v4_probe(proto: int, flow: int, ttl: int, dport: int = 33434) -> bytes:
    pid = encode_pid(ttl)
    if proto == PROTO_UDP:
        l4 = build_udp_probe(SRC4, DST4, flow, dport, pid)
    elif proto == PROTO_TCP:
        l4 = build_tcp_probe(SRC4, DST4, flow, dport, pid, 0x1234, v6_kernel_csum=False)
    else:
        l4 = build_icmp_probe(flow, pid, b"tokn", False)
    return build_ipv4_header(SRC4, DST4, proto, len(l4), ttl=1, ident=pid) + l4


def icmp4_error(router: bytes, typ: int, code: int, quote: bytes, rest: int = 0) -> bytes:
    body = struct.pack("!BBHI", typ, code, 0, rest) + quote
    return build_ipv4_header(router, SRC4, 1, len(body), ttl=63) + body


def v6_header(nxt: int, plen: int, src: bytes = SRC6, dst: bytes = DST6) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, plen, nxt, 1, src, dst)


@pytest.mark.parametrize("proto", [PROTO_UDP, PROTO_TCP, PROTO_ICMP])
@pytest.mark.parametrize("cut", [8, None])  # routers quoting 8 bytes, or the whole probe
def test_time_exceeded_v4_gives_exact_key(proto: int, cut: int | None) -> None:
    probe = v4_probe(proto, 61007, ttl=5)
    quote = probe[: 20 + cut] if cut else probe
    got = classify_icmp(icmp4_error(R4, 11, 0, quote), False, R4, ip_header=True)
    assert got is not None
    key, reply = got
    assert key == (DST4, proto, 61007, encode_pid(5))
    assert reply.kind is ReplyKind.TIME_EXCEEDED
    assert not reply.terminal and reply.mark == ""
    if proto == PROTO_TCP:
        assert reply.token == 0x1234


def test_unreachable_marks_v4() -> None:
    probe = v4_probe(PROTO_UDP, 61001, ttl=3)
    cases = {
        (3, 13): ("!X", True),
        (3, 10): ("!X", True),
        (3, 1): ("!H", True),
        (3, 0): ("!N", True),
        (3, 2): ("!P", True),
        (3, 3): ("", True),  # port unreachable: arrival
    }
    for (typ, code), (mark, terminal) in cases.items():
        _, reply = classify_icmp(icmp4_error(R4, typ, code, probe), False, R4, True)  # type: ignore[misc]
        assert (reply.mark, reply.terminal) == (mark, terminal), (typ, code)
    _, frag = classify_icmp(icmp4_error(R4, 3, 4, probe, rest=1400), False, R4, True)  # type: ignore[misc]
    assert frag.unreach is Unreach.FRAG_NEEDED and not frag.terminal and frag.mark == "!F-1400"
    _, pp = classify_icmp(icmp4_error(R4, 12, 0, probe, rest=8 << 24), False, R4, True)  # type: ignore[misc]
    assert pp.kind is ReplyKind.PARAMETER_PROBLEM and pp.info == 8 and not pp.terminal


def test_port_unreachable_is_destination() -> None:
    probe = v4_probe(PROTO_UDP, 61001, ttl=9)
    key, reply = classify_icmp(icmp4_error(DST4, 3, 3, probe), False, DST4, True)  # type: ignore[misc]
    assert reply.from_destination and reply.terminal
    assert key == (DST4, PROTO_UDP, 61001, encode_pid(9))


def _v6_udp_probe(ttl: int, ext: bytes = b"", first_nxt: int = 17) -> bytes:
    l4 = build_udp_probe(SRC6, DST6, 61002, 33434, encode_pid(ttl))
    return v6_header(first_nxt, len(ext) + len(l4)) + ext + l4


@pytest.mark.parametrize(
    ("ext", "first"),
    [
        (b"", 17),
        (bytes([17, 0]) + bytes(6), 0),  # hop-by-hop options (8 bytes)
        (bytes([17, 1]) + bytes(14), 60),  # destination options (16 bytes)
        (bytes([17, 0, 0, 0]) + struct.pack("!I", 77), 44),  # fragment header, first fragment
        (bytes([60, 0]) + bytes(6) + bytes([17, 0]) + bytes(6), 0),  # hop-by-hop + dest opts
    ],
)
def test_quoted_ipv6_extension_headers_are_walked(ext: bytes, first: int) -> None:
    probe = _v6_udp_probe(4, ext, first)
    for typ, code, kind in ((3, 0, ReplyKind.TIME_EXCEEDED), (1, 1, ReplyKind.UNREACHABLE)):
        msg = struct.pack("!BBHI", typ, code, 0, 0) + probe
        got = classify_icmp(msg, True, R6, ip_header=False)
        assert got is not None
        key, reply = got
        assert key == (DST6, PROTO_UDP, 61002, encode_pid(4))
        assert reply.kind is kind
    # IPv6 admin-prohibited ends a trace exactly as IPv4's does
    assert reply.terminal and reply.mark == "!X"


def test_non_first_fragment_quote_is_not_ours() -> None:
    ext = bytes([17, 0]) + struct.pack("!H", 8 << 3) + struct.pack("!I", 77)
    msg = struct.pack("!BBHI", 3, 0, 0, 0) + _v6_udp_probe(4, ext, 44)
    assert classify_icmp(msg, True, R6, ip_header=False) is None


def test_icmpv6_packet_too_big_and_param_problem_reported() -> None:
    probe = _v6_udp_probe(2)
    _, ptb = classify_icmp(struct.pack("!BBHI", 2, 0, 0, 1280) + probe, True, R6, False)  # type: ignore[misc]
    assert ptb.kind is ReplyKind.PACKET_TOO_BIG and ptb.info == 1280
    assert not ptb.terminal and ptb.mark == "!F-1280"
    _, pp = classify_icmp(struct.pack("!BBHI", 4, 1, 0, 40) + probe, True, R6, False)  # type: ignore[misc]
    assert pp.kind is ReplyKind.PARAMETER_PROBLEM and pp.info == 40 and pp.mark == "!PP"


def test_echo_reply_and_quoted_echo_v6() -> None:
    req = build_icmp_probe(99, encode_pid(6), b"TOKN", True)
    reply = bytes([129]) + req[1:]
    key, r = classify_icmp(reply, True, DST6, ip_header=False)  # type: ignore[misc]
    assert key == (DST6, PROTO_ICMP6, 99, encode_pid(6))
    assert r.kind is ReplyKind.ECHO_REPLY and r.token == b"TOKN" and r.from_destination
    quoted = v6_header(58, len(req)) + req
    key2, r2 = classify_icmp(struct.pack("!BBHI", 3, 0, 0, 0) + quoted, True, R6, False)  # type: ignore[misc]
    assert key2 == key and r2.kind is ReplyKind.TIME_EXCEEDED
    # our own echo *request* looping back is not an answer
    assert classify_icmp(req, True, DST6, ip_header=False) is None


@pytest.mark.parametrize("v6", [False, True])
def test_tcp_answers(v6: bool) -> None:
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    seq = tcp_seq(0xABCD, encode_pid(7))

    def seg(flags: int, ack: int) -> bytes:
        tcp = struct.pack("!HHIIBBHHH", 80, 61005, 555, ack, 5 << 4, flags, 100, 0, 0)
        return tcp if v6 else build_ipv4_header(dst, src, 6, len(tcp)) + tcp

    for flags, kind in ((0x12, ReplyKind.TCP_SYN_ACK), (0x14, ReplyKind.TCP_RST)):
        got = classify_tcp(seg(flags, seq + 1), v6, dst, ip_header=not v6)
        assert got is not None
        key, r = got
        assert key == (dst, PROTO_TCP, 61005, encode_pid(7))
        assert r.kind is kind and r.token == 0xABCD and r.from_destination and r.terminal
    assert classify_tcp(seg(0x02, 0), v6, dst, not v6) is None  # a SYN (ours, looped back)
    assert classify_tcp(seg(0x10, seq + 1), v6, dst, not v6) is None  # a bare ACK


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans())
def test_classifiers_never_raise(data: bytes, v6: bool) -> None:
    for ip in (False, True):
        classify_icmp(data, v6, SRC4, ip_header=ip)
        classify_tcp(data, v6, SRC4, ip_header=ip)


def test_key_from_quote_short_quote() -> None:
    ip = parse_ipv4(v4_probe(PROTO_UDP, 61000, 3)[:24])
    assert ip is not None and key_from_quote(ip) is None


# -- MDA ---------------------------------------------------------------------------------------


def test_mda_tables() -> None:
    assert [mda_probes(k) for k in range(1, 11)] == list(MDA_95)
    assert [mda_probes(k, 0.99) for k in range(1, 6)] == list(MDA_99)
    assert MDA_95[:3] == (6, 11, 16) and MDA_99[:2] == (8, 15)


def test_mda_formula_beyond_the_table() -> None:
    assert mda_probes(11) > MDA_95[-1]
    assert mda_probes(6, 0.99) > MDA_99[-1]
    seq = [mda_probes(k, 0.99) for k in range(1, 30)]
    assert seq == sorted(seq) and len(set(seq)) == len(seq)
    # the rule's meaning: with k equally likely next hops, n probes all miss a (k+1)-th one
    # with probability at most alpha (for k=1: 2 * 2**-6 < 0.05)
    assert 2 * 0.5 ** mda_probes(1) <= 0.05 < 2 * 0.5 ** (mda_probes(1) - 1)


@pytest.mark.parametrize("bad", [0, -1])
def test_mda_rejects_bad_k(bad: int) -> None:
    with pytest.raises(ValueError):
        mda_probes(bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, 95])
def test_mda_rejects_bad_confidence(bad: float) -> None:
    with pytest.raises(ValueError):
        mda_probes(1, bad)


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


# -- the Tracer over a simulated diamond, virtual time ------------------------------------------

#: Simulated topology: src -> r1 -> {r2a | r2b} -> r3 -> dst, branch chosen by hashing the
#: flow's source port (a Paris-respecting balancer), r3 answering from the branch's address.
R1, R2A, R2B = bytes([198, 18, 1, 1]), bytes([198, 18, 2, 2]), bytes([198, 18, 3, 2])
R3A, R3B = bytes([198, 18, 4, 2]), bytes([198, 18, 5, 2])

Delay = Callable[[int, int, int], float | None]  # (ttl, sport, nth probe) -> seconds or drop


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

    def close(self) -> None:
        pass


class SimFamily:
    """Stands in for the sockets of one family; answers every probe as the diamond would."""

    v6 = False

    def __init__(
        self, tracer: Tracer, delay: Delay, hash_: Callable[[int], int], depth: int = 4
    ) -> None:
        self.depth = depth  # the destination's distance; routers beyond r3 are 198.18.100.ttl
        self.sock = FakeSock()
        self.tracer = tracer
        self.delay = delay
        self.hash = hash_
        self.sent: list[tuple[int, int, int]] = []
        tracer.engine.add_socket(self.sock, _icmp_classifier(False))  # type: ignore[arg-type]

    def source(self, dst: object) -> bytes:
        return SRC4

    async def send(
        self, proto: int, src: bytes, dst: bytes, dst_str: str, ttl: int, pid: int, data: bytes
    ) -> int:
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
            quote = build_ipv4_header(src, dst, proto, len(data), ttl=1, ident=pid) + data
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
        self.fam: SimFamily | None = None

    def _open(self) -> None:
        self.fam = SimFamily(self, self._delay, self._hash, self._depth)

        def opener(v6: bool) -> SimFamily:
            if v6:
                raise FamilyUnavailableError(97, "simulated IPv4 only")
            return self.fam  # type: ignore[return-value]

        self._families.open(opener, lambda fam: None)  # type: ignore[arg-type]


def run_virtual(fn: Callable[[], object]) -> object:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def addrs(*packed: bytes) -> frozenset:
    return frozenset(ipaddress.ip_address(p) for p in packed)


def test_sim_mda_finds_both_branches_and_follows_the_rule() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with SimTracer(lambda ttl, sport, n: 0.001) as t:
            r = await t.route(Trace("198.18.6.2", expiry=1.0))
            return r, t.fam

    r, _fam = run_virtual(main)  # type: ignore[misc]
    assert [h.addrs for h in r.hops] == [
        addrs(R1),
        addrs(R2A, R2B),
        addrs(R3A, R3B),
        addrs(DST4),
    ]
    assert r.reached and r.hops[-1].last and not any(h.last for h in r.hops[:-1])
    assert r.late == 0
    flows_at = {h.ttl: len(h.probes) for h in r.hops}
    assert flows_at[1] == MDA_95[0]  # one next hop: 6 flows
    assert flows_at[2] >= MDA_95[1] and flows_at[3] >= MDA_95[1]  # two: at least 11
    # The destination's hop is settled by the answer already in (the scout's): no MDA there.
    # (Before the adaptive reach this test expected 6 flows at the destination too.)
    assert flows_at[4] == 1
    # Paris: each flow took one branch at every TTL -- its r2 and r3 agree
    for flow in range(flows_at[2]):
        at2 = {p.addr for p in r.hops[1].probes if p.flow == flow}
        at3 = {p.addr for p in r.hops[2].probes if p.flow == flow}
        if at2 and at3:
            assert (at2 == addrs(R2A)) == (at3 == addrs(R3A))
    # the whole route took about one round trip of virtual time, not hops x probes x expiry
    assert r.elapsed < 0.1


def test_sim_fixed_flows_mode() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with SimTracer(lambda ttl, sport, n: 0.001) as t:
            return await t.route(Trace("198.18.6.2", flows=3))

    r = run_virtual(main)
    assert [len(h.probes) for h in r.hops] == [3, 3, 3, 3]  # type: ignore[attr-defined]
    # N flows through every hop, the destination's too; beyond it only the scout's look-ahead
    assert r.sent == 4 * 3 + _REACH - 4  # type: ignore[attr-defined]


def sim_route(
    trace: Trace, delay: Delay = lambda ttl, sport, n: 0.001, depth: int = 4
) -> tuple[TraceResult, Counter[int]]:
    """Run ``trace`` on a fresh SimTracer; the result and how many probes went to each TTL."""

    async def main():  # type: ignore[no-untyped-def]
        async with SimTracer(delay, depth=depth) as t:
            r = await t.route(trace)
            return r, Counter(ttl for ttl, _, _ in t.fam.sent)  # type: ignore[union-attr]

    return run_virtual(main)  # type: ignore[return-value]


@pytest.mark.parametrize(("confidence", "n1", "n2"), [(0.95, 6, 11), (0.99, 8, 15)])
def test_sim_probe_budget_on_the_diamond(confidence: float, n1: int, n2: int) -> None:
    """The probe count, pinned: exactly the MDA rule at each hop before the destination (n1 at
    r1, n2 at each two-interface hop), one probe at the destination (the scout's: its hop is
    settled by that answer), and beyond it only the scout's look-ahead, one probe per TTL.
    95 %: 6 + 11 + 11 + 1 + 4 = 33 (scamper's tracelb: 1 + 11 + 11 + 1 = 24, because it
    spends one probe on the first hop instead of the MDA's six; see docs/trace.md)."""
    r, per = sim_route(Trace("198.18.6.2", confidence=confidence))
    assert [h.addrs for h in r.hops] == [addrs(R1), addrs(R2A, R2B), addrs(R3A, R3B), addrs(DST4)]
    assert [per[t] for t in (1, 2, 3, 4)] == [n1, n2, n2, 1]
    assert [len({p.flow for p in h.probes}) for h in r.hops] == [n1, n2, n2, 1]
    beyond = {t: c for t, c in per.items() if t > 4}
    assert beyond == dict.fromkeys(range(5, _REACH + 1), 1)
    assert r.sent == sum(per.values()) == n1 + 2 * n2 + 1 + (_REACH - 4)
    if confidence == 0.95:
        assert r.sent <= 33
    assert r.elapsed < 0.01  # a few 1 ms round trips (scout, then the MDA's waves)


def test_sim_long_path_reach_extends_without_waiting_for_expiry() -> None:
    """A 20-hop route with RTTs growing 1 ms per hop: the scout starts ``_REACH`` deep and is
    pushed further by answers from the deep end, so the route takes a few round trips, not an
    expiry, and no probe goes further than ``_REACH`` beyond the destination."""
    depth = 20
    r, per = sim_route(
        Trace("198.18.6.2", max_ttl=30), lambda ttl, sport, n: 0.001 * min(ttl, depth), depth
    )
    assert [h.ttl for h in r.hops] == list(range(1, depth + 1))
    assert r.reached and r.hops[-1].addrs == addrs(DST4) and r.hops[-1].last
    assert all(h.addrs for h in r.hops) and r.late == 0
    assert max(per) <= depth + _REACH
    assert all(per[t] == 1 for t in per if t >= depth)  # the scout only, from the destination on
    assert [len(h.probes) for h in r.hops[3:-1]] == [MDA_95[0]] * (depth - 4)
    assert r.elapsed < 0.2  # vs an expiry of 1 s


def test_sim_silent_tail_is_probed_to_max_ttl_in_reach_steps() -> None:
    """Nothing answers from TTL 4 on (a destination behind a silent firewall): every TTL to
    max_ttl is still probed, each silent hop with the MDA's n_1 flows, and the reach advances
    a whole step per expiry -- a few expiries in all, not one per hop."""
    expiry = 0.5
    r, per = sim_route(
        Trace("198.18.6.2", max_ttl=20, expiry=expiry),
        lambda ttl, sport, n: None if ttl >= 4 else 0.001,
    )
    assert [h.ttl for h in r.hops] == list(range(1, 21))
    assert not r.reached and r.hops[-1].last and not any(h.last for h in r.hops[:-1])
    for h in r.hops[3:]:
        assert h.responders == () and h.timeouts == MDA_95[0]
    assert max(per) == 20
    assert r.elapsed < 6 * expiry


@pytest.mark.parametrize(("reach", "deepest"), [(1, 4), (3, 6), (8, 8), (30, 30)])
def test_sim_reach_bounds_the_look_ahead(reach: int, deepest: int) -> None:
    """``reach=max_ttl`` probes every TTL at once (one round trip, every TTL beyond the
    destination wasted); ``reach=1`` goes hop by hop and wastes nothing. Hops and the MDA's
    counts are the same whatever the reach."""
    r, per = sim_route(Trace("198.18.6.2", reach=reach, max_ttl=30))
    assert [len(h.probes) for h in r.hops] == [6, 11, 11, 1]
    assert r.reached and len(r.hops) == 4
    # reach 3: the answer from TTL 3 (the deep end) pushes the scout on to TTLs 4-6
    assert r.sent == 29 + deepest - 4 == sum(per.values())
    assert max(per) == deepest


def test_sim_single_flow_covers_a_long_path() -> None:
    """The scout extends its own flow: one flow in all (``max_flows=1``) still reaches a
    destination far beyond the first reach."""
    r, _per = sim_route(Trace("198.18.6.2", flows=1, max_flows=1), depth=12)
    assert [h.ttl for h in r.hops] == list(range(1, 13)) and r.reached
    assert all(len(h.probes) == 1 and h.probes[0].flow == 0 for h in r.hops)


def test_sim_silent_hop_times_out_and_tracing_goes_on() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with SimTracer(lambda ttl, sport, n: None if ttl == 1 else 0.001) as t:
            return await t.route(Trace("198.18.6.2", expiry=0.5))

    r = run_virtual(main)
    h1 = r.hops[0]  # type: ignore[attr-defined]
    assert h1.responders == () and h1.timeouts == MDA_95[0]
    assert r.reached and r.hops[-1].addrs == addrs(DST4)  # type: ignore[attr-defined]
    assert 0.5 <= r.elapsed < 0.6  # one expiry, not one per hop  # type: ignore[attr-defined]


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
            t._cursor = 0
            r = await t.route(Trace("198.18.6.2", expiry=expiry))
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
                    results.append(await t.route(Trace("198.18.6.2", expiry=0.2, max_flows=32)))

                for _ in range(3):
                    n.start_soon(one)
            ports = [{s for _, s, _ in t.fam.sent}]  # type: ignore[union-attr]
            blocks = sorted(t._blocks[(DST4, PROTO_UDP)])
            # finished traces keep their blocks (and keys) until the linger ends...
            assert len(blocks) == 3
            await trio.sleep(5)
            return results, ports, blocks, sorted(t._blocks[(DST4, PROTO_UDP)]), len(t.engine.table)

    results, _ports, blocks, after, table = run_virtual(main)  # type: ignore[misc]
    for (b1, s1), (b2, _s2) in itertools.pairwise(blocks):
        assert b1 + s1 <= b2
    assert after == [] and table == 0  # ...then free them and their keys
    assert all(r.reached for r in results)


def test_alloc_flows_disjoint_and_refuses_when_full() -> None:
    for _ in range(50):
        t = Tracer()
        t._cursor = random.randrange(1 << 16)
        got = []
        with pytest.raises(NetdiagError, match="too many concurrent traces"):
            for _ in range(10):
                got.append(t._alloc_flows(DST4, PROTO_UDP, 1024))
        assert len(got) >= 3  # 4536 ports: first fit always leaves room for three blocks
        assert all(b >= 61000 and b + 1024 - 1 <= 65535 for b in got)
        spans = sorted(got)
        assert all(a + 1024 <= b for a, b in itertools.pairwise(spans))
        # other targets and protocols have their own blocks
        assert 0 <= t._alloc_flows(DST4, PROTO_ICMP, 1024) <= 0xFFFF - 1023
        assert t._alloc_flows(DST6, PROTO_UDP, 1024) >= 61000


# -- datagram mode (no raw sockets): payload ids, error-queue classifier, flow sockets -------------

EE_ICMP, EE_ICMP6, EE_LOCAL = 2, 3, 1


@given(ttls, st.integers(0, MAX_ATTEMPT), st.integers(0, 0xFFFF))
def test_dgram_payload_round_trip(ttl: int, attempt: int, token: int) -> None:
    pid = encode_pid(ttl, attempt)
    payload = build_dgram_payload(pid, token)
    assert payload[4:] == DGRAM_MARKER
    assert decode_dgram_payload(payload) == (pid, token)
    # routers quote from the start: the first 4 bytes are enough, a cut marker is fine
    for cut in range(4, len(payload) + 1):
        assert decode_dgram_payload(payload[:cut]) == (pid, token)
    for cut in range(4):
        assert decode_dgram_payload(payload[:cut]) is None


def test_dgram_payload_rejects_what_no_probe_sends() -> None:
    with pytest.raises(ValueError):
        build_dgram_payload(0, 1)
    assert decode_dgram_payload(struct.pack("!HH", 0x00FF, 7) + DGRAM_MARKER) is None  # TTL 0
    assert decode_dgram_payload(struct.pack("!HH", 0x0500, 7) + b"NETDIAG-XX") is None
    assert decode_dgram_payload(struct.pack("!HH", 0x0500, 7) + b"NE") == (0x0500, 7)


def queued(
    v6: bool,
    typ: int,
    code: int,
    who: bytes,
    *,
    ttl: int = 3,
    token: int = 0xBEEF,
    cut: int | None = None,
    origin: int | None = None,
    info: int = 0,
):  # type: ignore[no-untyped-def]
    quoted = build_dgram_payload(encode_pid(ttl), token)[:cut]
    if origin is None:
        origin = EE_ICMP6 if v6 else EE_ICMP
    dst = DST6 if v6 else DST4
    return classify_queued_udp(v6, origin, typ, code, info, who, dst, 40001, quoted)


@pytest.mark.parametrize("v6", [False, True])
def test_queued_time_exceeded_gives_exact_key_and_offender(v6: bool) -> None:
    router, dst = (R6, DST6) if v6 else (R4, DST4)
    got = queued(v6, 3 if v6 else 11, 0, router, ttl=5)
    assert got is not None
    key, reply = got
    assert key == (dst, PROTO_UDP, 40001, encode_pid(5))
    assert reply.kind is ReplyKind.TIME_EXCEEDED and not reply.terminal
    assert reply.addr == router and reply.token == 0xBEEF and reply.mark == ""


@pytest.mark.parametrize("v6", [False, True])
def test_queued_port_unreachable_is_arrival(v6: bool) -> None:
    dst = DST6 if v6 else DST4
    _, reply = queued(v6, *((1, 4) if v6 else (3, 3)), dst)  # type: ignore[misc]
    assert reply.kind is ReplyKind.UNREACHABLE and reply.unreach is Unreach.PORT
    assert reply.from_destination and reply.terminal and reply.mark == "" and reply.addr == dst


def test_queued_unreachable_marks() -> None:
    cases = {
        (False, 3, 13): "!X",
        (False, 3, 10): "!X",
        (False, 3, 1): "!H",
        (False, 3, 0): "!N",
        (False, 3, 2): "!P",
        (True, 1, 1): "!X",
        (True, 1, 0): "!N",
        (True, 1, 3): "!H",
        (True, 1, 5): "!X",
    }
    for (v6, typ, code), mark in cases.items():
        _, reply = queued(v6, typ, code, R6 if v6 else R4)  # type: ignore[misc]
        assert reply.terminal and reply.mark == mark and not reply.from_destination, (typ, code)
    _, frag = queued(False, 3, 4, R4, info=1400)  # type: ignore[misc]
    assert frag.unreach is Unreach.FRAG_NEEDED and not frag.terminal and frag.mark == "!F-1400"
    _, ptb = queued(True, 2, 0, R6, info=1280)  # type: ignore[misc]
    assert ptb.kind is ReplyKind.PACKET_TOO_BIG and ptb.mark == "!F-1280" and not ptb.terminal
    _, pp = queued(True, 4, 0, R6, info=40)  # type: ignore[misc]
    assert pp.kind is ReplyKind.PARAMETER_PROBLEM and pp.info == 40


@pytest.mark.parametrize("v6", [False, True])
def test_queued_truncated_or_foreign_entries_are_not_credited(v6: bool) -> None:
    router = R6 if v6 else R4
    te = (3, 0) if v6 else (11, 0)
    # An 8-byte quote (RFC 792's minimum) leaves the kernel no payload to hand back: the
    # probe cannot be named, so nothing is credited (the raw mode, with the id in the UDP
    # checksum, still matches those). 4 quoted payload bytes are enough.
    for cut in (0, 1, 3):
        assert queued(v6, *te, router, cut=cut) is None
    assert queued(v6, *te, router, cut=4) is not None
    # local errors (EMSGSIZE ...) and the other family's origin name no router
    assert queued(v6, *te, router, origin=EE_LOCAL) is None
    assert queued(v6, *te, router, origin=EE_ICMP if v6 else EE_ICMP6) is None
    # no offender, or one of the wrong length
    assert queued(v6, *te, None) is None
    assert queued(v6, *te, R4 if v6 else R6) is None
    # echo replies, redirects and other non-errors are not answers to a UDP probe
    assert queued(v6, 129 if v6 else 0, 0, router) is None
    assert queued(v6, 137 if v6 else 5, 0, router) is None


@settings(max_examples=300)
@given(
    st.booleans(),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFFFFFF),
    st.one_of(st.none(), st.binary(max_size=20)),
    st.binary(max_size=20),
    st.integers(0, 0xFFFF),
    st.binary(max_size=64),
)
def test_queued_classifier_never_raises(
    v6: bool,
    origin: int,
    typ: int,
    code: int,
    info: int,
    offender: bytes | None,
    dst: bytes,
    sport: int,
    quoted: bytes,
) -> None:
    got = classify_queued_udp(v6, origin, typ, code, info, offender, dst, sport, quoted)
    if got is not None:
        key, reply = got
        assert key[1] == PROTO_UDP and key[2] == sport and reply.addr == offender


class SimDgramFamily:
    """Stands in for the datagram mode's per-flow UDP sockets: each flow gets a fake socket
    (with its own receive loop on the real engine) and every probe's answer comes back as an
    error-queue entry, the offender being the diamond's router for that flow."""

    dgram = True
    v6 = False

    def __init__(self, tracer: Tracer, quote: Callable[[int], int | None], depth: int = 4):
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

    def open_flow(self, src: bytes) -> tuple[FakeSock, int]:
        sock, port = FakeSock(), self.next_port
        self.next_port += 7
        self.ports[sock] = port
        self.opened += 1
        self.engine.add_socket(sock, _queued_udp_classifier(False, port))  # type: ignore[arg-type]
        return sock, port

    def close_flow(self, sock: FakeSock) -> None:
        self.closed.append(sock)
        self.engine.remove_socket(sock)  # type: ignore[arg-type]

    async def send_flow(self, sock: FakeSock, data: bytes, dst: str, port: int, ttl: int) -> int:
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
        self.fam: SimDgramFamily | None = None

    def _open(self) -> None:
        self.fam = SimDgramFamily(self, self._quote)
        self.mode = "datagram"

        def opener(v6: bool) -> SimDgramFamily:
            if v6:
                raise FamilyUnavailableError(97, "simulated IPv4 only")
            return self.fam  # type: ignore[return-value]

        self._families.open(opener, lambda fam: None)  # type: ignore[arg-type]


def test_sim_dgram_mode_mda_one_socket_per_flow_closed_after_linger() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with SimDgramTracer() as t:
            r = await t.route(Trace("198.18.6.2", expiry=1.0, max_flows=16))
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
    assert t.engine.table == {} and t._blocks == {}


def test_sim_dgram_mode_max_flows_bounds_the_sockets() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with SimDgramTracer() as t:
            r = await t.route(Trace("198.18.6.2", expiry=0.5, max_flows=3))
            return r, t.fam

    r, fam = run_virtual(main)  # type: ignore[misc]
    assert fam.opened == 3 and all(len(h.probes) <= 3 for h in r.hops)


def test_sim_dgram_mode_truncated_quotes_time_out() -> None:
    """A router quoting no payload (8 bytes of UDP) cannot be credited: its hop shows
    timeouts, the others are unaffected, and the engine counts the entries as ignored."""

    async def main():  # type: ignore[no-untyped-def]
        async with SimDgramTracer(lambda ttl: 0 if ttl == 2 else None) as t:
            r = await t.route(Trace("198.18.6.2", expiry=0.5, flows=4))
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
