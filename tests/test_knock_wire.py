"""Knock classification, SYN building and the knock CLI's pure parts, without privileges.

Replies are crafted byte by byte (SYN-ACK, RST, ICMP/ICMPv6 errors quoting our SYN) and fed to
the classifiers the Knocker's receive loops use; garbage must classify as ``None``, never raise.
"""

from __future__ import annotations

import ipaddress
import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netdiag import ErrorReply
from netdiag.knock import Knock, KnockResult, KnockStats
from netdiag.knock.__main__ import line, parse_target, summary
from netdiag.wire.checksum import checksum, pseudo_header_v4, pseudo_header_v6
from netdiag.wire.icmp import ErrorKind, Unreach
from netdiag.wire.ip import build_ipv4_header
from netdiag.wire.knock import QuotedSyn, answers, classify_icmp, classify_tcp
from netdiag.wire.tcp import ACK, PSH, RST, SYN, TcpSegment, build_syn, build_syn_dpkt, syn_options

SRC4 = ipaddress.IPv4Address("198.18.1.2").packed
DST4 = ipaddress.IPv4Address("198.18.6.2").packed
SRC6 = ipaddress.IPv6Address("2001:db8:1::2").packed
DST6 = ipaddress.IPv6Address("2001:db8:6::2").packed
SPORT, DPORT = 40001, 443
ISN = 0x12345678


def segment(sport: int, dport: int, seq: int, ack: int, flags: int, src: bytes, dst: bytes):
    """A TCP header (no options) with a correct checksum for ``src``/``dst``."""
    return build_syn(src, dst, sport, dport, seq, options=b"", flags=flags, ack=ack)


def ipv4(src: bytes, dst: bytes, payload: bytes, proto: int = 6, ttl: int = 61) -> bytes:
    return build_ipv4_header(src, dst, proto, len(payload), ttl=ttl) + payload


def ipv6(src: bytes, dst: bytes, payload: bytes, nxt: int = 6, hlim: int = 61) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), nxt, hlim) + src + dst + payload


def our_syn4() -> bytes:
    return ipv4(SRC4, DST4, build_syn(SRC4, DST4, SPORT, DPORT, ISN), ttl=64)


def our_syn6() -> bytes:
    return ipv6(SRC6, DST6, build_syn(SRC6, DST6, SPORT, DPORT, ISN), hlim=64)


def icmp4(typ: int, code: int, quote: bytes) -> bytes:
    body = struct.pack("!BBHI", typ, code, 0, 0) + quote
    ck = checksum(body)
    return body[:2] + struct.pack("!H", ck) + body[4:]


def icmp6(typ: int, code: int, quote: bytes) -> bytes:
    return struct.pack("!BBHI", typ, code, 0, 0) + quote  # checksum is the kernel's business


KEY4 = (SRC4, SPORT, DST4, DPORT)
KEY6 = (SRC6, SPORT, DST6, DPORT)


# -- SYN-ACK and RST on the raw TCP socket ---------------------------------------------------


