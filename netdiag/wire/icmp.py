"""ICMPv4/ICMPv6: building echo requests and parsing anything a raw ICMP socket may deliver.

The parsers turn bytes into small frozen values: :class:`Echo` for echo replies (and requests),
:class:`IcmpError` for time-exceeded / unreachable / packet-too-big / parameter-problem with the
quoted header of the packet that caused it, :class:`OtherIcmp` for the rest, and
:class:`Unparsable` for garbage. They never raise.

Family differences (type numbers, unreachable codes) are normalised into :class:`ErrorKind` and
:class:`Unreach`, so a diagnostic handles "destination unreachable, admin prohibited" the same way
for IPv4 and IPv6.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .checksum import checksum, ones_sum
from .ip import IPHeader, parse_ip, parse_ipv4

__all__ = [
    "DEST_UNREACH4",
    "DEST_UNREACH6",
    "ECHO_REPLY4",
    "ECHO_REPLY6",
    "ECHO_REQUEST4",
    "ECHO_REQUEST6",
    "ERROR_TYPES4",
    "ERROR_TYPES6",
    "PACKET_TOO_BIG6",
    "PARAMETER_PROBLEM4",
    "PARAMETER_PROBLEM6",
    "PROTO_ICMP4",
    "REDIRECT4",
    "REDIRECT6",
    "SOURCE_QUENCH4",
    "TIME_EXCEEDED4",
    "TIME_EXCEEDED6",
    "TOKEN_LEN",
    "Echo",
    "EchoBuilder",
    "EchoKey",
    "ErrorKind",
    "IcmpError",
    "IcmpMessage",
    "OtherIcmp",
    "Unparsable",
    "Unreach",
    "build_echo",
    "build_echo_dpkt",
    "classify_echo",
    "classify_echo_queued_error",
    "echo_payload",
    "error_from_queue",
    "error_text",
    "parse_delivered",
    "parse_icmp",
    "parse_icmp4_packet",
    "token_matches",
]

# ICMPv4 message types (RFC 792; RFC 1812 for parameter problem's use).
ECHO_REPLY4 = 0
DEST_UNREACH4 = 3
SOURCE_QUENCH4 = 4
REDIRECT4 = 5
ECHO_REQUEST4 = 8
TIME_EXCEEDED4 = 11
PARAMETER_PROBLEM4 = 12
#: ICMPv4 errors that quote the packet that caused them
ERROR_TYPES4 = (DEST_UNREACH4, SOURCE_QUENCH4, REDIRECT4, TIME_EXCEEDED4, PARAMETER_PROBLEM4)

# ICMPv6 message types (RFC 4443; redirect: RFC 4861).
DEST_UNREACH6 = 1
PACKET_TOO_BIG6 = 2
TIME_EXCEEDED6 = 3
PARAMETER_PROBLEM6 = 4
ECHO_REQUEST6 = 128
ECHO_REPLY6 = 129
REDIRECT6 = 137
#: ICMPv6 errors that quote the packet that caused them
ERROR_TYPES6 = (DEST_UNREACH6, PACKET_TOO_BIG6, TIME_EXCEEDED6, PARAMETER_PROBLEM6)

#: IP protocol number of ICMP in an IPv4 header
PROTO_ICMP4 = 1
#: Where a redirect's quote starts: after the header, the target and the destination address
_REDIRECT6_QUOTE = 40
#: Bytes of per-probe random token at the start of our echo payloads.
TOKEN_LEN = 8

_HDR = struct.Struct("!BBHHH")
_ECHO_FIELDS = struct.Struct("!HHH")


class ErrorKind(enum.Enum):
    """What an ICMP error says happened to a packet, independent of the IP family."""

    TIME_EXCEEDED = "time-exceeded"
    UNREACHABLE = "unreachable"
    PACKET_TOO_BIG = "packet-too-big"
    PARAMETER_PROBLEM = "parameter-problem"
    SOURCE_QUENCH = "source-quench"
    REDIRECT = "redirect"


class Unreach(enum.Enum):
    """Destination-unreachable reasons of both families, each with traceroute's mark.

    The mark is what traceroute prints after the RTT (``!H``, ``!N``, ``!X`` ...); ``PORT`` has
    none because for UDP probes a port unreachable from the target means "arrived".
    """

    NET = ("net", "!N")
    HOST = ("host", "!H")
    PROTOCOL = ("protocol", "!P")
    PORT = ("port", "")
    FRAG_NEEDED = ("fragmentation-needed", "!F")
    SOURCE_ROUTE = ("source-route-failed", "!S")
    ADMIN = ("admin-prohibited", "!X")
    HOST_PRECEDENCE = ("host-precedence", "!V")
    PRECEDENCE_CUTOFF = ("precedence-cutoff", "!C")
    NO_ROUTE = ("no-route", "!N")
    BEYOND_SCOPE = ("beyond-scope", "!S")
    ADDRESS = ("address", "!H")
    POLICY = ("policy", "!X")
    REJECT_ROUTE = ("reject-route", "!X")
    OTHER = ("other", "!?")

    @property
    def label(self) -> str:
        """The reason in words, e.g. ``admin-prohibited``."""
        return self.value[0]

    @property
    def mark(self) -> str:
        """traceroute's mark for it, e.g. ``!X``."""
        return self.value[1]


