"""The trace's wire code (netdiag/wire/trace.py), bytes in and values out: Paris probe encoding,
probe ids, reply classification (raw sockets and datagram mode's error queues), the MDA stopping
rule's table. How MDA plans a route is in test_trace_planner.py; the Tracer over simulated
sockets in test_trace_sim.py.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
