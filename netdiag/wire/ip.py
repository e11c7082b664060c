"""IPv4/IPv6 header parsing, tolerant of truncation, for received packets and quoted headers.

Raw IPv4 sockets hand us the IP header; ICMP errors of both families quote the header of the
packet that caused them, often truncated. Every diagnostic needs to read those headers, so the
parsing lives here once. Nothing here raises on bad input: callers get ``None``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "EXT_HEADERS",
    "IPHeader",
    "build_ipv4_header",
    "parse_ip",
    "parse_ipv4",
    "parse_ipv6",
]

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")

#: IPv6 extension headers we walk to find the upper-layer protocol (RFC 8200 section 4).
#: 0 hop-by-hop, 43 routing, 44 fragment, 51 AH, 60 destination options, 135 mobility,
#: 139 HIP, 140 shim6.
# IPv6 extension header "next header" values (RFC 8200 section 4; AH: RFC 4302; mobility: RFC
# 6275; HIP: RFC 7401; shim6: RFC 5533).
EXT_HOP_BY_HOP = 0
EXT_ROUTING = 43
EXT_FRAGMENT = 44
EXT_AH = 51
EXT_DEST_OPTS = 60
EXT_MOBILITY = 135
EXT_HIP = 139
EXT_SHIM6 = 140
EXT_HEADERS = frozenset(
    {EXT_HOP_BY_HOP, EXT_ROUTING, EXT_FRAGMENT, EXT_AH, EXT_DEST_OPTS, EXT_MOBILITY, EXT_HIP,
     EXT_SHIM6}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class IPHeader:
    """The fields of an IPv4 or IPv6 header that diagnostics care about.

    Addresses stay packed ``bytes`` (4 or 16 long): they are demux keys on the hot path and
    converting them to ``ipaddress`` objects is left to code that shows them to a person.
    ``payload`` is whatever follows the header chain (possibly truncated); ``proto`` is the
    upper-layer protocol after walking IPv6 extension headers. ``ident`` is the IPv4
    identification field, or the fragment identification of an IPv6 fragment header (else 0).
    ``length`` is the length the header *claims* for the whole packet, which may differ from what
    we actually have when the packet is a truncated quote.
    """

    version: int
    src: bytes
    dst: bytes
    proto: int
    ttl: int
    tos: int
    ident: int
    length: int
    flow_label: int
    payload: bytes
    fragment_offset: int = 0


def parse_ipv4(data: bytes) -> IPHeader | None:
    """Parse an IPv4 header and return it with its payload, or ``None`` if it is not one."""
    if len(data) < 20:
        return None
    vihl, tos, total, ident, frag, ttl, proto, _ck, src, dst = _V4.unpack_from(data)
    if vihl >> 4 != 4:
        return None
    ihl = (vihl & 0x0F) * 4
    if ihl < 20 or ihl > len(data):
        return None
    return IPHeader(
        version=4,
        src=src,
        dst=dst,
        proto=proto,
        ttl=ttl,
        tos=tos,
        ident=ident,
        length=total,
        flow_label=0,
        payload=bytes(data[ihl:]),
        fragment_offset=(frag & 0x1FFF) * 8,
    )


def parse_ipv6(data: bytes) -> IPHeader | None:
    """Parse an IPv6 header, walking extension headers to the upper-layer protocol.

    A truncated extension-header chain still yields a header whose ``proto`` is the last
    next-header value we could read and whose payload starts where we stopped, so a caller can
    tell "ours but truncated" from "not ours".
    """
    if len(data) < 40:
        return None
    vtcfl, plen, nxt, hlim, src, dst = _V6.unpack_from(data)
    if vtcfl >> 28 != 6:
        return None
    off = 40
    ident = 0
    frag_off = 0
    hops = 0
    while nxt in EXT_HEADERS and hops < 16:
        hops += 1
        if off + 8 > len(data):
            break
        this = nxt
        nxt = data[off]
        if this == EXT_FRAGMENT:  # fixed 8 bytes
            frag_off = struct.unpack_from("!H", data, off + 2)[0] & 0xFFF8
            ident = struct.unpack_from("!I", data, off + 4)[0]
            off += 8
            if frag_off:
                # Not the first fragment: no upper-layer header follows.
                break
        elif this == EXT_AH:  # length in 4-octet units minus 2
            off += (data[off + 1] + 2) * 4
        else:
            off += (data[off + 1] + 1) * 8
    if off > len(data):
        off = len(data)
    return IPHeader(
        version=6,
        src=src,
        dst=dst,
        proto=nxt,
        ttl=hlim,
        tos=(vtcfl >> 20) & 0xFF,
        ident=ident,
        length=plen + 40,
        flow_label=vtcfl & 0xFFFFF,
        payload=bytes(data[off:]),
        fragment_offset=frag_off,
    )


def parse_ip(data: bytes) -> IPHeader | None:
    """Parse either family, chosen by the version nibble."""
    if not data:
        return None
    version = data[0] >> 4
    if version == 4:
        return parse_ipv4(data)
    if version == 6:
        return parse_ipv6(data)
    return None


def build_ipv4_header(
    src: bytes,
    dst: bytes,
    proto: int,
    payload_len: int,
    *,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    df: bool = True,
) -> bytes:
    """Build a 20-byte IPv4 header with its checksum (for IP_HDRINCL probes and tests).

    Building the header ourselves is how a probe gets its own TTL and IP ID without touching
    socket-wide options that concurrent probes share.
    """
    from .checksum import checksum

    flags = 0x4000 if df else 0
    head = _V4.pack(0x45, tos, 20 + payload_len, ident, flags, ttl, proto, 0, src, dst)
    ck = checksum(head)
    return head[:10] + struct.pack("!H", ck) + head[12:]
