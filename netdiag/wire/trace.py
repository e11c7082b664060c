"""Traceroute on the wire: Paris flows, probe identities, reply classification, the MDA rule.

Pure (no sockets, no clocks), so all of it is tested by feeding bytes.

**Flows.** Load balancers hash a packet's addresses, protocol and the first four bytes of its
transport header (the ports; for ICMP the type, code and checksum), and for IPv6 sometimes the
flow label. A *flow* fixes all of those: UDP and TCP flows differ only in the source port, ICMP
flows in the echo identifier (which changes the checksum too). Every probe of a flow, at every
TTL, hashes the same, so it follows one path.

**Probe identity.** Inside a flow, probes differ by a 16-bit probe id ``pid`` that encodes the
TTL (high byte) and an attempt number (low byte), carried where balancers do not look and where
every ICMP error quotes it (the first 8 transport bytes):

====== ==================================== =============================================
proto  flow field                           probe id field
====== ==================================== =============================================
UDP    source port                          UDP checksum (payload compensates, RFC 1624)
TCP    source port                          low 16 bits of the sequence number
ICMP   echo identifier                      echo sequence (payload compensates so the
                                            ICMP checksum stays constant within the flow)
====== ==================================== =============================================

IPv4 probes also carry ``pid`` in the IP identification field. The demux key of a probe is
``(target, proto, flow field, pid)``: a reply is credited to a probe only if the quoted header
(or, for echo replies and TCP answers, the reply itself) names exactly that probe.

**Without raw sockets** (the Tracer's datagram mode) UDP probes leave through ordinary UDP
sockets, one per flow: the socket's source port *is* the flow field, and the kernel computes the
checksum, so the probe id cannot live there. It travels in the payload instead
(:func:`build_dgram_payload`: probe id, per-trace token, marker), and ICMP errors come back
through the socket's error queue (IP_RECVERR / IPV6_RECVERR) as ``sock_extended_err`` + offender
address + *the quoted payload* of our datagram, which :func:`classify_queued_udp` turns into the
same key and :class:`Reply` as the raw classifier. What survives: RFC 1812 routers (Linux among
them) and every IPv6 router quote enough to carry the 4 identifying bytes; an IPv4 router quoting
only the 8 bytes RFC 792 requires leaves no payload, and such an answer cannot be credited to a
probe (it is ignored; the probe times out), where the raw mode, keeping the probe id in the UDP
checksum, still matches it.

**MDA.** :func:`mda_probes` is the stopping rule of the Multipath Detection Algorithm: having
seen ``k`` next hops, send that many distinct flows before concluding there is no ``k+1``-th.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import struct
from dataclasses import dataclass

from .icmp import (
    ECHO_REQUEST4,
    ECHO_REQUEST6,
    Echo,
    ErrorKind,
    IcmpError,
    Unreach,
    build_echo,
    error_from_queue,
    parse_delivered,
)
from .icmpext import IcmpExtensions, parse_extensions
from .ip import IPHeader, parse_ipv4
from .tcp import ACK, RST, SYN, build_syn, parse_tcp
from .udp import build_udp_paris

__all__ = [
    "DGRAM_MARKER",
    "ICMP_PAYLOAD",
    "MDA_95",
    "MDA_99",
    "PROTO_ICMP",
    "PROTO_ICMP6",
    "PROTO_TCP",
    "PROTO_UDP",
    "UDP_PAYLOAD",
    "ProbeKey",
    "Reply",
    "ReplyKind",
    "build_dgram_payload",
    "build_icmp_probe",
    "build_probe",
    "build_tcp_probe",
    "build_udp_probe",
    "classify_icmp",
    "classify_queued_udp",
    "classify_tcp",
    "decode_dgram_payload",
    "decode_pid",
    "encode_pid",
    "key_from_quote",
    "mda_probes",
    "tcp_seq",
]

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMP6 = 1, 6, 17, 58

#: MDA stopping points (Augustin et al., as tabulated in scamper's tracelb): index k-1 holds
#: the number of flows to send having seen k next hops, at 95% and 99% confidence.
MDA_95 = (6, 11, 16, 21, 27, 33, 38, 44, 51, 57)
MDA_99 = (8, 15, 21, 28, 36)

#: Transport payload sizes: 2 compensation bytes, then a fixed marker (UDP) or a 4-byte
#: per-trace token and fill (ICMP). Small, like traceroute's, and constant within a flow.
UDP_PAYLOAD = b"\x00\x00NETDIAG-TR"
ICMP_PAYLOAD = 12

MAX_ATTEMPT = 0xFE  # pid 0xFFFF stays unused: 0/0xFFFF are the two zeros of the checksum

#: ``(target address packed, protocol number, flow field, probe id)``
ProbeKey = tuple[bytes, int, int, int]


# -- probe identity ----------------------------------------------------------------------------


def encode_pid(ttl: int, attempt: int = 0) -> int:
    """The 16-bit probe id of the ``attempt``-th probe of a flow at ``ttl``. Never 0 (TTL >= 1),
    which matters because it is written as a UDP checksum, where 0 means "none"."""
    if not 1 <= ttl <= 255:
        raise ValueError(f"ttl must be between 1 and 255, got {ttl}")
    if not 0 <= attempt <= MAX_ATTEMPT:
        raise ValueError(f"attempt must be between 0 and {MAX_ATTEMPT}, got {attempt}")
    return ttl << 8 | attempt


def decode_pid(pid: int) -> tuple[int, int]:
    """``(ttl, attempt)`` from a probe id."""
    return pid >> 8, pid & 0xFF


def tcp_seq(token: int, pid: int) -> int:
    """A TCP probe's sequence number: a per-trace 16-bit token above the probe id."""
    return (token & 0xFFFF) << 16 | pid


