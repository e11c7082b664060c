"""rtnetlink route lookups: "which route does the kernel use for this destination?", as bytes.

Pure protocol code (no sockets): :func:`route_request` builds an ``RTM_GETROUTE`` request,
:func:`parse_route` turns the kernel's ``RTM_NEWROUTE`` reply into a :class:`Route`;
:func:`nexthop_request` / :func:`parse_nexthop` do the same for nexthop objects
(``RTM_GETNEXTHOP``). The socket side is :meth:`netdiag.sock.RouteFinder.first_hops`.

Why: a multipath traceroute (MDA) cannot know how many routers answer at TTL 1 without asking,
so it probes that hop with several flows. The kernel knows: if the route it uses for the
destination has one nexthop (one gateway, or on-link), TTL 1 is one router (or the destination
itself), and one probe is enough. :attr:`Route.first_hops` says how many first hops there are.

Why ``RTM_F_FIB_MATCH``: a plain ``RTM_GETROUTE`` answers with the nexthop the kernel picked for
*one* flow (``ip route get``); with the flag it answers with the FIB entry that matched, with all
its multipath nexthops (``ip route get fibmatch``) -- the set every flow is hashed over.

Wire format (Linux uapi headers; numbers are the kernel's, byte order is the host's, attributes
are 4-byte aligned):

* ``linux/netlink.h``: ``struct nlmsghdr`` (len u32, type u16, flags u16, seq u32, pid u32),
  ``NLMSG_ERROR`` carrying ``struct nlmsgerr`` (error s32 = -errno, then the request's header),
  ``struct nlattr`` (len u16 incl. the 4-byte header, type u16).
* ``linux/rtnetlink.h``: ``struct rtmsg`` (family, dst_len, src_len, tos, table, protocol,
  scope, type: u8 each; flags u32), ``RTA_*`` attributes (``struct rtattr`` = nlattr),
  ``struct rtnexthop`` (len u16, flags u8, hops u8 = weight - 1, ifindex s32) followed by its own
  attributes inside ``RTA_MULTIPATH``, ``struct rtvia`` (family u16, address) in ``RTA_VIA``.
* ``linux/nexthop.h``: ``struct nhmsg`` (family, scope, protocol, resvd: u8 each; flags u32),
  ``NHA_*`` attributes, ``struct nexthop_grp`` (id u32, weight u8 = weight - 1, weight_high u8,
  resvd u16) repeated in ``NHA_GROUP``.

Errors: a netlink error reply raises :class:`OSError` with the kernel's errno (``ENETUNREACH``
when there is no route, ...); malformed or truncated input raises :class:`ValueError`, never
``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "NETLINK_ROUTE",
    "NHA_BLACKHOLE",
    "NHA_FDB",
    "NHA_GATEWAY",
    "NHA_GROUP",
    "NHA_GROUP_TYPE",
    "NHA_ID",
    "NHA_OIF",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLMSG_NOOP",
    "NLMSG_OVERRUN",
    "NLM_F_ACK",
    "NLM_F_MULTI",
    "NLM_F_REQUEST",
    "RTA_DST",
    "RTA_GATEWAY",
    "RTA_MULTIPATH",
    "RTA_NH_ID",
    "RTA_OIF",
    "RTA_SRC",
    "RTA_TABLE",
    "RTA_VIA",
    "RTM_F_FIB_MATCH",
    "RTM_GETNEXTHOP",
    "RTM_GETROUTE",
    "RTM_NEWNEXTHOP",
    "RTM_NEWROUTE",
    "RTN_BLACKHOLE",
    "RTN_LOCAL",
    "RTN_PROHIBIT",
    "RTN_UNICAST",
    "RTN_UNREACHABLE",
    "GroupMember",
    "NetlinkMessage",
    "Nexthop",
    "NexthopObject",
    "Route",
    "count_first_hops",
    "nexthop_request",
    "parse_messages",
    "parse_nexthop",
    "parse_route",
    "route_request",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# -- linux/netlink.h ----------------------------------------------------------------------------
#: The routing netlink protocol (socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)).
NETLINK_ROUTE = 0
#: Control message types below NLMSG_MIN_TYPE (0x10).
NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSG_OVERRUN = 0x4
#: The largest errno the kernel returns (include/linux/err.h, MAX_ERRNO).
MAX_ERRNO = 4095
#: nlmsg_flags.
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLMSG_ALIGNTO = 4
NLMSG_HDRLEN = 16
NLA_HDRLEN = 4

# -- linux/rtnetlink.h --------------------------------------------------------------------------
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEXTHOP = 104
RTM_DELNEXTHOP = 105
RTM_GETNEXTHOP = 106

#: enum rtattr_type_t
RTA_UNSPEC = 0
RTA_DST = 1
RTA_SRC = 2
RTA_IIF = 3
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_METRICS = 8
RTA_MULTIPATH = 9
RTA_FLOW = 11
RTA_CACHEINFO = 12
RTA_TABLE = 15
RTA_MARK = 16
RTA_VIA = 18
RTA_PREF = 20
RTA_ENCAP_TYPE = 21
RTA_ENCAP = 22
RTA_EXPIRES = 23
RTA_UID = 25
RTA_NH_ID = 30

#: rtm_flags: RTM_F_FIB_MATCH asks for the matched FIB entry, not the flow's resolved route.
RTM_F_NOTIFY = 0x100
RTM_F_CLONED = 0x200
RTM_F_LOOKUP_TABLE = 0x1000
RTM_F_FIB_MATCH = 0x2000

#: rtm_type
RTN_UNSPEC = 0
RTN_UNICAST = 1
RTN_LOCAL = 2
RTN_BROADCAST = 3
RTN_ANYCAST = 4
RTN_MULTICAST = 5
RTN_BLACKHOLE = 6
RTN_UNREACHABLE = 7
RTN_PROHIBIT = 8
RTN_THROW = 9
RTN_NAT = 10
RTN_XRESOLVE = 11
#: Type names as ``ip route`` prints them.
RTN_NAMES = {
    RTN_UNSPEC: "unspec",
    RTN_UNICAST: "unicast",
    RTN_LOCAL: "local",
    RTN_BROADCAST: "broadcast",
    RTN_ANYCAST: "anycast",
    RTN_MULTICAST: "multicast",
    RTN_BLACKHOLE: "blackhole",
    RTN_UNREACHABLE: "unreachable",
    RTN_PROHIBIT: "prohibit",
    RTN_THROW: "throw",
    RTN_NAT: "nat",
    RTN_XRESOLVE: "xresolve",
}

#: rtnh_flags (struct rtnexthop) and rtm_flags of single-path routes
RTNH_F_DEAD = 1
RTNH_F_PERVASIVE = 2
RTNH_F_ONLINK = 4
RTNH_F_LINKDOWN = 16

# -- linux/nexthop.h ----------------------------------------------------------------------------
NHA_UNSPEC = 0
NHA_ID = 1
NHA_GROUP = 2
NHA_GROUP_TYPE = 3
NHA_BLACKHOLE = 4
NHA_OIF = 5
NHA_GATEWAY = 6
NHA_ENCAP_TYPE = 7
NHA_ENCAP = 8
NHA_GROUPS = 9
NHA_MASTER = 10
NHA_FDB = 11
NHA_RES_GROUP = 12
#: NHA_GROUP_TYPE values
NEXTHOP_GRP_TYPE_MPATH = 0
NEXTHOP_GRP_TYPE_RES = 1

_NLMSGHDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NHMSG = struct.Struct("=BBBBI")
_RTNEXTHOP = struct.Struct("=HBBi")
_NEXTHOP_GRP = struct.Struct("=IBBH")
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_S32 = struct.Struct("=i")
_ADDR_LEN: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 16}


def _align(n: int) -> int:
    return (n + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1)


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetlinkMessage:
    """One netlink message: its header fields, its payload (after the 16-byte header) and the
    whole message as received (what :func:`parse_route` / :func:`parse_nexthop` take)."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class Nexthop:
    """One path of a multipath route (``struct rtnexthop`` + its ``RTA_GATEWAY``/``RTA_VIA``).

    ``gateway`` is None for an on-link path (the destination is the next hop); ``weight`` is
    ``rtnh_hops + 1``, as ``ip route`` prints it.
    """

    gateway: IPAddress | None
    oif: int
    weight: int = 1
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    """What the kernel answered to an ``RTM_GETROUTE``: the route it would use.

    ``type`` is the ``ip route`` name of ``rtm_type`` ("unicast", "local", "blackhole",
    "unreachable", "prohibit", ...). ``gateway``/``oif`` describe a single-path route
    (``RTA_GATEWAY``, or ``RTA_VIA`` for IPv4 routes via an IPv6 gateway); ``nexthops`` the
    paths of a multipath one (``RTA_MULTIPATH``, empty otherwise). ``nh_id`` is set when the
    route points at a nexthop object (``ip route add ... nhid N``); its paths then live in
    that object (:func:`parse_nexthop`), although kernels in ``nexthop_compat_mode`` also
    copy them into the route.
    """

    family: int
    type: str
    table: int
    dst: IPNetwork | None = None
    oif: int = 0
    gateway: IPAddress | None = None
    nexthops: tuple[Nexthop, ...] = ()
    nh_id: int | None = None
    flags: int = 0

    @property
    def first_hops(self) -> int | None:
        """How many distinct first hops this route has (see :func:`count_first_hops`)."""
        return count_first_hops(self)


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One entry of a nexthop group (``struct nexthop_grp``); ``weight`` as ``ip`` prints it."""

    id: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class NexthopObject:
    """A nexthop object (``ip nexthop add id N ...``), as ``RTM_NEWNEXTHOP`` describes it.

    Either a single nexthop (``gateway`` and/or ``oif``), a ``blackhole``, an ``fdb`` nexthop
    (bridge use only), or a ``group`` of other nexthop objects' ids.
    """

    id: int
    family: int = 0
    oif: int = 0
    gateway: IPAddress | None = None
    blackhole: bool = False
    fdb: bool = False
    group: tuple[GroupMember, ...] = ()
    group_type: int = NEXTHOP_GRP_TYPE_MPATH

    @property
    def first_hops(self) -> int | None:
        """1 for a single nexthop, the member count for a group, None for a blackhole or an
        fdb nexthop (no packet of ours leaves through it)."""
        if self.blackhole or self.fdb:
            return None
        return len(self.group) if self.group else 1


def count_first_hops(
    route: Route,
    *,
    oif: int = 0,
    nexthop: NexthopObject | None = None,
    members: tuple[NexthopObject, ...] = (),
) -> int | None:
    """How many distinct routers (or the destination itself) a probe along ``route`` meets at
    TTL 1, or None when that is unknown -- the caller then probes instead of assuming.

    * ``local`` routes: 1, the destination is this host.
    * Other non-``unicast`` types (blackhole, unreachable, prohibit, throw, broadcast, ...):
      None; nothing leaves, or not towards one destination.
    * A multipath route: the number of distinct ``(gateway, oif)`` pairs, with all on-link
      paths counting as one (the destination itself). It is an upper bound -- two paths via
      one router on two links count twice -- because overcounting only costs probes, while
      undercounting would hide a router.
    * A single gateway or an on-link route: 1.
    * A route pointing at a nexthop object (``nh_id``): from ``nexthop`` (the resolved
      object, :func:`parse_nexthop`): 1, its group's member count, or None (blackhole);
      None if it is not given (unresolved) or is another object.

    ``oif`` is the interface the lookup was bound to (SO_BINDTODEVICE): the kernel then uses
    only paths on that interface rather than hashing flows over all of them, so only those
    count. For a nexthop group that needs its ``members`` resolved too (else None).
    """
    if route.type == "local":
        return 1
    if route.type != "unicast":
        return None
    if route.nh_id is not None:
        if nexthop is None or nexthop.id != route.nh_id:
            return None
        if not nexthop.group or nexthop.first_hops is None:
            return nexthop.first_hops
        if not oif:
            return len(nexthop.group)
        by_id = {m.id: m for m in members}
        if any(g.id not in by_id for g in nexthop.group):
            return None
        on_oif = [by_id[g.id] for g in nexthop.group if by_id[g.id].oif == oif]
        return _distinct([(m.gateway, m.oif) for m in on_oif]) or None
    if route.nexthops:
        paths = [(nh.gateway, nh.oif) for nh in route.nexthops if not oif or nh.oif == oif]
        return _distinct(paths) or None
    return 1


def _distinct(paths: list[tuple[IPAddress | None, int]]) -> int:
    """Distinct first hops among (gateway, oif) paths; all on-link paths are one hop."""
    routed = {(gw, dev) for gw, dev in paths if gw is not None}
    return len(routed) + any(gw is None for gw, _ in paths)


# -- building -----------------------------------------------------------------------------------


def _nlmsg(type_: int, flags: int, seq: int, body: bytes) -> bytes:
    if not 0 <= seq <= 0xFFFFFFFF:
        raise ValueError(f"netlink sequence number out of range: {seq}")
    return _NLMSGHDR.pack(NLMSG_HDRLEN + len(body), type_, flags, seq, 0) + body


def _attr(type_: int, value: bytes) -> bytes:
    length = NLA_HDRLEN + len(value)
    return _NLA.pack(length, type_) + value + b"\0" * (_align(length) - length)


def _family(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def route_request(
    dst: IPAddress,
    *,
    seq: int,
    oif: int = 0,
    src: IPAddress | None = None,
    fib_match: bool = True,
) -> bytes:
    """An ``RTM_GETROUTE`` request for the route to ``dst`` (``ip route get [fibmatch] dst``).

    ``oif`` (``RTA_OIF``) and ``src`` (``RTA_SRC``) make the kernel look up as a socket bound
    to that interface / source address would (policy routing rules may select on the source).
    ``fib_match`` sets ``RTM_F_FIB_MATCH``, so the reply carries the matched FIB entry with all
    its multipath nexthops instead of the one nexthop chosen for a single flow.
    """
    if not isinstance(dst, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise TypeError(f"dst must be an ipaddress address, got {dst!r}")
    if src is not None and (
        not isinstance(src, ipaddress.IPv4Address | ipaddress.IPv6Address)
        or src.version != dst.version
    ):
        raise ValueError(f"src {src!r} is not an address of the same family as dst {dst}")
    if not 0 <= oif <= 0x7FFFFFFF:
        raise ValueError(f"interface index out of range: {oif}")
    bits = dst.max_prefixlen
    flags = RTM_F_FIB_MATCH if fib_match else 0
    body = _RTMSG.pack(_family(dst), bits, bits if src is not None else 0, 0, 0, 0, 0, 0, flags)
    body += _attr(RTA_DST, dst.packed)
    if src is not None:
        body += _attr(RTA_SRC, src.packed)
    if oif:
        body += _attr(RTA_OIF, _U32.pack(oif))
    return _nlmsg(RTM_GETROUTE, NLM_F_REQUEST, seq, body)


def nexthop_request(nh_id: int, *, seq: int) -> bytes:
    """An ``RTM_GETNEXTHOP`` request for the nexthop object ``nh_id`` (``ip nexthop get id``)."""
    if not 1 <= nh_id <= 0xFFFFFFFF:
        raise ValueError(f"nexthop id out of range: {nh_id}")
    body = _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(NHA_ID, _U32.pack(nh_id))
    return _nlmsg(RTM_GETNEXTHOP, NLM_F_REQUEST, seq, body)


# -- parsing ------------------------------------------------------------------------------------


def parse_messages(data: bytes) -> list[NetlinkMessage]:
    """Split one datagram read from a netlink socket into its messages.

    ``ValueError`` when a header is truncated or its length is impossible.
    """
    out = []
    off = 0
    while off < len(data):
        if len(data) - off < NLMSG_HDRLEN:
            raise ValueError(f"truncated netlink header: {len(data) - off} bytes at {off}")
        length, type_, flags, seq, pid = _NLMSGHDR.unpack_from(data, off)
        if length < NLMSG_HDRLEN or off + length > len(data):
            raise ValueError(f"bad netlink message length {length} at {off} of {len(data)}")
        raw = bytes(data[off : off + length])
        out.append(NetlinkMessage(type_, flags, seq, pid, raw[NLMSG_HDRLEN:], raw))
        off += _align(length)
    return out


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each attribute; the nested/byte-order flag bits are masked off."""
    off = 0
    while off < len(data):
        if len(data) - off < NLA_HDRLEN:
            raise ValueError(f"truncated attribute header at {off}")
        length, type_ = _NLA.unpack_from(data, off)
        if length < NLA_HDRLEN or off + length > len(data):
            raise ValueError(f"bad attribute length {length} at {off} of {len(data)}")
        yield type_ & 0x3FFF, data[off + NLA_HDRLEN : off + length]
        off += _align(length)


