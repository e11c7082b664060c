"""UDP datagrams: plain building, Paris-style building with a chosen checksum, and parsing.

Paris traceroute tells the probes of one flow apart by the UDP checksum, a field load balancers
do not hash, while the ports they do hash stay fixed. A checksum cannot simply be written: it
must be right or the destination drops the datagram (and never answers "port unreachable"). So
:func:`build_udp_paris` writes the wanted value into the checksum field and then sets the first
two payload bytes so the datagram sums correctly (RFC 1624 arithmetic): the checksum becomes a
16-bit probe identifier that any router quoting 8 bytes of the datagram sends back to us.

Pure: no sockets, no clocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .checksum import checksum, ones_sum, pseudo_header_v4, pseudo_header_v6

__all__ = [
    "PROTO_UDP",
    "UDP6_CHECKSUM_OFFSET",
    "UdpHeader",
    "build_udp",
    "build_udp_dpkt",
    "build_udp_paris",
    "parse_udp",
    "udp_checksum_ok",
]

_HDR = struct.Struct("!HHHH")
PROTO_UDP = 17
#: Where the checksum sits in a UDP header (the IPV6_CHECKSUM offset)
UDP6_CHECKSUM_OFFSET = 6


def _pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    if len(dst) == 16:
        return pseudo_header_v6(src, dst, PROTO_UDP, length)
    return pseudo_header_v4(src, dst, PROTO_UDP, length)


def build_udp(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, *, checksum_field: bool = True
) -> bytes:
    """A UDP datagram with a correct checksum over the pseudo-header of ``src``/``dst``
    (4 or 16 bytes each), or with 0 in the field when ``checksum_field`` is false."""
    length = 8 + len(payload)
    if not checksum_field:
        return _HDR.pack(sport, dport, length, 0) + payload
    ck = checksum(_pseudo(src, dst, length) + _HDR.pack(sport, dport, length, 0) + payload)
    # 0 means "no checksum" in UDP; a computed 0 is sent as all ones (RFC 768).
    return _HDR.pack(sport, dport, length, ck or 0xFFFF) + payload


def build_udp_dpkt(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """:func:`build_udp` through dpkt's class: the reference the fast path is tested against."""
    import dpkt  # the reference twin only: the CLIs never load dpkt (start-up time)

    seg = dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), sum=0, data=payload)
    raw = bytes(seg)
    ck = checksum(_pseudo(src, dst, len(raw)) + raw)
    return raw[:6] + struct.pack("!H", ck or 0xFFFF) + raw[8:]


def build_udp_paris(
    src: bytes, dst: bytes, sport: int, dport: int, want: int, payload: bytes
) -> bytes:
    """A valid UDP datagram whose checksum field is exactly ``want`` (1..0xFFFF).

    The first two bytes of ``payload`` (at least 2 long) are overwritten with the compensation
    word; the rest is kept. Ports, length and addresses -- what balancers hash -- are untouched,
    so every probe of a flow follows the same path whatever ``want`` is.
    """
    if not 1 <= want <= 0xFFFF:
        raise ValueError(f"a Paris UDP checksum must be in 1..65535, got {want}")
    if len(payload) < 2:
        raise ValueError("a Paris UDP payload needs at least 2 bytes for the compensation word")
    length = 8 + len(payload)
    head = _HDR.pack(sport, dport, length, want)
    rest = payload[2:]
    # With the compensation word w at 0, the one's-complement sum of everything the checksum
    # covers is s; the datagram verifies when the total is 0xFFFF (negative zero), so w = ~s.
    s = ones_sum(_pseudo(src, dst, length) + head + b"\x00\x00" + rest)
    w = ~s & 0xFFFF
    return head + struct.pack("!H", w) + rest


def udp_checksum_ok(src: bytes, dst: bytes, datagram: bytes) -> bool:
    """Does ``datagram`` (header + payload) carry a correct checksum for ``src``/``dst``?"""
    if len(datagram) < 8:
        return False
    if datagram[6:8] == b"\x00\x00":
        return len(dst) == 4  # "no checksum" is legal only over IPv4
    return checksum(_pseudo(src, dst, len(datagram)) + datagram) == 0


@dataclass(frozen=True, slots=True)
class UdpHeader:
    """The UDP header fields (``length`` is what the header claims, not what we hold)."""

    sport: int
    dport: int
    length: int
    checksum: int


def parse_udp(data: bytes) -> UdpHeader | None:
    """Parse the 8-byte UDP header at the start of ``data`` (a quote may hold only that)."""
    if len(data) < 8:
        return None
    return UdpHeader(*_HDR.unpack_from(data))