# -- building probes -----------------------------------------------------------------------------


def build_udp_probe(
    src: bytes, dst: bytes, sport: int, dport: int, pid: int, payload: bytes = UDP_PAYLOAD
) -> bytes:
    """A UDP probe of flow ``sport`` whose checksum is ``pid``.

    ``src`` must be the address the packet really leaves from (the checksum covers it); the
    Tracer finds it per target and, over IPv6, pins it with IPV6_PKTINFO.
    """
    return build_udp_paris(src, dst, sport, dport, pid, payload)


def build_tcp_probe(
    src: bytes, dst: bytes, sport: int, dport: int, pid: int, token: int, *, v6_kernel_csum: bool
) -> bytes:
    """A TCP SYN of flow ``sport`` carrying ``pid`` in its sequence number.

    With ``v6_kernel_csum`` (IPv6 raw socket with IPV6_CHECKSUM) the checksum is left to the
    kernel; otherwise it is computed over ``src``/``dst``.
    """
    return build_syn(src, dst, sport, dport, tcp_seq(token, pid), checksum_field=not v6_kernel_csum)


def build_icmp_probe(
    ident: int, pid: int, token: bytes, v6: bool, size: int = ICMP_PAYLOAD
) -> bytes:
    """An echo request of flow ``ident`` with sequence ``pid`` and a checksum that does not
    depend on ``pid``: the first payload word is the one's complement of the sequence, so the
    two always sum to 0xFFFF. The ICMPv6 checksum is filled by the kernel, which then also
    yields a value that is constant within the flow."""
    if size < 2 + len(token):
        raise ValueError("ICMP payload too small for the compensation word and token")
    fill = bytes(i & 0xFF for i in range(2 + len(token), size))
    payload = struct.pack("!H", ~pid & 0xFFFF) + token + fill
    return build_echo(ident, pid, payload, v6)


def build_probe(
    proto: int,
    src: bytes,
    dst: bytes,
    flow: int,
    dport: int,
    pid: int,
    *,
    token: int,
    icmp_token: bytes,
    v6: bool,
) -> bytes:
    """The transport bytes of one probe (no IP header) for ``proto`` 6, 17, 1 or 58."""
    if proto == PROTO_UDP:
        return build_udp_probe(src, dst, flow, dport, pid)
    if proto == PROTO_TCP:
        return build_tcp_probe(src, dst, flow, dport, pid, token, v6_kernel_csum=v6)
    return build_icmp_probe(flow, pid, icmp_token, v6)