def _first(data: bytes) -> NetlinkMessage:
    """The first message; a netlink error reply raises OSError with its errno."""
    messages = parse_messages(data)
    if not messages:
        raise ValueError("empty netlink reply")
    msg = messages[0]
    if msg.type == NLMSG_ERROR:
        if len(msg.payload) < 4:
            raise ValueError("truncated netlink error message")
        (err,) = _S32.unpack_from(msg.payload)
        if err < -MAX_ERRNO:  # no such errno (the fuzzer's -2**31 made strerror overflow)
            raise ValueError(f"netlink error reply with an impossible errno {-err}")
        if err < 0:
            raise OSError(-err, os.strerror(-err))
        raise ValueError("netlink acknowledgement where a reply was expected")
    return msg


def _u32(value: bytes, what: str) -> int:
    if len(value) != 4:
        raise ValueError(f"{what}: expected 4 bytes, got {len(value)}")
    return int(_U32.unpack(value)[0])


def _address(family: int, value: bytes, what: str) -> IPAddress:
    if _ADDR_LEN.get(family) != len(value):
        raise ValueError(f"{what}: {len(value)} bytes for address family {family}")
    if family == socket.AF_INET:
        return ipaddress.IPv4Address(value)
    return ipaddress.IPv6Address(value)


def _via(value: bytes) -> IPAddress | None:
    """``struct rtvia``: an address of another family (IPv4 routes via IPv6 gateways)."""
    if len(value) < 2:
        raise ValueError("RTA_VIA: truncated")
    (family,) = _U16.unpack_from(value)
    if family not in _ADDR_LEN:
        return None  # e.g. an MPLS route's AF_PACKET neighbour: not an IP gateway
    return _address(family, value[2:], "RTA_VIA")


