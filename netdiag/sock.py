"""The thin trio socket layer: open raw sockets, send with per-packet options, receive in batches.

Everything that touches a file descriptor, ancillary data or a clock lives here, so the protocol
code (``netdiag.wire``) stays pure and the diagnostics only say "send these bytes with this TTL".

Design choices, and why:

* Sockets are plain :mod:`socket` objects in non-blocking mode, waited on with
  :func:`trio.lowlevel.wait_readable`. After one wake-up we drain the socket with ``recvmsg_into``
  until it would block (bounded), instead of paying a trio checkpoint per packet: one wake-up
  then serves a burst of thousands of replies.
* Per-packet TTL/TOS (IPv4) and hop limit/traffic class (IPv6) travel as ``sendmsg`` ancillary
  data, never as socket-wide options, so concurrent probes on one socket cannot race.
* Receive times are kernel timestamps (``SO_TIMESTAMPNS``, CLOCK_REALTIME): they are taken when
  the packet arrives, not when our event loop gets around to it, so a busy process does not
  inflate RTTs. Send times are read from the same clock immediately before ``sendmsg``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from .errors import FamilyUnavailableError, PrivilegeError

__all__ = [
    "Bind",
    "ExtErr",
    "IPAddress",
    "Packet",
    "PerFamily",
    "RawSocket",
    "RouteFinder",
    "parse_address",
    "reserve_tcp_port",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")

# Linux constants the socket module does not export on every Python version.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IP_TTL = socket.IP_TTL
IP_TOS = socket.IP_TOS
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 0, 2
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
IPV6_CHECKSUM = getattr(socket, "IPV6_CHECKSUM", 7)
SOL_RAW = getattr(socket, "SOL_RAW", 255)
ICMP_FILTER = 1
ICMP6_FILTER = 1

_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: enum arithmetic costs ~1 µs per packet
_SOL_SOCKET = int(socket.SOL_SOCKET)
_AF_INET6 = int(socket.AF_INET6)
_AF_INET = int(socket.AF_INET)
_TIMESPEC = struct.Struct("@qq")
_EE = struct.Struct("@IBBBBII")  # struct sock_extended_err
_RECVERR_CMSGS = {(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}
_INT = struct.Struct("@i")
_U32 = struct.Struct("@I")
_RECV_BUF = 65536 + 256
_ANC_BUF = 512

#: Default receive buffer: room for tens of thousands of small replies arriving in a burst, the
#: failure mode multiping users hit with the kernel's ~200 KB default.
DEFAULT_RCVBUF = 8 << 20


def parse_address(value: str | IPAddress) -> IPAddress:
    """An ``ipaddress`` object from a string or object; ``ValueError`` names the bad value."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if not isinstance(value, str):
        raise TypeError(f"expected an IP address string or ipaddress object, got {value!r}")
    try:
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


@dataclass(frozen=True, slots=True)
class Bind:
    """Where an object's sockets bind: a source address per family and/or an interface.

    Unset addresses mean "any" (the kernel picks the source per route). ``device`` binds every
    socket to one interface with SO_BINDTODEVICE, as ``ping -I eth0`` does.
    """

    v4: ipaddress.IPv4Address | None = None
    v6: ipaddress.IPv6Address | None = None
    device: str | None = None

    def __init__(
        self,
        v4: str | ipaddress.IPv4Address | None = None,
        v6: str | ipaddress.IPv6Address | None = None,
        device: str | None = None,
    ) -> None:
        a4 = parse_address(v4) if v4 is not None else None
        a6 = parse_address(v6) if v6 is not None else None
        if a4 is not None and a4.version != 4:
            raise ValueError(f"Bind.v4 must be an IPv4 address, got {a4}")
        if a6 is not None and a6.version != 6:
            raise ValueError(f"Bind.v6 must be an IPv6 address, got {a6}")
        if device is not None and (not device or len(device) > 15 or "/" in device):
            raise ValueError(f"not an interface name: {device!r}")
        object.__setattr__(self, "v4", a4)
        object.__setattr__(self, "v6", a6)
        object.__setattr__(self, "device", device)

    @classmethod
    def source(cls, addr: str | IPAddress) -> Bind:
        """Bind only the family of ``addr`` to it (what ``-I 198.18.1.2`` means)."""
        a = parse_address(addr)
        return cls(v4=a) if a.version == 4 else cls(v6=a)

    def for_family(self, v6: bool) -> IPAddress | None:
        return self.v6 if v6 else self.v4