class TestTcpAnswers:
    def test_syn_ack_v4_keyed_from_our_side(self) -> None:
        pkt = ipv4(DST4, SRC4, segment(DPORT, SPORT, 999, ISN + 1, SYN | ACK, DST4, SRC4))
        found = classify_tcp(pkt, False, b"ignored", None)
        assert found is not None
        key, seg = found
        assert key == KEY4
        assert isinstance(seg, TcpSegment) and seg.syn_ack and not seg.rst
        assert answers(seg, ISN)
        assert not answers(seg, ISN + 1)  # a later probe on the same ports: not its answer

    def test_syn_ack_with_wrong_ack_does_not_answer(self) -> None:
        for ack in (ISN, ISN + 2, 0):
            seg = segment(DPORT, SPORT, 1, ack, SYN | ACK, DST6, SRC6)
            found = classify_tcp(seg, True, DST6, SRC6)
            assert found is not None and found[0] == KEY6
            assert not answers(found[1], ISN)

    def test_rst_ack_answers_closed(self) -> None:
        seg = segment(DPORT, SPORT, 0, ISN + 1, RST | ACK, DST6, SRC6)
        found = classify_tcp(seg, True, DST6, SRC6)
        assert found is not None
        key, ev = found
        assert key == KEY6 and ev.rst and answers(ev, ISN)

    def test_rst_needs_the_ack_flag_and_value(self) -> None:
        # A reset without ACK carries no acknowledgement: it cannot prove it answers our SYN.
        bare = classify_tcp(
            ipv4(DST4, SRC4, segment(DPORT, SPORT, ISN + 1, ISN + 1, RST, DST4, SRC4)),
            False, b"", None,
        )  # fmt: skip
        assert bare is not None and not answers(bare[1], ISN)
        wrong = classify_tcp(
            ipv4(DST4, SRC4, segment(DPORT, SPORT, 0, ISN, RST | ACK, DST4, SRC4)), False, b"", None
        )
        assert wrong is not None and not answers(wrong[1], ISN)

    def test_sequence_wraps(self) -> None:
        seg = segment(DPORT, SPORT, 5, 0, SYN | ACK, DST4, SRC4)
        found = classify_tcp(ipv4(DST4, SRC4, seg), False, b"", None)
        assert found is not None and answers(found[1], 0xFFFFFFFF)

    @pytest.mark.parametrize("flags", [SYN, ACK, ACK | PSH, 0, 0x01 | ACK])
    def test_other_segments_are_not_answers(self, flags: int) -> None:
        # Our own SYN looped back, data and pure ACKs of other connections: not for us.
        seg = segment(DPORT, SPORT, 1, ISN + 1, flags, DST4, SRC4)
        assert classify_tcp(ipv4(DST4, SRC4, seg), False, b"", None) is None
        assert classify_tcp(seg, True, DST6, SRC6) is None

    def test_ipv6_needs_pktinfo_destination(self) -> None:
        seg = segment(DPORT, SPORT, 0, ISN + 1, SYN | ACK, DST6, SRC6)
        assert classify_tcp(seg, True, DST6, None) is None

    def test_non_tcp_and_fragments_and_short(self) -> None:
        seg = segment(DPORT, SPORT, 0, ISN + 1, SYN | ACK, DST4, SRC4)
        assert classify_tcp(ipv4(DST4, SRC4, seg, proto=17), False, b"", None) is None
        frag = bytearray(ipv4(DST4, SRC4, seg))
        frag[6:8] = struct.pack("!H", 0x2000 | 3)  # offset 24 bytes
        assert classify_tcp(bytes(frag), False, b"", None) is None
        assert classify_tcp(ipv4(DST4, SRC4, seg[:19]), False, b"", None) is None
        bad_offset = bytearray(seg)
        bad_offset[12] = 4 << 4
        assert classify_tcp(bytes(bad_offset), True, DST6, SRC6) is None
        assert classify_tcp(b"", False, b"", None) is None


# -- ICMP errors quoting our SYN ---------------------------------------------------------------


class TestIcmpErrors:
    def test_v4_admin_prohibited_full_quote(self) -> None:
        pkt = ipv4(DST4, SRC4, icmp4(3, 13, our_syn4()), proto=1)
        found = classify_icmp(pkt, False)
        assert found is not None
        key, ev = found
        assert key == KEY4
        assert isinstance(ev, QuotedSyn) and ev.seq == ISN and answers(ev, ISN)
        assert not answers(ev, ISN + 1)
        assert ev.error.kind is ErrorKind.UNREACHABLE and ev.error.unreach is Unreach.ADMIN

    def test_v4_minimal_quote_of_eight_bytes(self) -> None:
        quote = our_syn4()[: 20 + 8]  # RFC 792: IP header + 64 bits: ports and sequence
        found = classify_icmp(ipv4(SRC4, SRC4, icmp4(3, 1, quote), proto=1), False)
        assert found is not None
        assert found[0] == KEY4 and found[1].seq == ISN
        assert found[1].error.unreach is Unreach.HOST

    def test_v4_quote_too_short(self) -> None:
        quote = our_syn4()[: 20 + 7]
        assert classify_icmp(ipv4(DST4, SRC4, icmp4(3, 13, quote), proto=1), False) is None

    def test_v4_time_exceeded(self) -> None:
        found = classify_icmp(ipv4(DST4, SRC4, icmp4(11, 0, our_syn4()), proto=1), False)
        assert found is not None and found[1].error.kind is ErrorKind.TIME_EXCEEDED

    def test_v6_admin_prohibited(self) -> None:
        found = classify_icmp(icmp6(1, 1, our_syn6()), True)
        assert found is not None
        key, ev = found
        assert key == KEY6 and ev.seq == ISN
        assert ev.error.unreach is Unreach.ADMIN and ev.error.code == 1

    def test_v6_quote_through_extension_header(self) -> None:
        syn = build_syn(SRC6, DST6, SPORT, DPORT, ISN)
        hop_by_hop = bytes([6, 0]) + b"\x01\x04\x00\x00\x00\x00"  # next=TCP, PadN
        quote = ipv6(SRC6, DST6, hop_by_hop + syn, nxt=0)
        found = classify_icmp(icmp6(1, 4, quote), True)
        assert found is not None and found[0] == KEY6
        assert found[1].error.unreach is Unreach.PORT

    def test_quoted_non_syn_is_not_ours(self) -> None:
        seg = segment(SPORT, DPORT, ISN, 7, ACK | PSH, SRC4, DST4)
        pkt = ipv4(DST4, SRC4, icmp4(3, 13, ipv4(SRC4, DST4, seg)), proto=1)
        assert classify_icmp(pkt, False) is None

    def test_quoted_udp_and_echo_are_not_ours(self) -> None:
        udp = struct.pack("!HHHH", SPORT, DPORT, 8, 0)
        pkt = ipv4(DST4, SRC4, icmp4(3, 3, ipv4(SRC4, DST4, udp, proto=17)), proto=1)
        assert classify_icmp(pkt, False) is None
        echo_reply = ipv4(DST4, SRC4, icmp4(0, 0, b"\x00" * 16), proto=1)
        assert classify_icmp(echo_reply, False) is None
        assert classify_icmp(icmp6(129, 0, b"x" * 8), True) is None
        assert classify_icmp(icmp6(134, 0, b"x" * 16), True) is None  # router advert

    def test_not_icmp_or_broken(self) -> None:
        assert classify_icmp(our_syn4(), False) is None
        assert classify_icmp(b"\x45" + b"\x00" * 10, False) is None
        assert classify_icmp(b"", True) is None
        assert classify_icmp(icmp6(1, 1, b"\x60" + b"\x00" * 20), True) is None