def _multipath(family: int, data: bytes) -> tuple[Nexthop, ...]:
    out = []
    off = 0
    while off < len(data):
        if len(data) - off < _RTNEXTHOP.size:
            raise ValueError(f"RTA_MULTIPATH: truncated rtnexthop at {off}")
        length, flags, hops, ifindex = _RTNEXTHOP.unpack_from(data, off)
        if length < _RTNEXTHOP.size or off + length > len(data):
            raise ValueError(f"RTA_MULTIPATH: bad rtnexthop length {length} at {off}")
        gateway = None
        for type_, value in _attrs(data[off + _RTNEXTHOP.size : off + length]):
            if type_ == RTA_GATEWAY:
                gateway = _address(family, value, "RTA_GATEWAY")
            elif type_ == RTA_VIA:
                gateway = _via(value)
        out.append(Nexthop(gateway, ifindex, hops + 1, flags))
        off += _align(length)
    return tuple(out)


def parse_route(data: bytes) -> Route:
    """The :class:`Route` in the kernel's reply to :func:`route_request`.

    ``data`` starts with the reply message (a received datagram, or one
    :attr:`NetlinkMessage.raw`). An error reply raises :class:`OSError` with the kernel's errno
    (``ENETUNREACH``, ``EHOSTUNREACH``, ``EINVAL`` for a blackhole ...); anything malformed or
    not an ``RTM_NEWROUTE`` raises :class:`ValueError`.
    """
    msg = _first(data)
    if msg.type != RTM_NEWROUTE:
        raise ValueError(f"expected RTM_NEWROUTE ({RTM_NEWROUTE}), got message type {msg.type}")
    if len(msg.payload) < _RTMSG.size:
        raise ValueError("truncated rtmsg")
    family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, flags = _RTMSG.unpack_from(
        msg.payload
    )
    if family not in _ADDR_LEN:
        raise ValueError(f"route of address family {family}, expected AF_INET or AF_INET6")
    max_len = 8 * _ADDR_LEN[family]
    if dst_len > max_len:
        raise ValueError(f"prefix length {dst_len} > {max_len}")
    dst: IPNetwork | None = None
    oif = 0
    gateway: IPAddress | None = None
    nexthops: tuple[Nexthop, ...] = ()
    nh_id: int | None = None
    for type_, value in _attrs(msg.payload[_RTMSG.size :]):
        if type_ == RTA_TABLE:
            table = _u32(value, "RTA_TABLE")
        elif type_ == RTA_DST:
            addr = _address(family, value, "RTA_DST")
            dst = ipaddress.ip_network((addr, dst_len), strict=False)
        elif type_ == RTA_OIF:
            oif = _u32(value, "RTA_OIF")
        elif type_ == RTA_GATEWAY:
            gateway = _address(family, value, "RTA_GATEWAY")
        elif type_ == RTA_VIA:
            gateway = _via(value)
        elif type_ == RTA_MULTIPATH:
            nexthops = _multipath(family, value)
        elif type_ == RTA_NH_ID:
            nh_id = _u32(value, "RTA_NH_ID")
    if dst is None and dst_len == 0:
        dst = ipaddress.ip_network("0.0.0.0/0" if family == socket.AF_INET else "::/0")
    return Route(
        family=family,
        type=RTN_NAMES.get(rtype, f"type{rtype}"),
        table=table,
        dst=dst,
        oif=oif,
        gateway=gateway,
        nexthops=nexthops,
        nh_id=nh_id,
        flags=flags,
    )