@dataclass(slots=True)
class Packet:
    """One received datagram with what the kernel told us about it.

    ``src`` and ``dst`` are packed addresses (4 or 16 bytes); ``dst`` is known for IPv6 through
    IPV6_PKTINFO and for IPv4 from the IP header (raw sockets) or IP_PKTINFO. ``ttl`` is the
    received TTL or hop limit when the kernel reported it. ``stamp_ns`` is the kernel receive time
    (CLOCK_REALTIME nanoseconds), or our own reading of that clock if the kernel gave none.
    ``port`` is the source port the socket reported (0 for raw sockets). ``drops`` is the
    kernel's running count of datagrams this socket lost to a full receive buffer, as of this
    one (SO_RXQ_OVFL; 0 until the first loss).
    """

    data: bytes
    src: bytes
    dst: bytes | None
    ttl: int | None
    stamp_ns: int
    kernel_stamp: bool
    port: int = 0
    truncated: bool = False
    err: ExtErr | None = None
    drops: int = 0


@dataclass(frozen=True, slots=True)
class ExtErr:
    """An ICMP error the kernel queued on a datagram socket (IP_RECVERR / IPV6_RECVERR).

    Datagram sockets (ICMP "ping" sockets, UDP) never see ICMP errors as packets; with RECVERR
    the kernel parses the error and queues ``struct sock_extended_err`` plus the quoted
    payload of our packet on the socket's error queue. ``origin`` is 2 (ICMP) or 3 (ICMPv6)
    for errors from the network, 1 for local ones (EMSGSIZE ...). ``offender`` is the packed
    address of the router or host that sent the error. The :class:`Packet` carrying it has
    ``data`` = our packet's quoted payload and ``src``/``port`` = the original destination.
    """

    errno: int
    origin: int
    type: int
    code: int
    info: int
    offender: bytes | None