_UNREACH4 = {
    0: Unreach.NET,
    1: Unreach.HOST,
    2: Unreach.PROTOCOL,
    3: Unreach.PORT,
    4: Unreach.FRAG_NEEDED,
    5: Unreach.SOURCE_ROUTE,
    6: Unreach.NET,
    7: Unreach.HOST,
    8: Unreach.HOST,
    9: Unreach.ADMIN,
    10: Unreach.ADMIN,
    11: Unreach.NET,
    12: Unreach.HOST,
    13: Unreach.ADMIN,
    14: Unreach.HOST_PRECEDENCE,
    15: Unreach.PRECEDENCE_CUTOFF,
}
_UNREACH6 = {
    0: Unreach.NO_ROUTE,
    1: Unreach.ADMIN,
    2: Unreach.BEYOND_SCOPE,
    3: Unreach.ADDRESS,
    4: Unreach.PORT,
    5: Unreach.POLICY,
    6: Unreach.REJECT_ROUTE,
}


@dataclass(frozen=True, slots=True)
class Echo:
    """An echo request or reply: ``reply`` tells which."""

    reply: bool
    ident: int
    seq: int
    payload: bytes
    checksum: int


@dataclass(frozen=True, slots=True)
class IcmpError:
    """An ICMP error and the header it quotes.

    ``quote`` is the parsed IP header of the packet that caused the error (its ``payload`` holds
    the quoted transport bytes, usually truncated), or ``None`` when the quote is unreadable.
    ``unreach`` is set for destination unreachable. ``info`` carries the MTU of packet-too-big /
    fragmentation-needed, or the pointer of a parameter problem, else 0.
    """

    kind: ErrorKind
    type: int
    code: int
    unreach: Unreach | None
    info: int
    quote: IPHeader | None


@dataclass(frozen=True, slots=True)
class OtherIcmp:
    """A well-formed ICMP message of a type no diagnostic uses (router adverts, ...)."""

    type: int
    code: int


@dataclass(frozen=True, slots=True)
class Unparsable:
    """Bytes that are not a readable ICMP message. ``reason`` says why, for debugging."""

    reason: str


IcmpMessage = Echo | IcmpError | OtherIcmp | Unparsable

_TOO_SHORT = Unparsable("shorter than an ICMP header")


def echo_payload(token: bytes, size: int) -> bytes:
    """The payload of our echo requests: the probe token, then iputils' fill pattern.

    iputils fills byte ``i`` of the payload with ``i & 0xff`` after its timestamp; we do the same
    after our token so captures look familiar. The token is cut if ``size`` is smaller.
    """
    if size <= len(token):
        return token[:size]
    return token + bytes(i & 0xFF for i in range(len(token), size))


