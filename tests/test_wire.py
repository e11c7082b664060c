"""The pure wire layer: golden vectors, round trips, and garbage that must never raise."""

from __future__ import annotations

import ipaddress
import struct

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netdiag.wire.checksum import checksum, ones_sum, update16
from netdiag.wire.icmp import (
    Echo,
    EchoBuilder,
    ErrorKind,
    IcmpError,
    OtherIcmp,
    Unparsable,
    Unreach,
    build_echo,
    build_echo_dpkt,
    classify_echo,
    echo_payload,
    parse_icmp,
    parse_icmp4_packet,
    token_matches,
)
from netdiag.wire.ip import build_ipv4_header, parse_ip, parse_ipv4, parse_ipv6

# A real capture of `ping localhost` (issue 2): the request's IP header and ICMP header, then a
# 16-byte timeval and iputils' fill pattern 0x10..0x37.
GOLDEN_REQ = bytes.fromhex(
    "45000054921040004001aa967f0000017f0000010800492b551400012d08f460000000006c830d0000000000"
) + bytes(range(0x10, 0x38))
GOLDEN_REPLY_IP = bytes.fromhex("45000054921100004001ea957f0000017f000001")
LO = bytes([127, 0, 0, 1])


def _ck(data: bytes, at: int) -> int:
    return struct.unpack_from("!H", data, at)[0]