class RawSocket:
    """One socket of one family, non-blocking, with the options every diagnostic wants.

    ``kind`` is ``SOCK_RAW`` (the default) or ``SOCK_DGRAM`` (unprivileged ICMP "ping"
    sockets, and UDP). Opening raises :class:`PrivilegeError` on EPERM/EACCES and
    :class:`FamilyUnavailableError` when the family is not supported on this host.
    """

    #: Datagrams the kernel dropped because the receive buffer was full (SO_RXQ_OVFL), as last
    #: reported; the engine turns increases into a counter and a warning.
    drops: int = 0

    def __init__(
        self,
        v6: bool,
        proto: int,
        bind: Bind | None = None,
        *,
        kind: int = socket.SOCK_RAW,
        icmp_types: Iterable[int] | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        checksum_offset: int | None = None,
        hdrincl: bool = False,
        receive: bool = True,
        pmtudisc: int | None = None,
        recverr: bool = False,
    ) -> None:
        self.v6 = v6
        self.recverr = recverr
        self.proto = proto
        self.kind = kind
        family = socket.AF_INET6 if v6 else socket.AF_INET
        try:
            sock = socket.socket(family, kind, proto)
        except PermissionError:
            raise PrivilegeError(
                "raw sockets" if kind == socket.SOCK_RAW else "ICMP datagram sockets"
            ) from None
        except OSError as e:
            if e.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT):
                raise FamilyUnavailableError(
                    e.errno, f"IPv{6 if v6 else 4} is not available on this host: {e.strerror}"
                ) from None
            if e.errno == errno.EACCES:
                raise PrivilegeError("ICMP datagram sockets") from None
            raise
        self.sock = sock
        try:
            self._setup(bind, icmp_types, rcvbuf, checksum_offset, hdrincl, receive, pmtudisc)
            if recverr:
                if v6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        except BaseException:
            sock.close()
            raise
        self._closed = False

    def _setup(
        self,
        bind: Bind | None,
        icmp_types: Iterable[int] | None,
        rcvbuf: int,
        checksum_offset: int | None,
        hdrincl: bool,
        receive: bool,
        pmtudisc: int | None,
    ) -> None:
        s = self.sock
        s.setblocking(False)
        if bind is not None and bind.device:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, bind.device.encode())
            except OSError as e:
                msg = f"cannot bind to interface {bind.device!r}: {e.strerror}"
                raise OSError(e.errno, msg) from None
        addr = bind.for_family(self.v6) if bind is not None else None
        if addr is not None:
            try:
                s.bind((str(addr), 0))
            except OSError as e:
                raise OSError(e.errno, f"cannot bind to {addr}: {e.strerror}") from None
        if not receive:
            # A send-only socket: make it receive nothing so it never fills up.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256)
            icmp_types = ()
        else:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            # Have the kernel tell us how many datagrams a full buffer cost (a cmsg on each
            # packet once any was lost), so overload shows up as counted loss, not mystery.
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            if self.v6:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                if self.kind != socket.SOCK_RAW:
                    s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        if icmp_types is not None and self.kind == socket.SOCK_RAW:
            self._set_icmp_filter(frozenset(icmp_types))
        if checksum_offset is not None:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, checksum_offset)
        if hdrincl:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        if pmtudisc is not None and not self.v6:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, pmtudisc)

    def _set_icmp_filter(self, allowed: frozenset[int]) -> None:
        """Let only ``allowed`` ICMP types reach this socket, so the kernel drops the rest
        before they wake us (ICMP_FILTER / ICMP6_FILTER: a set bit blocks that type)."""
        if self.v6 and self.proto == socket.IPPROTO_ICMPV6:
            words = [0xFFFFFFFF] * 8
            for t in allowed:
                words[t >> 5] &= ~(1 << (t & 31))
            self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("@8I", *words))
        elif not self.v6 and self.proto == socket.IPPROTO_ICMP:
            mask = 0xFFFFFFFF
            for t in allowed:
                if t < 32:
                    mask &= ~(1 << t)
            self.sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("@I", mask))

    # -- sending ---------------------------------------------------------------------------

    def ancillary(
        self,
        ttl: int | None = None,
        tos: int | None = None,
        src: bytes | None = None,
        dontfrag: bool | None = None,
    ) -> list[tuple[int, int, bytes]]:
        """The ``sendmsg`` ancillary data for per-packet TTL/hop limit, TOS/traffic class,
        IPv6 source address and IPv6 don't-fragment. Built once per probe shape and reusable."""
        anc: list[tuple[int, int, bytes]] = []
        if self.v6:
            if ttl is not None:
                anc.append((socket.IPPROTO_IPV6, IPV6_HOPLIMIT, _INT.pack(ttl)))
            if tos is not None:
                anc.append((socket.IPPROTO_IPV6, IPV6_TCLASS, _INT.pack(tos)))
            if src is not None:
                anc.append((socket.IPPROTO_IPV6, IPV6_PKTINFO, src + b"\x00\x00\x00\x00"))
            if dontfrag is not None:
                anc.append((socket.IPPROTO_IPV6, IPV6_DONTFRAG, _INT.pack(int(dontfrag))))
        else:
            if ttl is not None:
                anc.append((socket.IPPROTO_IP, IP_TTL, _INT.pack(ttl)))
            if tos is not None:
                anc.append((socket.IPPROTO_IP, IP_TOS, bytes([tos])))
        return anc

    def send_nowait(
        self, data: bytes, dst: str, anc: list[tuple[int, int, bytes]], port: int = 0
    ) -> int:
        """Send one datagram now; return the CLOCK_REALTIME nanoseconds read just before.

        Raises ``BlockingIOError`` when the send buffer is full (callers that may wait use
        :meth:`send`). The time is read *before* the syscall because on loopback the reply can
        be received, and kernel-stamped, before ``sendmsg`` even returns.
        """
        addr = (dst, port, 0, 0) if self.v6 else (dst, port)
        t = time.time_ns()
        self.sock.sendmsg((data,), anc, 0, addr)
        return t

    async def send(
        self, data: bytes, dst: str, anc: list[tuple[int, int, bytes]], port: int = 0
    ) -> int:
        """Send one datagram, waiting for buffer space if needed; see :meth:`send_nowait`."""
        while True:
            try:
                return self.send_nowait(data, dst, anc, port)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    # -- receiving -------------------------------------------------------------------------

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.sock)

    def recv_batch(self, limit: int = 512) -> tuple[list[Packet], OSError | None]:
        """Drain up to ``limit`` datagrams without blocking.

        Returns the packets and the first socket error hit (for example ENOBUFS), which stops
        the batch; the caller logs it and keeps receiving. Never raises.
        """
        out: list[Packet] = []
        buf = bytearray(_RECV_BUF)
        recv = self.sock.recvmsg_into
        v6 = self.v6
        if self.recverr:
            # Drain the error queue first: while it holds anything, epoll keeps reporting
            # EPOLLERR and a loop that only read data would spin.
            for _ in range(limit):
                try:
                    n, anc, flags, addr = recv([buf], _ANC_BUF, socket.MSG_ERRQUEUE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    return out, e
                try:
                    out.append(_make_packet(bytes(buf[:n]), anc, flags, addr, v6))
                except (ValueError, struct.error, OSError):
                    continue
        err: OSError | None = None
        raw4 = not v6 and self.kind == socket.SOCK_RAW
        for _ in range(limit):
            try:
                n, anc, flags, addr = recv([buf], _ANC_BUF)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                err = e
                break
            try:
                out.append(_make_packet(bytes(buf[:n]), anc, flags, addr, v6, raw4))
            except (ValueError, struct.error, OSError):
                continue
        if out and out[-1].drops != self.drops:  # cumulative: the newest packet knows best
            self.drops = out[-1].drops
        return out, err

    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()


def _make_packet(
    data: bytes,
    anc: list[tuple[int, int, bytes]],
    flags: int,
    addr: tuple,
    v6: bool,
    raw4: bool = False,
) -> Packet:
    stamp = 0
    ttl: int | None = None
    dst: bytes | None = None
    err: ExtErr | None = None
    drops = 0
    for level, typ, cdata in anc:
        if level == _SOL_SOCKET and typ == SO_TIMESTAMPNS and len(cdata) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(cdata)
            stamp = sec * 1_000_000_000 + nsec
        elif level == _SOL_SOCKET and typ == SO_RXQ_OVFL and len(cdata) >= 4:
            drops = _U32.unpack_from(cdata)[0]
        elif (level, typ) in _RECVERR_CMSGS and len(cdata) >= 16:
            e_errno, origin, etype, ecode, _pad, info, _data = _EE.unpack_from(cdata)
            offender = None
            rest = cdata[16:]
            if len(rest) >= 8:
                family = struct.unpack_from("@H", rest)[0]
                if family == socket.AF_INET:
                    offender = bytes(rest[4:8])
                elif family == socket.AF_INET6 and len(rest) >= 24:
                    offender = bytes(rest[8:24])
            err = ExtErr(e_errno, origin, etype, ecode, info, offender)
        elif level == socket.IPPROTO_IP:
            if typ == IP_TTL and cdata:
                ttl = _INT.unpack_from(cdata)[0] if len(cdata) >= 4 else cdata[0]
            elif typ == IP_PKTINFO and len(cdata) >= 12:
                dst = bytes(cdata[8:12])
        elif level == socket.IPPROTO_IPV6:
            if typ == IPV6_HOPLIMIT and len(cdata) >= 4:
                ttl = _INT.unpack_from(cdata)[0]
            elif typ == IPV6_PKTINFO and len(cdata) >= 16:
                dst = bytes(cdata[:16])
    kernel = stamp != 0
    if not kernel:
        stamp = time.time_ns()
    host = addr[0]
    if v6:
        src = socket.inet_pton(_AF_INET6, host.split("%", 1)[0] if "%" in host else host)
    elif raw4 and err is None and len(data) >= 20 and data[0] == 0x45:
        # A raw IPv4 socket hands us the IP header: its source field is the sender, already
        # packed (what inet_pton of the address string would give, minus a microsecond).
        src = data[12:16]
    else:
        src = socket.inet_pton(_AF_INET, host)
    return Packet(
        data, src, dst, ttl, stamp, kernel, addr[1], bool(flags & _MSG_TRUNC), err, drops
    )


def reserve_tcp_port(v6: bool) -> socket.socket:
    """A TCP socket bound (never listening, never connected) to a port the kernel picked.

    While it stays open the port is ours: ``bind(0)`` only hands out ports no other socket
    holds, and the kernel's ``connect()`` never picks a bound port for its own connections.
    Because the socket is in neither the listening nor the established table, the kernel still
    answers segments for that port with a RST -- what a half-open prober needs. Close it to
    release the port; it was never connected, so it leaves no TIME_WAIT behind.
    """
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("::" if v6 else "0.0.0.0", 0))
    except BaseException:
        s.close()
        raise
    return s