def build_echo(ident: int, seq: int, payload: bytes, v6: bool = False) -> bytes:
    """Build an echo request. The ICMPv4 checksum is ours; for ICMPv6 it is left 0.

    For IPv6 the checksum covers a pseudo-header with the source address, which the kernel
    knows better than we do; Linux always fills it on raw ICMPv6 sockets (RFC 3542 section 3.1).
    """
    if v6:
        return _HDR.pack(ECHO_REQUEST6, 0, 0, ident, seq) + payload
    head = _HDR.pack(ECHO_REQUEST4, 0, 0, ident, seq)
    ck = checksum(head + payload)
    return _HDR.pack(ECHO_REQUEST4, 0, ck, ident, seq) + payload


def build_echo_dpkt(ident: int, seq: int, payload: bytes, v6: bool = False) -> bytes:
    """The same echo request built with dpkt's classes: the reference :func:`build_echo` is
    tested against, kept because the fast path above skips dpkt's per-packet objects."""
    import dpkt  # the reference twin only: the CLIs never load dpkt (start-up time)

    if v6:
        msg = dpkt.icmp6.ICMP6(
            type=ECHO_REQUEST6, code=0, data=dpkt.icmp6.ICMP6.Echo(id=ident, seq=seq, data=payload)
        )
        msg.sum = 0
        return bytes(msg.pack_hdr()) + bytes(msg.data)
    return bytes(
        dpkt.icmp.ICMP(
            type=ECHO_REQUEST4, code=0, data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=payload)
        )
    )


def parse_icmp(data: bytes, v6: bool) -> IcmpMessage:
    """Parse one ICMP (``v6=False``) or ICMPv6 message, starting at its type byte."""
    if len(data) < 8:
        return _TOO_SHORT
    typ, code, ck, a, b = _HDR.unpack_from(data)
    if v6:
        if typ in (ECHO_REPLY6, ECHO_REQUEST6):
            return Echo(typ == ECHO_REPLY6, a, b, bytes(data[8:]), ck)
        if typ == TIME_EXCEEDED6:
            return _error(ErrorKind.TIME_EXCEEDED, typ, code, None, 0, data)
        if typ == DEST_UNREACH6:
            return _error(
                ErrorKind.UNREACHABLE, typ, code, _UNREACH6.get(code, Unreach.OTHER), 0, data
            )
        if typ == PACKET_TOO_BIG6:
            return _error(ErrorKind.PACKET_TOO_BIG, typ, code, None, (a << 16) | b, data)
        if typ == PARAMETER_PROBLEM6:
            return _error(ErrorKind.PARAMETER_PROBLEM, typ, code, None, (a << 16) | b, data)
        if typ == REDIRECT6:
            return _error(ErrorKind.REDIRECT, typ, code, None, 0, data, quote_at=_REDIRECT6_QUOTE)
        return OtherIcmp(typ, code)
    if typ in (ECHO_REPLY4, ECHO_REQUEST4):
        return Echo(typ == ECHO_REPLY4, a, b, bytes(data[8:]), ck)
    if typ == TIME_EXCEEDED4:
        return _error(ErrorKind.TIME_EXCEEDED, typ, code, None, 0, data)
    if typ == DEST_UNREACH4:
        unreach = _UNREACH4.get(code, Unreach.OTHER)
        mtu = b if unreach is Unreach.FRAG_NEEDED else 0
        return _error(ErrorKind.UNREACHABLE, typ, code, unreach, mtu, data)
    if typ == PARAMETER_PROBLEM4:
        return _error(ErrorKind.PARAMETER_PROBLEM, typ, code, None, a >> 8, data)
    if typ == SOURCE_QUENCH4:
        return _error(ErrorKind.SOURCE_QUENCH, typ, code, None, 0, data)
    if typ == REDIRECT4:
        return _error(ErrorKind.REDIRECT, typ, code, None, 0, data)
    return OtherIcmp(typ, code)