def _naive_checksum(data: bytes) -> int:
    """RFC 1071 word by word: the obviously-correct reference for the fast version."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class TestGoldenVector:
    def test_request_parses(self) -> None:
        parsed = parse_icmp4_packet(GOLDEN_REQ)
        assert not isinstance(parsed, Unparsable)
        ip, msg = parsed
        assert isinstance(msg, Echo)
        assert (msg.reply, msg.ident, msg.seq, msg.checksum) == (False, 21780, 1, 0x492B)
        assert ip.ttl == 64 and ip.src == LO and ip.ident == 0x9210

    def test_our_icmp_checksum_matches_capture(self) -> None:
        payload = GOLDEN_REQ[28:]
        built = build_echo(21780, 1, payload)
        assert _ck(built, 2) == 0x492B
        assert built == GOLDEN_REQ[20:]

    def test_our_ip_header_checksum_matches_capture(self) -> None:
        hdr = build_ipv4_header(LO, LO, 1, 64, ident=0x9210, df=True)
        assert _ck(hdr, 10) == 0xAA96
        assert hdr == GOLDEN_REQ[:20]

    def test_reply_checksums(self) -> None:
        request = GOLDEN_REQ[20:]
        reply = b"\x00\x00\x00\x00" + request[4:]
        assert checksum(reply) == 0x512B
        # Incremental update from the request's checksum gives the same (RFC 1624).
        assert update16(0x492B, 0x0800, 0x0000) == 0x512B
        hdr = build_ipv4_header(LO, LO, 1, 64, ident=0x9211, df=False)
        assert hdr == GOLDEN_REPLY_IP
        assert _ck(hdr, 10) == 0xEA95

    def test_a_valid_packet_checksums_to_zero(self) -> None:
        assert checksum(GOLDEN_REQ[:20]) == 0
        assert checksum(GOLDEN_REQ[20:]) == 0


@given(st.binary(max_size=300))
def test_checksum_matches_naive(data: bytes) -> None:
    assert checksum(data) == _naive_checksum(data)


@given(st.binary(min_size=2, max_size=64).filter(lambda b: len(b) % 2 == 0), st.data())
def test_incremental_update_matches_full(data: bytes, draw: st.DataObject) -> None:
    i = draw.draw(st.integers(0, len(data) // 2 - 1)) * 2
    new = draw.draw(st.integers(0, 0xFFFF))
    old_word = (data[i] << 8) | data[i + 1]
    changed = data[:i] + new.to_bytes(2, "big") + data[i + 2 :]
    # One's complement has two zeros; compare as values of the sum, where they are equal.
    assert (
        ones_sum(changed) % 0xFFFF == (~update16(checksum(data), old_word, new) & 0xFFFF) % 0xFFFF
    )


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=200),
    st.booleans(),
)
def test_build_echo_matches_dpkt_and_round_trips(ident: int, seq: int, payload: bytes, v6: bool):
    fast = build_echo(ident, seq, payload, v6)
    assert fast == build_echo_dpkt(ident, seq, payload, v6)
    msg = parse_icmp(fast, v6)
    assert isinstance(msg, Echo)
    assert (msg.reply, msg.ident, msg.seq, msg.payload) == (False, ident, seq, payload)
    if not v6:
        assert checksum(fast) == 0
        assert dpkt.icmp.ICMP(fast).data.id == ident


def test_echo_payload_has_token_then_iputils_pattern() -> None:
    p = echo_payload(b"T" * 8, 56)
    assert len(p) == 56 and p[:8] == b"T" * 8
    assert p[8:] == bytes(range(8, 56))
    assert echo_payload(b"T" * 8, 3) == b"TTT"


def _time_exceeded4(router: bytes, quoted: bytes) -> bytes:
    icmp = bytes([11, 0, 0, 0, 0, 0, 0, 0]) + quoted
    icmp = icmp[:2] + checksum(icmp).to_bytes(2, "big") + icmp[4:]
    return build_ipv4_header(router, LO, 1, len(icmp), ttl=63) + icmp


class TestClassifyEcho:
    dst = bytes([198, 18, 6, 2])
    src = bytes([198, 18, 1, 2])
    router = bytes([198, 18, 1, 1])

    def _request(self, ident: int = 7, seq: int = 3, token: bytes = b"tok12345") -> bytes:
        icmp = build_echo(ident, seq, echo_payload(token, 56))
        return build_ipv4_header(self.src, self.dst, 1, len(icmp)) + icmp

    def test_reply_keyed_by_source_id_seq(self) -> None:
        icmp = bytearray(build_echo(7, 3, echo_payload(b"tok12345", 56)))
        icmp[0] = 0
        pkt = build_ipv4_header(self.dst, self.src, 1, len(icmp)) + bytes(icmp)
        key, msg = classify_echo(pkt, False, self.dst, ip_header=True)  # type: ignore[misc]
        assert key == (self.dst, 7, 3)
        assert token_matches(msg, b"tok12345")
        assert not token_matches(msg, b"other123")

    def test_request_is_not_a_reply(self) -> None:
        assert classify_echo(self._request(), False, self.src, ip_header=True) is None

    def test_time_exceeded_keyed_by_quoted_destination(self) -> None:
        pkt = _time_exceeded4(self.router, self._request()[:28])  # RFC 792 minimum quote
        key, msg = classify_echo(pkt, False, self.router, ip_header=True)  # type: ignore[misc]
        assert key == (self.dst, 7, 3)
        assert isinstance(msg, IcmpError) and msg.kind is ErrorKind.TIME_EXCEEDED
        # Only 8 bytes quoted: no token to compare, so the id/seq match stands.
        assert token_matches(msg, b"tok12345")

    def test_full_quote_checks_token(self) -> None:
        pkt = _time_exceeded4(self.router, self._request())
        _, msg = classify_echo(pkt, False, self.router, ip_header=True)  # type: ignore[misc]
        assert token_matches(msg, b"tok12345")
        assert not token_matches(msg, b"forged!!")

    def test_error_quoting_udp_is_not_an_echo(self) -> None:
        udp = struct.pack("!HHHH", 1000, 33434, 8, 0)
        quoted = build_ipv4_header(self.src, self.dst, 17, 8) + udp
        assert classify_echo(_time_exceeded4(self.router, quoted), False, self.router, True) is None

    def test_icmpv6_echo_reply(self) -> None:
        msg = bytearray(build_echo(9, 1, b"abcdefgh", v6=True))
        msg[0] = 129
        src = ipaddress.IPv6Address("2001:db8:6::2").packed
        key, ev = classify_echo(bytes(msg), True, src, ip_header=False)  # type: ignore[misc]
        assert key == (src, 9, 1) and isinstance(ev, Echo) and ev.reply


def _ipv6(src: str, dst: str, nxt: int, payload: bytes, hlim: int = 1) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28 | 0x12345, len(payload), nxt, hlim)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


class TestIPv6:
    def test_extension_headers_are_walked(self) -> None:
        udp = struct.pack("!HHHH", 40000, 33434, 8, 0)
        hop_by_hop = bytes([60, 0]) + bytes(6)  # next: destination options, 8 bytes
        dest_opts = bytes([44, 0]) + bytes(6)  # next: fragment
        frag = bytes([17, 0]) + struct.pack("!HI", 0, 0xDEADBEEF)  # first fragment, UDP next
        pkt = _ipv6("2001:db8:1::2", "2001:db8:6::2", 0, hop_by_hop + dest_opts + frag + udp)
        h = parse_ipv6(pkt)
        assert h is not None
        assert h.proto == 17 and h.payload == udp and h.ident == 0xDEADBEEF
        assert h.flow_label == 0x12345 and h.ttl == 1

    def test_time_exceeded_quoting_extension_headers(self) -> None:
        echo = build_echo(5, 6, b"12345678", v6=True)
        quoted = _ipv6("2001:db8:1::2", "2001:db8:6::2", 60, bytes([58, 0]) + bytes(6) + echo)
        err = bytes([3, 0, 0, 0, 0, 0, 0, 0]) + quoted
        router = ipaddress.IPv6Address("2001:db8:1::1").packed
        key, msg = classify_echo(err, True, router, ip_header=False)  # type: ignore[misc]
        assert key == (ipaddress.IPv6Address("2001:db8:6::2").packed, 5, 6)
        assert isinstance(msg, IcmpError) and msg.quote is not None and msg.quote.proto == 58

    @pytest.mark.parametrize(
        ("v6", "typ", "code", "kind", "unreach"),
        [
            (False, 3, 13, ErrorKind.UNREACHABLE, Unreach.ADMIN),
            (False, 3, 3, ErrorKind.UNREACHABLE, Unreach.PORT),
            (False, 3, 1, ErrorKind.UNREACHABLE, Unreach.HOST),
            (True, 1, 1, ErrorKind.UNREACHABLE, Unreach.ADMIN),
            (True, 1, 4, ErrorKind.UNREACHABLE, Unreach.PORT),
            (True, 1, 0, ErrorKind.UNREACHABLE, Unreach.NO_ROUTE),
            (True, 2, 0, ErrorKind.PACKET_TOO_BIG, None),
            (True, 4, 0, ErrorKind.PARAMETER_PROBLEM, None),
            (False, 11, 0, ErrorKind.TIME_EXCEEDED, None),
        ],
    )
    def test_error_kinds(self, v6: bool, typ: int, code: int, kind: ErrorKind, unreach) -> None:
        msg = parse_icmp(bytes([typ, code, 0, 0, 0, 0, 0x05, 0xDC]) + bytes(20), v6)
        assert isinstance(msg, IcmpError)
        assert msg.kind is kind and msg.unreach is unreach
        if kind is ErrorKind.PACKET_TOO_BIG:
            assert msg.info == 1500

    def test_marks(self) -> None:
        assert Unreach.ADMIN.mark == "!X" and Unreach.HOST.mark == "!H"
        assert Unreach.NET.mark == "!N" and Unreach.PROTOCOL.mark == "!P"
        assert Unreach.PORT.mark == ""


def test_other_and_short_messages() -> None:
    assert isinstance(parse_icmp(bytes([134, 0]) + bytes(14), True), OtherIcmp)
    assert isinstance(parse_icmp(b"\x00\x00", False), Unparsable)
    assert parse_ip(b"") is None
    assert parse_ipv4(b"\x45" + bytes(10)) is None
    assert parse_ipv4(b"\x4f" + bytes(30)) is None  # IHL beyond the data


@settings(max_examples=500)
@given(st.binary(max_size=200), st.booleans(), st.booleans())
def test_garbage_never_raises(data: bytes, v6: bool, ip_header: bool) -> None:
    parse_icmp(data, v6)
    parse_icmp4_packet(data)
    parse_ip(data)
    out = classify_echo(data, v6, bytes(16 if v6 else 4), ip_header)
    assert out is None or isinstance(out[0], tuple)


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=120), st.integers(0, 255), st.integers(0, 255))
def test_garbage_after_valid_error_header_never_raises(tail: bytes, typ: int, code: int) -> None:
    for v6 in (False, True):
        parse_icmp(bytes([typ, code, 0, 0, 0, 0, 0, 0]) + tail, v6)
        parse_icmp(bytes([typ, code, 0, 0, 0, 0, 0, 0]) + b"\x60" + tail, v6)
        parse_icmp(bytes([typ, code, 0, 0, 0, 0, 0, 0]) + b"\x45" + tail, v6)


@settings(max_examples=300)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=64),
    st.integers(0, 255),
    st.booleans(),
    st.integers(0, 0x1FFF),
)
def test_echo_reply_fast_path_agrees_with_general_parser(
    ident: int, seq: int, payload: bytes, ttl: int, df: bool, frag: int
) -> None:
    icmp = bytearray(build_echo(ident, seq, payload))
    icmp[0] = 0
    hdr = bytearray(build_ipv4_header(LO, LO, 1, len(icmp), ttl=ttl, df=df))
    hdr[6] |= frag >> 8
    hdr[7] = frag & 0xFF
    pkt = bytes(hdr) + bytes(icmp)
    fast = classify_echo(pkt, False, LO, ip_header=True)
    parsed = parse_icmp4_packet(pkt)
    if frag:
        assert fast is None and isinstance(parsed, Unparsable)
        return
    assert not isinstance(parsed, Unparsable)
    assert fast == ((LO, ident, seq), parsed[1])


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**64 - 1),
    st.integers(8, 300),
    st.booleans(),
)
def test_echo_builder_gives_build_echo_bytes(
    ident: int, seq: int, token: int, size: int, v6: bool
) -> None:
    fast = EchoBuilder(size, v6).build(ident, seq, token)
    assert fast == build_echo(ident, seq, echo_payload(token.to_bytes(8, "big"), size), v6)
