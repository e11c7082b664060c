"""ICMP extensions: MPLS label stacks and interface information quoted by routers.

Pure parsing, never raises. RFC 4884 lets time-exceeded, destination-unreachable and
parameter-problem messages carry an *extension structure* after the quoted datagram, and says
where the quote ends:

* ICMPv4 (RFC 4884 section 4.1): byte 5 of the ICMP header is the length of the quoted
  ("original datagram") field in 32-bit words; with extensions it is padded to at least 128
  bytes.
* ICMPv6 (RFC 4884 section 4.2): byte 4 of the ICMPv6 header is that length in 64-bit words.
* A length of 0 is what routers from before RFC 4884 send. Section 5.5 lets a receiver try the
  extension structure right after a 128-byte quote then; we do, and keep it only if its header
  and checksum check out.

The extension structure (section 7) is a 4-byte header -- version 2 (4 bits), 12 reserved bits,
a 16-bit Internet checksum over the whole structure (0 meaning "not computed" is accepted, as
deployed routers send it) -- followed by objects (section 8): length in bytes including the
4-byte object header (16 bits), class-num (8), c-type (8), payload.

Objects understood:

* class 1, c-type 1 -- MPLS label stack (RFC 4950 section 7): 4 bytes per entry, label (20
  bits), traffic class (3, "EXP" before RFC 5462), bottom-of-stack S (1), TTL (8);
* class 2 -- interface information (RFC 5837 section 4): the c-type's bits say which fields
  follow -- role (2 bits), ifIndex, IP address, name, MTU -- in that order.

Any other object is kept as :class:`RawObject`, never an error; a malformed structure makes the
whole extension part ``None`` while the ICMP message itself is kept.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .checksum import checksum
from .icmp import (
    DEST_UNREACH4,
    DEST_UNREACH6,
    PARAMETER_PROBLEM4,
    TIME_EXCEEDED4,
    TIME_EXCEEDED6,
)

__all__ = [
    "CLASS_INTERFACE_INFO",
    "CLASS_MPLS",
    "EXT_VERSION",
    "IcmpExtensions",
    "InterfaceInfo",
    "MplsEntry",
    "RawObject",
    "parse_extensions",
    "parse_objects",
]

#: Extension structure version (RFC 4884 section 7)
EXT_VERSION = 2
#: Object class numbers (IANA "ICMP Extension Object Classes")
CLASS_MPLS = 1
CLASS_INTERFACE_INFO = 2
#: MPLS "incoming label stack" c-type (RFC 4950 section 7)
MPLS_CTYPE_INCOMING = 1
#: Bytes of quote assumed for messages with a zero length field (RFC 4884 section 5.5)
COMPAT_QUOTE = 128
_OBJ = struct.Struct("!HBB")
_U32 = struct.Struct("!I")

#: RFC 5837 section 4.1: the c-type's interface role (its two high bits)
ROLES = ("incoming", "sub-ip", "outgoing", "next-hop")


@dataclass(frozen=True, slots=True)
class MplsEntry:
    """One label stack entry: what an MPLS router says the probe carried when it expired."""

    label: int
    tc: int
    s: bool
    ttl: int

    def __str__(self) -> str:
        """As traceroute -e and mtr show it: ``L=24008,E=0,S=1,T=1``."""
        return f"L={self.label},E={self.tc},S={int(self.s)},T={self.ttl}"


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """Which interface of the router the message is about (RFC 5837)."""

    role: str
    ifindex: int | None = None
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    name: str | None = None
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class RawObject:
    """An extension object netdiag does not interpret, kept as it came."""

    class_num: int
    c_type: int
    payload: bytes


ExtObject = tuple[MplsEntry, ...] | InterfaceInfo | RawObject


@dataclass(frozen=True, slots=True)
class IcmpExtensions:
    """The objects of one extension structure, in order. ``mpls`` is the first label stack."""

    objects: tuple[ExtObject, ...]

    @property
    def mpls(self) -> tuple[MplsEntry, ...]:
        for o in self.objects:
            if isinstance(o, tuple):
                return o
        return ()

    @property
    def interfaces(self) -> tuple[InterfaceInfo, ...]:
        return tuple(o for o in self.objects if isinstance(o, InterfaceInfo))


def _mpls(payload: bytes) -> tuple[MplsEntry, ...] | None:
    if not payload or len(payload) % 4:
        return None
    out = []
    for (word,) in _U32.iter_unpack(payload):
        out.append(MplsEntry(word >> 12, (word >> 9) & 7, bool(word >> 8 & 1), word & 0xFF))
    return tuple(out)


def _interface(c_type: int, p: bytes) -> InterfaceInfo | None:
    """RFC 5837 section 4: c-type bits 7-6 role, 5-4 reserved, 3 ifIndex, 2 IP address,
    1 name, 0 MTU; the fields follow in that order."""
    off = 0
    ifindex = mtu = None
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    name = None
    if c_type & 0x08:
        if len(p) < off + 4:
            return None
        ifindex = _U32.unpack_from(p, off)[0]
        off += 4
    if c_type & 0x04:  # IP address sub-object: AFI, reserved, address (section 4.2)
        if len(p) < off + 4:
            return None
        afi = struct.unpack_from("!H", p, off)[0]
        size = {1: 4, 2: 16}.get(afi)
        if size is None or len(p) < off + 4 + size:
            return None
        addr = ipaddress.ip_address(bytes(p[off + 4 : off + 4 + size]))
        off += 4 + size
    if c_type & 0x02:  # name sub-object: length octet (incl. itself, multiple of 4), UTF-8
        if len(p) <= off:
            return None
        n = p[off]
        if n < 1 or n % 4 or len(p) < off + n:
            return None
        name = bytes(p[off + 1 : off + n]).rstrip(b"\x00").decode("utf-8", "replace")
        off += n
    if c_type & 0x01:
        if len(p) < off + 4:
            return None
        mtu = _U32.unpack_from(p, off)[0]
        off += 4
    return InterfaceInfo(ROLES[c_type >> 6], ifindex, addr, name, mtu)


def parse_objects(data: bytes) -> IcmpExtensions | None:
    """Parse one extension structure (header + objects); ``None`` if it is malformed."""
    if len(data) < 4 or data[0] >> 4 != EXT_VERSION:
        return None
    if struct.unpack_from("!H", data, 2)[0] and checksum(bytes(data)) != 0:
        return None
    objects: list[ExtObject] = []
    off = 4
    while off < len(data):
        if len(data) - off < 4:
            return None
        length, class_num, c_type = _OBJ.unpack_from(data, off)
        if length < 4 or off + length > len(data):
            return None
        payload = bytes(data[off + 4 : off + length])
        obj: ExtObject | None = None
        if class_num == CLASS_MPLS and c_type == MPLS_CTYPE_INCOMING:
            obj = _mpls(payload)
        elif class_num == CLASS_INTERFACE_INFO:
            obj = _interface(c_type, payload)
        objects.append(obj if obj is not None else RawObject(class_num, c_type, payload))
        off += length
    return IcmpExtensions(tuple(objects))


def parse_extensions(icmp: bytes, v6: bool) -> IcmpExtensions | None:
    """The extensions of one ICMP/ICMPv6 error message (``icmp`` starts at its type byte), or
    ``None`` when it has none or they are malformed. Only the message types RFC 4884 extends
    (time exceeded, destination unreachable, and for IPv4 parameter problem) are looked at."""
    if len(icmp) < 8:
        return None
    typ = icmp[0]
    if v6:
        if typ not in (DEST_UNREACH6, TIME_EXCEEDED6):  # RFC 4884 section 4.2
            return None
        words, unit = icmp[4], 8
    else:
        if typ not in (DEST_UNREACH4, TIME_EXCEEDED4, PARAMETER_PROBLEM4):  # section 4.1
            return None
        words, unit = icmp[5], 4
    if words:
        quote = words * unit
        if quote < COMPAT_QUOTE:  # the quote is padded to >= 128 bytes when extensions follow
            return None
        start = 8 + quote
        if len(icmp) <= start:
            return None
        return parse_objects(icmp[start:])
    start = 8 + COMPAT_QUOTE
    if len(icmp) < start + 4:
        return None
    ext = parse_objects(icmp[start:])
    # A zero-length field with a checksum of 0 would accept random quote bytes: require a
    # real checksum in the compatibility case.
    if ext is None or struct.unpack_from("!H", icmp, start + 2)[0] == 0:
        return None
    return ext