def _error(
    kind: ErrorKind,
    typ: int,
    code: int,
    unreach: Unreach | None,
    info: int,
    data: bytes,
    quote_at: int = 8,
) -> IcmpError:
    # RFC 4884 extensions may follow the quote; the quoted header parser only reads the
    # header chain and keeps the rest as payload, so extensions are harmless here.
    return IcmpError(kind, typ, code, unreach, info, parse_ip(data[quote_at:]))


def parse_delivered(data: bytes, v6: bool, ip_header: bool) -> IcmpMessage:
    """Parse what a raw ICMP socket delivers: with ``ip_header`` (raw IPv4 sockets) an IPv4
    header comes first and is checked and skipped; ICMPv6 and datagram sockets start at ICMP."""
    if not ip_header:
        return parse_icmp(data, v6)
    parsed = parse_icmp4_packet(data)
    return parsed if isinstance(parsed, Unparsable) else parsed[1]


def parse_icmp4_packet(packet: bytes) -> tuple[IPHeader, IcmpMessage] | Unparsable:
    """Parse what a raw IPv4 ICMP socket delivers: an IPv4 header, then ICMP."""
    ip = parse_ipv4(packet)
    if ip is None:
        return Unparsable("not an IPv4 packet")
    if ip.proto != PROTO_ICMP4:
        return Unparsable("not ICMP")
    if ip.fragment_offset:
        return Unparsable("a non-first fragment")
    return ip, parse_icmp(ip.payload, v6=False)


#: The demux key of an echo probe: (target address packed, identifier, sequence).
EchoKey = tuple[bytes, int, int]


def classify_echo(
    data: bytes, v6: bool, src: bytes, ip_header: bool
) -> tuple[EchoKey, Echo | IcmpError] | None:
    """Which echo probe does this datagram answer? Pure: bytes in, key out.

    Echo replies are keyed by their source, identifier and sequence; ICMP errors by the
    destination, identifier and sequence of the echo request they quote. ``ip_header`` says
    whether ``data`` starts with an IPv4 header (raw IPv4 sockets) or directly with ICMP (raw
    ICMPv6 and datagram sockets). Anything else, including garbage, gives ``None``.
    The token in the payload is *not* checked here: the probe holding the key knows its token.
    """
    # Fast path for the common case, an echo reply under a plain 20-byte IPv4 header: no
    # header object, no generic parse. Must agree with the general path (tested).
    if (
        ip_header
        and len(data) >= 28
        and data[0] == 0x45
        and data[9] == PROTO_ICMP4
        and data[20] == ECHO_REPLY4
        and not (data[6] & 0x1F or data[7])
    ):
        ck, ident, seq = _ECHO_FIELDS.unpack_from(data, 22)
        return (src, ident, seq), Echo(True, ident, seq, data[28:], ck)
    msg = parse_delivered(data, v6, ip_header)
    if isinstance(msg, Echo):
        if not msg.reply:
            return None
        return (src, msg.ident, msg.seq), msg
    if isinstance(msg, IcmpError):
        q = msg.quote
        if q is None or q.proto != (58 if v6 else 1) or len(q.payload) < 8:
            return None
        if q.payload[0] != (ECHO_REQUEST6 if v6 else ECHO_REQUEST4):
            return None
        ident, seq = struct.unpack_from("!HH", q.payload, 4)
        return (q.dst, ident, seq), msg
    return None


def token_matches(msg: Echo | IcmpError, token: bytes) -> bool:
    """Does ``msg`` carry ``token``? Replies must echo it whole; an error's quote may be cut
    short by the router, so only the part it quotes is compared (at least the id/seq matched)."""
    if isinstance(msg, Echo):
        return msg.payload[: len(token)] == token
    q = msg.quote
    if q is None:
        return False
    quoted = q.payload[8 : 8 + len(token)]
    return token[: len(quoted)] == quoted


