"""Which knock probe does a received packet answer? Pure: bytes in, ``(key, event)`` out.

A knock is a TCP SYN from ``(local address, source port)`` to ``(target, port)``. Three kinds of
packets can answer it, and each is turned into the same demux key
``(local packed, source port, target packed, target port)`` -- the probe's 4-tuple seen from our
side -- plus an event the probe checks against its own initial sequence number (ISN):

* a SYN-ACK from the target (:class:`~netdiag.wire.tcp.TcpSegment`): the port is *open*; it
  answers our SYN only if its ``ack`` is our ISN + 1;
* a RST from the target (also a ``TcpSegment``): the port is *closed*; a reset answering a SYN
  carries the ACK flag with ``ack`` = ISN + 1 (RFC 9293 section 3.10.7.1), checked likewise;
* an ICMP error quoting our SYN (:class:`QuotedSyn`): a router or firewall refused it
  (unreachable, admin prohibited...); the quote holds the SYN's sequence number, which must be
  our ISN.

The sequence check is what keeps a late answer to an earlier probe from being credited to a
later one that happens to reuse the same ports: ISNs are random per probe, so a stale SYN-ACK
matches the key but fails :func:`answers`. Everything else -- other TCP traffic the raw socket
sees, our own SYNs looped back, garbage -- classifies as ``None``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from .icmp import IcmpError, Unparsable, parse_icmp, parse_icmp4_packet
from .ip import parse_ipv4
from .tcp import ACK, PROTO_TCP, RST, SYN, TcpSegment, parse_tcp

__all__ = [
    "KnockEvent",
    "KnockKey",
    "QuotedSyn",
    "answers",
    "classify_icmp",
    "classify_tcp",
    "outcome",
]

#: ``(local address packed, local port, remote address packed, remote port)``.
KnockKey = tuple[bytes, int, bytes, int]

_PORTS_SEQ = struct.Struct("!HHI")
_MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class QuotedSyn:
    """An ICMP error about one of our SYNs: the error, and the sequence number it quotes."""

    error: IcmpError
    seq: int


KnockEvent = TcpSegment | QuotedSyn


def classify_tcp(
    data: bytes, v6: bool, src: bytes, dst: bytes | None
) -> tuple[KnockKey, TcpSegment] | None:
    """Classify what a raw TCP socket delivered: a SYN-ACK or RST gives ``(key, segment)``.

    IPv4 raw sockets hand us the IP header (``data`` starts with it; ``src``/``dst`` are then
    taken from it). IPv6 raw sockets hand us the bare TCP segment: ``src`` is the sender from
    ``recvmsg`` and ``dst`` our local address from IPV6_PKTINFO (``None`` if the kernel did not
    say, in which case the packet cannot be keyed and is ignored).
    """
    if v6:
        seg_bytes = data
        if dst is None:
            return None
    else:
        ip = parse_ipv4(data)
        if ip is None or ip.proto != PROTO_TCP or ip.fragment_offset:
            return None
        seg_bytes, src, dst = ip.payload, ip.src, ip.dst
    if len(seg_bytes) < 20:
        return None
    flags = seg_bytes[13]
    if flags & (SYN | ACK | RST) != SYN | ACK and not flags & RST:
        return None  # neither a SYN-ACK nor a reset: someone else's traffic
    seg = parse_tcp(seg_bytes)
    if seg is None:
        return None
    return (dst, seg.dport, src, seg.sport), seg


def classify_icmp(data: bytes, v6: bool) -> tuple[KnockKey, QuotedSyn] | None:
    """Classify what a raw ICMP/ICMPv6 socket delivered: an error quoting a TCP SYN gives
    ``(key, QuotedSyn)``. ``data`` starts with the IPv4 header for IPv4, with ICMPv6 for IPv6.

    Every ICMP error quotes at least 8 bytes of the offending transport header (RFC 792) --
    exactly the ports and the sequence number, all we need.
    """
    if v6:
        msg = parse_icmp(data, True)
    else:
        parsed = parse_icmp4_packet(data)
        if isinstance(parsed, Unparsable):
            return None
        msg = parsed[1]
    if not isinstance(msg, IcmpError):
        return None
    q = msg.quote
    if q is None or q.proto != PROTO_TCP or q.fragment_offset or len(q.payload) < 8:
        return None
    if len(q.payload) >= 14 and not q.payload[13] & SYN:
        return None  # the quoted segment is not a SYN, so not one of our probes
    sport, dport, seq = _PORTS_SEQ.unpack_from(q.payload)
    return (q.src, sport, q.dst, dport), QuotedSyn(msg, seq)


def answers(event: KnockEvent, isn: int) -> bool:
    """Does ``event`` answer the SYN we sent with initial sequence number ``isn``?

    A SYN-ACK must acknowledge exactly our SYN (``ack == isn + 1``); so must a reset, which
    therefore needs the ACK flag; an ICMP error must quote our ``isn``.
    """
    if isinstance(event, QuotedSyn):
        return event.seq == isn & _MASK
    want = (isn + 1) & _MASK
    if event.flags & RST:
        return bool(event.flags & ACK) and event.ack == want
    return event.syn_ack and event.ack == want


def outcome(event: KnockEvent) -> Literal["open", "closed", "error"]:
    """What an answer says about the port: a SYN-ACK **open**, a reset **closed**, an ICMP
    error quoting the SYN an **error** (unreachable, admin-prohibited ...). No answer at all
    is *filtered*, which the expiry, not a packet, decides."""
    if isinstance(event, QuotedSyn):
        return "error"
    return "closed" if event.flags & RST else "open"
