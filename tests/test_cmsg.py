"""Ancillary data, encoded and decoded without a socket (netdiag.wire.cmsg)."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from netdiag.wire import cmsg
from netdiag.wire.packet import SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_LOCAL, ExtErr

SOL = socket.SOL_SOCKET
V4 = bytes([198, 18, 1, 1])
V6 = bytes.fromhex("20010db8000100000000000000000001")


def test_encode_v4_and_v6() -> None:
    assert cmsg.encode(False, ttl=7, tos=0x10) == [
        (socket.IPPROTO_IP, cmsg.IP_TTL, struct.pack("@i", 7)),
        (socket.IPPROTO_IP, cmsg.IP_TOS, b"\x10"),
    ]
    anc = cmsg.encode(True, ttl=3, tos=1, src=V6, dontfrag=True)
    assert [(level, t) for level, t, _ in anc] == [
        (socket.IPPROTO_IPV6, cmsg.IPV6_HOPLIMIT),
        (socket.IPPROTO_IPV6, cmsg.IPV6_TCLASS),
        (socket.IPPROTO_IPV6, cmsg.IPV6_PKTINFO),
        (socket.IPPROTO_IPV6, cmsg.IPV6_DONTFRAG),
    ]
    assert anc[2][2] == V6 + bytes(4)  # in6_pktinfo: address, any interface
    assert cmsg.encode(False) == [] and cmsg.encode(True) == []


def test_decode_timestamp_ttl_and_drops() -> None:
    anc = [
        (SOL, cmsg.SO_TIMESTAMPNS, struct.pack("@qq", 12, 345)),
        (SOL, cmsg.SO_RXQ_OVFL, struct.pack("@I", 9)),
        (socket.IPPROTO_IP, cmsg.IP_TTL, struct.pack("@i", 61)),
    ]
    assert cmsg.decode(anc) == (12_000_000_345, 61, None, None, 9)


def test_decode_ttl_as_one_byte_and_v6_hoplimit_and_pktinfo() -> None:
    assert cmsg.decode([(socket.IPPROTO_IP, cmsg.IP_TTL, b"\x40")])[1] == 64
    anc = [
        (socket.IPPROTO_IPV6, cmsg.IPV6_HOPLIMIT, struct.pack("@i", 55)),
        (socket.IPPROTO_IPV6, cmsg.IPV6_PKTINFO, V6 + struct.pack("@I", 2)),
    ]
    _, ttl, dst, _, _ = cmsg.decode(anc)
    assert (ttl, dst) == (55, V6)
    pktinfo4 = struct.pack("@i", 2) + bytes(4) + V4  # ifindex, spec_dst, addr
    assert cmsg.decode([(socket.IPPROTO_IP, cmsg.IP_PKTINFO, pktinfo4)])[2] == V4


def _ee(origin: int, typ: int, code: int, info: int, offender: bytes | None) -> bytes:
    head = struct.pack("@IBBBBII", 113, origin, typ, code, 0, info, 0)
    if offender is None:
        return head
    if len(offender) == 4:
        return head + struct.pack("@H", socket.AF_INET) + bytes(2) + offender + bytes(8)
    return head + struct.pack("@H", socket.AF_INET6) + bytes(6) + offender + bytes(4)


def test_decode_queued_errors_with_offender() -> None:
    anc = [(socket.IPPROTO_IP, cmsg.IP_RECVERR, _ee(SO_EE_ORIGIN_ICMP, 11, 0, 0, V4))]
    err = cmsg.decode(anc)[3]
    assert err == ExtErr(113, SO_EE_ORIGIN_ICMP, 11, 0, 0, V4) and err.from_network
    anc = [(socket.IPPROTO_IPV6, cmsg.IPV6_RECVERR, _ee(3, 1, 4, 0, V6))]
    err6 = cmsg.decode(anc)[3]
    assert err6 is not None and err6.offender == V6 and err6.from_network
    local = cmsg.decode([(socket.IPPROTO_IP, cmsg.IP_RECVERR, _ee(SO_EE_ORIGIN_LOCAL, 0, 0,
                                                                   1500, None))])[3]  # fmt: skip
    assert local is not None and local.offender is None and not local.from_network


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 100), st.binary(max_size=40))))
def test_decode_never_raises(anc: list[tuple[int, int, bytes]]) -> None:
    cmsg.decode(anc)


def _tx_stamp_anc(key: int, sec: int, nsec: int, v6: bool = False) -> list[cmsg.Cmsg]:
    """What recvmsg(MSG_ERRQUEUE) returns for one OPT_TSONLY transmit stamp (as seen on
    Linux 6.18: the queued skb's own SO_TIMESTAMPNS, SCM_TIMESTAMPING, the extended error)."""
    err = struct.pack("@IBBBBII", 42, 4, 0, 0, 0, 0, key)  # ENOMSG, ORIGIN_TIMESTAMPING
    level, typ = (socket.IPPROTO_IPV6, cmsg.IPV6_RECVERR) if v6 else (socket.IPPROTO_IP, 11)
    return [
        (SOL, cmsg.SO_TIMESTAMPNS, struct.pack("@qq", 1, 2)),
        (SOL, cmsg.SCM_TIMESTAMPING, struct.pack("@qqqqqq", sec, nsec, 0, 0, 0, 0)),
        (level, typ, err + bytes(16)),
    ]


def test_decode_tx_stamp() -> None:
    assert cmsg.decode_tx_stamp(_tx_stamp_anc(1234, 5, 6)) == (1234, 5_000_000_006)
    assert cmsg.decode_tx_stamp(_tx_stamp_anc(0xFFFFFFFF, 7, 0, v6=True)) == (0xFFFFFFFF, 7 * 10**9)
    assert cmsg.decode_tx_stamp(_tx_stamp_anc(1, 0, 0)) is None  # no software stamp
    icmp_error = struct.pack("@IBBBBII", 113, SO_EE_ORIGIN_ICMP, 3, 1, 0, 0, 0)
    assert cmsg.decode_tx_stamp([(socket.IPPROTO_IP, 11, icmp_error)]) is None
    stamp_only = _tx_stamp_anc(1, 5, 6)[1:2]  # no extended error: no key, no match
    assert cmsg.decode_tx_stamp(stamp_only) is None
    assert cmsg.decode_tx_stamp([(SOL, cmsg.SCM_TIMESTAMPING, b"\0" * 8)]) is None  # short


def test_ts_opt_id_is_a_u32_cmsg() -> None:
    assert cmsg.ts_opt_id(7) == (SOL, 81, struct.pack("@I", 7))
    assert cmsg.ts_opt_id(1 << 32 | 5)[2] == struct.pack("@I", 5)