def error_from_queue(
    v6: bool, typ: int, code: int, info: int, dst: bytes, quoted: bytes
) -> IcmpError | None:
    """Rebuild an :class:`IcmpError` from what a datagram socket's error queue reports.

    The kernel has already parsed the ICMP error into ``sock_extended_err`` (type, code,
    info) and kept only the quoted payload of our packet (``quoted``, starting at our
    transport header) and its destination ``dst``. Normalising it through :func:`parse_icmp`
    keeps one mapping of types and codes for raw and datagram sockets alike. ``None`` when the
    type is not an error.
    """
    msg = parse_icmp(struct.pack("!BBHI", typ & 0xFF, code & 0xFF, 0, info & 0xFFFFFFFF), v6)
    if not isinstance(msg, IcmpError):
        return None
    quote = IPHeader(
        version=6 if v6 else 4,
        src=b"",
        dst=dst,
        proto=58 if v6 else 1,
        ttl=0,
        tos=0,
        ident=0,
        length=0,
        flow_label=0,
        payload=bytes(quoted),
    )
    return IcmpError(msg.kind, msg.type, msg.code, msg.unreach, msg.info, quote)


def classify_echo_queued_error(
    v6: bool, typ: int, code: int, info: int, dst: bytes, quoted: bytes
) -> tuple[EchoKey, IcmpError] | None:
    """The echo probe an error-queue entry is about (datagram ping sockets), or ``None``."""
    if len(quoted) < 8 or quoted[0] != (ECHO_REQUEST6 if v6 else ECHO_REQUEST4):
        return None
    err = error_from_queue(v6, typ, code, info, dst, quoted)
    if err is None:
        return None
    ident, seq = struct.unpack_from("!HH", quoted, 4)
    return (dst, ident, seq), err


_ERROR_TEXT = {
    ErrorKind.TIME_EXCEEDED: "Time to live exceeded",
    ErrorKind.PACKET_TOO_BIG: "Packet too big",
    ErrorKind.PARAMETER_PROBLEM: "Parameter problem",
    ErrorKind.SOURCE_QUENCH: "Source quench",
    ErrorKind.REDIRECT: "Redirect",
}


def error_text(e: IcmpError) -> str:
    """A one-line description of an ICMP error, in iputils' words where it has them."""
    if e.kind is ErrorKind.UNREACHABLE and e.unreach is not None:
        return f"Destination unreachable ({e.unreach.label})"
    return _ERROR_TEXT.get(e.kind, e.kind.value)


class EchoBuilder:
    """Echo requests of one payload shape (an 8-byte token, then iputils' fill), built fast.

    The fill never changes, so its one's-complement sum is computed once; each request then
    only adds its identifier, sequence and token words to it (RFC 1624 style), instead of
    summing the whole packet again. Gives exactly :func:`build_echo`'s bytes (tested).
    """

    __slots__ = ("_base4", "_fill", "v6")

    def __init__(self, size: int, v6: bool = False) -> None:
        if size < TOKEN_LEN:
            raise ValueError(f"EchoBuilder needs room for the {TOKEN_LEN}-byte token, got {size}")
        self.v6 = v6
        self._fill = echo_payload(b"\x00" * TOKEN_LEN, size)[TOKEN_LEN:]
        # Type/code word of a v4 echo request plus the fill, which starts word-aligned.
        self._base4 = (ECHO_REQUEST4 << 8) + ones_sum(self._fill)

    def build(self, ident: int, seq: int, token: int) -> bytes:
        """The request carrying ``token`` (a 64-bit int) as its first 8 payload bytes."""
        tok = token.to_bytes(TOKEN_LEN, "big")
        if self.v6:
            return _HDR.pack(ECHO_REQUEST6, 0, 0, ident, seq) + tok + self._fill
        total = (
            self._base4
            + ident
            + seq
            + (token >> 48)
            + ((token >> 32) & 0xFFFF)
            + ((token >> 16) & 0xFFFF)
            + (token & 0xFFFF)
        )
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        return _HDR.pack(ECHO_REQUEST4, 0, ~total & 0xFFFF, ident, seq) + tok + self._fill