@given(st.binary(max_size=200), st.booleans(), st.binary(min_size=4, max_size=16))
def test_garbage_never_raises(data: bytes, v6: bool, addr: bytes) -> None:
    found = classify_tcp(data, v6, addr, addr)
    assert found is None or found[1].flags & (RST | SYN)
    classify_icmp(data, v6)


@given(
    st.binary(max_size=120),
    st.sampled_from([(3, 13), (3, 3), (11, 0), (12, 0)]),
    st.integers(0, 200),
)
def test_garbage_quotes_never_raise(tail: bytes, tc: tuple[int, int], cut: int) -> None:
    quote = (our_syn4() + tail)[:cut]
    classify_icmp(ipv4(DST4, SRC4, icmp4(*tc, quote), proto=1), False)
    classify_icmp(icmp6(1, 1, (our_syn6() + tail)[:cut]), True)


# -- the SYN itself ----------------------------------------------------------------------------


class TestSyn:
    @pytest.mark.parametrize(("src", "dst"), [(SRC4, DST4), (SRC6, DST6)])
    def test_checksum_and_options_like_linux(self, src: bytes, dst: bytes) -> None:
        v6 = len(dst) == 16
        seg = build_syn(src, dst, SPORT, DPORT, ISN, options=syn_options(v6, 12345))
        pseudo = (pseudo_header_v6 if v6 else pseudo_header_v4)(src, dst, 6, len(seg))
        assert checksum(pseudo + seg) == 0
        tcp = dpkt.tcp.TCP(seg)
        assert (tcp.sport, tcp.dport, tcp.seq, tcp.flags) == (SPORT, DPORT, ISN, SYN)
        opts = dict(dpkt.tcp.parse_opts(tcp.opts))
        assert struct.unpack("!H", opts[dpkt.tcp.TCP_OPT_MSS])[0] == (1440 if v6 else 1460)
        assert dpkt.tcp.TCP_OPT_SACKOK in opts
        assert struct.unpack("!II", opts[dpkt.tcp.TCP_OPT_TIMESTAMP]) == (12345, 0)
        assert opts[dpkt.tcp.TCP_OPT_WSCALE] == b"\x07"

    def test_matches_dpkt_reference(self) -> None:
        assert build_syn(SRC4, DST4, SPORT, DPORT, ISN) == build_syn_dpkt(
            SRC4, DST4, SPORT, DPORT, ISN
        )

    def test_ipv6_checksum_left_to_the_kernel(self) -> None:
        seg = build_syn(SRC6, DST6, SPORT, DPORT, ISN, checksum_field=False)
        assert seg[16:18] == b"\x00\x00"


# -- the library's values and the CLI's pure parts ---------------------------------------------


def test_knock_validation() -> None:
    assert Knock("198.18.6.2", 443).count == 4
    for bad_port in (0, 65536, -1):
        with pytest.raises(ValueError, match="port"):
            Knock("198.18.6.2", bad_port)
    with pytest.raises(TypeError, match="port"):
        Knock("198.18.6.2", True)
    with pytest.raises(ValueError, match="empty"):
        Knock("", 80)
    with pytest.raises(TypeError):
        Knock(b"x", 80)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        Knock("198.18.6.2", 80, count=0)
    with pytest.raises(ValueError, match="interval"):
        Knock("198.18.6.2", 80, interval=-1)
    with pytest.raises(ValueError, match="expiry"):
        Knock("198.18.6.2", 80, expiry=float("nan"))