class RouteFinder:
    """Source-address discovery for one family: "which local address would reach ``dst``?"

    Connecting a UDP socket sends nothing but makes the kernel do its route lookup (honouring
    the bind address and interface); ``getsockname`` then tells the chosen source. Probes whose
    checksum or key covers the source (TCP, UDP, traceroute) need it before the first packet
    leaves. The socket is opened once, with the object's raw sockets, so it lives in the same
    network namespace even if the caller's thread moves later.
    """

    def __init__(self, v6: bool, bind: Bind | None = None) -> None:
        self.v6 = v6
        self.sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if bind is not None and bind.device:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, bind.device.encode())
            addr = bind.for_family(v6) if bind is not None else None
            if addr is not None:
                self.sock.bind((str(addr), 0))
        except BaseException:
            self.sock.close()
            raise

    def source(self, dst: IPAddress) -> bytes:
        """The packed local address for ``dst``; ``OSError`` (ENETUNREACH ...) if no route."""
        self.sock.connect((str(dst), 9))
        name = self.sock.getsockname()[0].split("%", 1)[0]
        return socket.inet_pton(socket.AF_INET6 if self.v6 else socket.AF_INET, name)

    def close(self) -> None:
        self.sock.close()


class PerFamily(Generic[T]):
    """What an object opened for each IP family, or why it could not.

    Every diagnostic opens its sockets per family the same way: a family the host lacks is
    remembered and reported when a probe needs it (:class:`FamilyUnavailableError`), so a host
    without IPv6 still pings over IPv4; any other failure (no privilege, a bad :class:`Bind`)
    is the caller's error at once, after closing whatever was already opened.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._items: dict[bool, T | FamilyUnavailableError] = {}

    def open(self, opener: Callable[[bool], T], close: Callable[[T], None]) -> None:
        items: dict[bool, T | FamilyUnavailableError] = {}
        try:
            for v6 in (False, True):
                try:
                    items[v6] = opener(v6)
                except FamilyUnavailableError as e:
                    items[v6] = e
        except BaseException:
            for item in items.values():
                if not isinstance(item, FamilyUnavailableError):
                    close(item)
            raise
        if all(isinstance(i, FamilyUnavailableError) for i in items.values()):
            raise items[False]  # type: ignore[misc]
        self._items = items

    def get(self, v6: bool) -> T:
        item = self._items.get(v6)
        if item is None:
            raise RuntimeError(f"use the {self.owner} inside `async with {self.owner}() as ...:`")
        if isinstance(item, FamilyUnavailableError):
            raise FamilyUnavailableError(item.errno, f"IPv{6 if v6 else 4} unavailable: {item}")
        return item

    def items(self) -> list[tuple[bool, T]]:
        """``(v6, opened)`` for each family that opened."""
        missing = FamilyUnavailableError
        return [(v6, i) for v6, i in self._items.items() if not isinstance(i, missing)]

    def clear(self) -> None:
        self._items = {}
