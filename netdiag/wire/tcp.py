"""TCP segments: building SYN probes that look like a real client's, and parsing replies.

Shared by the Knocker (half-open RTT) and the Tracer (TCP SYN traceroute). Pure: no sockets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .checksum import checksum, pseudo_header_v4, pseudo_header_v6

__all__ = [
    "ACK",
    "FIN",
    "PROTO_TCP",
    "PSH",
    "RST",
    "SYN",
    "TCP6_CHECKSUM_OFFSET",
    "TcpSegment",
    "build_syn",
    "build_syn_dpkt",
    "parse_tcp",
    "syn_options",
]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
#: IP protocol number of TCP
PROTO_TCP = 6
#: Where the checksum sits in a TCP header: the offset IPV6_CHECKSUM is given so the kernel
#: fills it over IPv6 (it knows the source address the pseudo-header covers)
TCP6_CHECKSUM_OFFSET = 16
_HDR = struct.Struct("!HHIIBBHHH")


def syn_options(v6: bool, tsval: int = 0) -> bytes:
    """The options Linux puts on a SYN, in its order: MSS, SACK-permitted, timestamps, NOP,
    window scale 7. Middleboxes that drop option-less SYNs (or treat them as scans) then see an
    ordinary client. MSS is 1460 for IPv4 and 1440 for IPv6 (an Ethernet path)."""
    mss = 1440 if v6 else 1460
    return (
        struct.pack("!BBH", 2, 4, mss)
        + b"\x04\x02"
        + struct.pack("!BBII", 8, 10, tsval & 0xFFFFFFFF, 0)
        + b"\x01"
        + b"\x03\x03\x07"
    )


def build_syn(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    *,
    options: bytes | None = None,
    window: int = 64240,
    flags: int = SYN,
    ack: int = 0,
    checksum_field: bool = True,
) -> bytes:
    """Build a TCP header (with ``options``, default :func:`syn_options`) and no payload.

    The checksum covers the pseudo-header of ``src``/``dst`` (4 or 16 bytes each). Pass
    ``checksum_field=False`` to leave it 0 for the kernel to fill (IPv6 raw sockets with
    IPV6_CHECKSUM), which also spares us knowing the source address exactly.
    """
    v6 = len(dst) == 16
    if options is None:
        options = syn_options(v6)
    if len(options) % 4:
        options += b"\x00" * (4 - len(options) % 4)
    off = (20 + len(options)) // 4
    head = _HDR.pack(
        sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, flags, window, 0, 0
    )
    seg = head + options
    if not checksum_field:
        return seg
    pseudo = (pseudo_header_v6 if v6 else pseudo_header_v4)(src, dst, 6, len(seg))
    ck = checksum(pseudo + seg)
    return seg[:16] + struct.pack("!H", ck) + seg[18:]


def build_syn_dpkt(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, *, options: bytes | None = None
) -> bytes:
    """:func:`build_syn` through dpkt's classes: the reference the fast path is tested against."""
    import dpkt  # the reference twin only: the CLIs never load dpkt (start-up time)

    v6 = len(dst) == 16
    opts = syn_options(v6) if options is None else options
    seg = dpkt.tcp.TCP(
        sport=sport, dport=dport, seq=seq, ack=0, flags=SYN, win=64240, opts=opts, sum=0
    )
    seg.off = (20 + len(opts)) // 4
    raw = bytes(seg)
    pseudo = (pseudo_header_v6 if v6 else pseudo_header_v4)(src, dst, 6, len(raw))
    ck = checksum(pseudo + raw)
    return raw[:16] + struct.pack("!H", ck) + raw[18:]


@dataclass(frozen=True, slots=True)
class TcpSegment:
    """The fields of a TCP header a prober needs to match and classify a reply."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int

    @property
    def syn_ack(self) -> bool:
        return self.flags & (SYN | ACK | RST) == SYN | ACK

    @property
    def rst(self) -> bool:
        return bool(self.flags & RST)


def parse_tcp(data: bytes) -> TcpSegment | None:
    """Parse a TCP header (at least 20 bytes, sane data offset), or ``None``."""
    if len(data) < 20:
        return None
    sport, dport, seq, ack, off, flags, window, _ck, _urg = _HDR.unpack_from(data)
    if (off >> 4) < 5:
        return None
    return TcpSegment(sport, dport, seq, ack, flags, window)