A = ipaddress.ip_address("198.18.6.2")


def test_stats_count_outcomes() -> None:
    admin = ErrorReply(ErrorKind.UNREACHABLE, 3, 13, "x", unreach=Unreach.ADMIN)
    local = ErrorReply.local_failure("Network is unreachable")
    results = [
        KnockResult(0, A, 443, "open", 0.001, A, 61, SYN | ACK, 40000),
        KnockResult(1, A, 443, "closed", 0.003, A, 61, RST | ACK, 40001),
        KnockResult(2, A, 443, "filtered", sport=40002),
        KnockResult(3, A, 443, "error", 0.002, A, 61, error=admin),
        KnockResult(4, A, 443, "error", error=local),
        KnockResult(0, A, 443, "open", 0.001, A, 61, SYN | ACK, 40000, duplicate=True),
        KnockResult(2, A, 443, "open", 2.5, A, 61, SYN | ACK, 40002, late=True),
    ]
    s = KnockStats.of(results)
    assert (s.sent, s.open, s.closed, s.filtered, s.errors) == (4, 1, 1, 1, 1)
    assert (s.duplicates, s.late, s.received) == (1, 1, 3)
    assert s.loss == 0.25
    assert s.rtt.count == 3 and s.rtt.max == 0.003
    d = s.as_dict()
    assert d["open"] == 1 and d["filtered"] == 1 and d["max"] == 0.003
    assert [r.label for r in results[:5]] == [
        "open",
        "closed (RST)",
        "filtered (timeout)",
        "unreachable (admin-prohibited)",
        "error (Network is unreachable)",
    ]
    assert results[0].as_dict()["flags"] == "SA"
    # the letters as a property, flags stays the int (issue 15)
    assert results[0].flag_letters == "SA" and results[0].flags == SYN | ACK
    assert results[1].flag_letters == "RA" and results[2].flag_letters == ""
    assert results[3].as_dict()["error"]["unreach"] == "admin-prohibited"


def test_cli_lines_and_summary() -> None:
    r = KnockResult(0, A, 443, "open", 0.00031, A, 61, SYN | ACK, 40000)
    assert line(r) == "port 443 open: seq=0 time=0.310 ms"
    assert line(KnockResult(1, A, 443, "closed", 0.0012, A)) == (
        "port 443 closed (RST): seq=1 time=1.20 ms"
    )
    assert line(KnockResult(2, A, 443, "filtered")) == "port 443 filtered (timeout): seq=2"
    router = ipaddress.ip_address("198.18.1.1")
    err = ErrorReply(ErrorKind.UNREACHABLE, 3, 1, "x", unreach=Unreach.HOST)
    assert line(KnockResult(3, A, 443, "error", 0.0005, router, error=err)) == (
        "port 443 unreachable (host) from 198.18.1.1: seq=3 time=0.500 ms"
    )
    stats = KnockStats.of([r, KnockResult(1, A, 443, "filtered")])
    out = summary("dst", 443, stats, 1.0)
    assert out[0] == "--- dst port 443 knock statistics ---"
    assert out[1].startswith("2 probes sent, 1 open, 0 closed, 1 filtered, time 1000ms")
    assert out[2] == "rtt min/avg/max/mdev = 0.310/0.310/0.310/0.000 ms"


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["198.18.6.2:443"], ("198.18.6.2", 443)),
        (["[2001:db8:6::2]:22"], ("2001:db8:6::2", 22)),
        (["localhost", "80"], ("localhost", 80)),
        (["2001:db8:6::2", "65535"], ("2001:db8:6::2", 65535)),
        (["example.test:1"], ("example.test", 1)),
    ],
)
def test_parse_target(words: list[str], expected: tuple[str, int]) -> None:
    assert parse_target(words) == expected


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["198.18.6.2"], "missing port"),
        (["2001:db8:6::2"], "missing port"),
        (["[2001:db8:6::2]"], "missing port"),
        (["[2001:db8:6::2]:"], "missing port"),
        (["host:"], "missing port"),
        ([":80"], "missing host"),
        (["host:0"], "invalid port 0"),
        (["host:65536"], "invalid port 65536"),
        (["host", "-1"], "invalid port"),
        (["host:http"], "invalid port 'http'"),
        (["a", "b", "c"], "expected"),
    ],
)
def test_parse_target_rejects(words: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_target(words)