# -- classifying what comes back -----------------------------------------------------------------


class ReplyKind(enum.Enum):
    """What answered a probe."""

    TIME_EXCEEDED = "time-exceeded"
    UNREACHABLE = "unreachable"
    PACKET_TOO_BIG = "packet-too-big"
    PARAMETER_PROBLEM = "parameter-problem"
    OTHER_ERROR = "other-error"
    ECHO_REPLY = "echo-reply"
    TCP_SYN_ACK = "syn-ack"
    TCP_RST = "rst"


_KIND = {
    ErrorKind.TIME_EXCEEDED: ReplyKind.TIME_EXCEEDED,
    ErrorKind.UNREACHABLE: ReplyKind.UNREACHABLE,
    ErrorKind.PACKET_TOO_BIG: ReplyKind.PACKET_TOO_BIG,
    ErrorKind.PARAMETER_PROBLEM: ReplyKind.PARAMETER_PROBLEM,
}


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer to a probe, independent of family and protocol.

    ``info`` is the MTU of packet-too-big / fragmentation-needed or the pointer of a parameter
    problem. ``quote_ttl`` is the TTL left in the quoted header (how the probe arrived).
    ``token`` is what the reply says about the trace that sent the probe (the TCP sequence's
    high 16 bits, the 4 token bytes of an echo reply's payload, or as many of them as an ICMP
    error quoting an echo probe holds, or the token in a datagram-mode UDP payload); the
    session compares it. ``addr`` is who answered when that is not the packet's source: an
    error from a datagram socket's error queue arrives "from" our probe's destination, and
    names the router that sent it as the offender.
    """

    kind: ReplyKind
    type: int = -1
    code: int = -1
    unreach: Unreach | None = None
    info: int = 0
    quote_ttl: int | None = None
    token: int | bytes | None = None
    addr: bytes | None = None
    #: RFC 4884 extensions of a time-exceeded or unreachable (MPLS label stack, RFC 5837
    #: interface information); ``None`` when there are none, or they are malformed.
    ext: IcmpExtensions | None = None

    @property
    def from_destination(self) -> bool:
        """Did the probe reach the target (echo reply, TCP answer, port unreachable)?
        Port unreachable counts only when it comes from the target; the session checks that."""
        return self.kind in (ReplyKind.ECHO_REPLY, ReplyKind.TCP_SYN_ACK, ReplyKind.TCP_RST) or (
            self.unreach is Unreach.PORT
        )

    @property
    def terminal(self) -> bool:
        """Does this answer end the trace? Arrival, and every unreachable except
        fragmentation-needed (that is a path-MTU report, like packet-too-big)."""
        if self.kind is ReplyKind.UNREACHABLE:
            return self.unreach is not Unreach.FRAG_NEEDED
        return self.kind in (ReplyKind.ECHO_REPLY, ReplyKind.TCP_SYN_ACK, ReplyKind.TCP_RST)

    @property
    def mark(self) -> str:
        """traceroute's annotation: ``!H !N !P !X ...`` for unreachables, ``!F-<mtu>`` for
        fragmentation-needed / packet-too-big, ``!PP`` for a parameter problem, else ``""``."""
        if self.kind is ReplyKind.UNREACHABLE and self.unreach is not None:
            if self.unreach is Unreach.FRAG_NEEDED:
                return f"!F-{self.info}"
            return self.unreach.mark
        if self.kind is ReplyKind.PACKET_TOO_BIG:
            return f"!F-{self.info}"
        if self.kind is ReplyKind.PARAMETER_PROBLEM:
            return "!PP"
        return ""


def key_from_quote(q: IPHeader) -> tuple[ProbeKey, int | bytes | None] | None:
    """The key of the probe an ICMP error quotes, and the token it carries: the TCP token
    (``int``), the echo probe's token bytes as far as the router quoted them (``bytes``,
    possibly cut short or empty), or ``None`` (UDP probes carry none).

    ``q.proto`` is already past any IPv6 extension headers (wire.ip walks them), so quotes of
    probes that carried, say, a destination-options header are still ours.
    """
    p = q.payload
    if len(p) < 8 or q.fragment_offset:
        return None
    proto = q.proto
    if proto == PROTO_UDP:
        sport, ck = struct.unpack_from("!H4xH", p)
        return (q.dst, PROTO_UDP, sport, ck), None
    if proto == PROTO_TCP:
        sport, seq = struct.unpack_from("!H2xI", p)
        return (q.dst, PROTO_TCP, sport, seq & 0xFFFF), seq >> 16
    if proto in (PROTO_ICMP, PROTO_ICMP6):
        if p[0] != (ECHO_REQUEST6 if proto == PROTO_ICMP6 else ECHO_REQUEST4):
            return None
        ident, seq = struct.unpack_from("!HH", p, 4)
        # After the 8-byte header: 2 compensation bytes, then the trace's 4-byte token.
        return (q.dst, proto, ident, seq), bytes(p[10:14])
    return None


def classify_icmp(
    data: bytes, v6: bool, src: bytes, ip_header: bool
) -> tuple[ProbeKey, Reply] | None:
    """Which probe does this ICMP/ICMPv6 datagram answer? ``None`` if none of ours could be.

    ``ip_header``: raw IPv4 sockets deliver the IP header first; ICMPv6 sockets do not. ``src``
    is the packed source address of the datagram (who answered).
    """
    msg = parse_delivered(data, v6, ip_header)
    if isinstance(msg, Echo):
        if not msg.reply:
            return None
        proto = PROTO_ICMP6 if v6 else PROTO_ICMP
        return (src, proto, msg.ident, msg.seq), Reply(
            ReplyKind.ECHO_REPLY, token=bytes(msg.payload[2:6])
        )
    if isinstance(msg, IcmpError):
        kind = _KIND.get(msg.kind)
        if kind is None or msg.quote is None:
            return None
        found = key_from_quote(msg.quote)
        if found is None:
            return None
        key, token = found
        icmp = data[(data[0] & 0x0F) * 4 :] if ip_header and data else data
        ext = parse_extensions(bytes(icmp), v6)
        reply = Reply(kind, msg.type, msg.code, msg.unreach, msg.info, msg.quote.ttl, token)
        return key, (reply if ext is None else dataclasses.replace(reply, ext=ext))
    return None


def classify_tcp(
    data: bytes, v6: bool, src: bytes, ip_header: bool
) -> tuple[ProbeKey, Reply] | None:
    """Which TCP probe does this segment answer? Only SYN-ACK and RST answer a SYN; their
    acknowledgement number is our sequence + 1, which gives back the probe id and token."""
    if ip_header:
        ip = parse_ipv4(data)
        if ip is None or ip.proto != PROTO_TCP or ip.fragment_offset:
            return None
        src = ip.src
        data = ip.payload
    seg = parse_tcp(data)
    if seg is None or not seg.flags & ACK:
        return None
    if seg.flags & (SYN | RST) == SYN:
        kind = ReplyKind.TCP_SYN_ACK
    elif seg.flags & RST:
        kind = ReplyKind.TCP_RST
    else:
        return None
    seq = (seg.ack - 1) & 0xFFFFFFFF
    return (src, PROTO_TCP, seg.dport, seq & 0xFFFF), Reply(kind, token=seq >> 16)


# -- datagram mode (no raw sockets) -------------------------------------------------------------

#: After the probe id and the token: a fixed marker, so stray payloads are not taken for ours.
DGRAM_MARKER = b"NETDIAG-TR"
_PID_TOKEN = struct.Struct("!HH")
#: ``sock_extended_err.ee_origin`` of errors that came from the network
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3


def build_dgram_payload(pid: int, token: int) -> bytes:
    """The payload of a datagram-mode UDP probe: probe id, the trace's 16-bit token, marker.

    The identifying 4 bytes come first because routers quote from the start: a quote of 12
    bytes of UDP (4 of payload) is enough to credit the answer exactly.
    """
    if not 1 <= pid <= 0xFFFF:
        raise ValueError(f"probe id must be in 1..65535, got {pid}")
    return _PID_TOKEN.pack(pid, token & 0xFFFF) + DGRAM_MARKER


def decode_dgram_payload(quoted: bytes) -> tuple[int, int] | None:
    """``(pid, token)`` from the quoted payload of a datagram-mode probe, or ``None`` when the
    quote is too short to hold them (a router that quoted 8 bytes of UDP: no payload at all),
    carries a probe id no probe has (0, or a TTL of 0), or the marker bytes it holds are not
    ours. A quote cut inside the marker is accepted as far as it goes."""
    if len(quoted) < 4:
        return None
    pid, token = _PID_TOKEN.unpack_from(quoted)
    if pid >> 8 == 0:
        return None
    tail = bytes(quoted[4 : 4 + len(DGRAM_MARKER)])
    if DGRAM_MARKER[: len(tail)] != tail:
        return None
    return pid, token


def classify_queued_udp(
    v6: bool,
    origin: int,
    typ: int,
    code: int,
    info: int,
    offender: bytes | None,
    dst: bytes,
    sport: int,
    quoted: bytes,
) -> tuple[ProbeKey, Reply] | None:
    """Which datagram-mode UDP probe does an error-queue entry answer? ``None`` if none could.

    The arguments are what ``recvmsg(MSG_ERRQUEUE)`` gives on the flow socket bound to
    ``sport``: ``sock_extended_err``'s origin, type, code and info, the offender address (who
    sent the ICMP error), the probe's destination (the message's address) and the quoted
    payload. Only errors from the network count (origin ICMP / ICMPv6; local ones such as
    EMSGSIZE name no router). The key has the raw mode's shape, ``(dst, 17, sport, pid)``, so
    late/duplicate handling and the MDA are shared. Port unreachable (ICMP 3/3, ICMPv6 1/4;
    the kernel reports it as ECONNREFUSED) from the destination ends the trace as arrival; the
    other unreachables carry their ``!H !N !X ...`` marks. Never raises on any input.
    """
    if origin != (SO_EE_ORIGIN_ICMP6 if v6 else SO_EE_ORIGIN_ICMP):
        return None
    if offender is None or len(offender) != (16 if v6 else 4) or len(dst) != len(offender):
        return None
    if not 0 <= sport <= 0xFFFF:
        return None
    ids = decode_dgram_payload(quoted)
    if ids is None:
        return None
    err = error_from_queue(v6, typ, code, info, dst, b"")
    if err is None:
        return None
    kind = _KIND.get(err.kind)
    if kind is None:
        return None
    pid, token = ids
    reply = Reply(kind, err.type, err.code, err.unreach, err.info, None, token, bytes(offender))
    return (bytes(dst), PROTO_UDP, sport, pid), reply


# -- MDA -----------------------------------------------------------------------------------------


def mda_probes(k: int, confidence: float = 0.95) -> int:
    """How many flows to send through a hop where ``k`` next hops were seen before concluding,
    with ``confidence``, that there is no other (MDA stopping rule).

    The tabulated values (95%: k <= 10, 99%: k <= 5) are returned as published; beyond them the
    formula they come from, ``ceil(ln(alpha / (k + 1)) / ln(k / (k + 1)))`` with
    ``alpha = 1 - confidence``. The formula gives every table entry except 95% k=7 and k=8,
    where it says one more (39, 45); the published values win there (see the tests).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    table = MDA_95 if confidence == 0.95 else MDA_99 if confidence == 0.99 else ()
    if k <= len(table):
        return table[k - 1]
    alpha = 1.0 - confidence
    return math.ceil(math.log(alpha / (k + 1)) / math.log(k / (k + 1)))