def parse_nexthop(data: bytes) -> NexthopObject:
    """The :class:`NexthopObject` in the kernel's reply to :func:`nexthop_request`.

    Errors as for :func:`parse_route` (``ENOENT`` when there is no such nexthop id).
    """
    msg = _first(data)
    if msg.type != RTM_NEWNEXTHOP:
        raise ValueError(f"expected RTM_NEWNEXTHOP ({RTM_NEWNEXTHOP}), got type {msg.type}")
    if len(msg.payload) < _NHMSG.size:
        raise ValueError("truncated nhmsg")
    family = msg.payload[0]
    nh_id: int | None = None
    oif = 0
    gateway: IPAddress | None = None
    blackhole = fdb = False
    group: tuple[GroupMember, ...] = ()
    group_type = NEXTHOP_GRP_TYPE_MPATH
    for type_, value in _attrs(msg.payload[_NHMSG.size :]):
        if type_ == NHA_ID:
            nh_id = _u32(value, "NHA_ID")
        elif type_ == NHA_OIF:
            oif = _u32(value, "NHA_OIF")
        elif type_ == NHA_GATEWAY:
            gateway = _address(family, value, "NHA_GATEWAY")
        elif type_ == NHA_BLACKHOLE:
            blackhole = True
        elif type_ == NHA_FDB:
            fdb = True
        elif type_ == NHA_GROUP:
            if len(value) % _NEXTHOP_GRP.size:
                raise ValueError(f"NHA_GROUP: {len(value)} bytes, not whole nexthop_grp entries")
            group = tuple(
                GroupMember(mid, (high << 8 | low) + 1)
                for mid, low, high, _ in _NEXTHOP_GRP.iter_unpack(value)
            )
        elif type_ == NHA_GROUP_TYPE:
            if len(value) != 2:
                raise ValueError(f"NHA_GROUP_TYPE: expected 2 bytes, got {len(value)}")
            (group_type,) = _U16.unpack(value)
    if nh_id is None:
        raise ValueError("nexthop reply without NHA_ID")
    return NexthopObject(nh_id, family, oif, gateway, blackhole, fdb, group, group_type)
