"""One probe socket: opened as one of a few named kinds, sends with per-packet options and
(where enabled) kernel transmit stamps, receives in batches with kernel receive stamps.

See :mod:`netdiag.sock` for the design choices; the meaning of ancillary data is pure code in
:mod:`netdiag.wire.cmsg`.
"""

from __future__ import annotations

import array
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable, Iterable

import trio

from ..errors import FamilyUnavailableError, PrivilegeError
from ..wire import cmsg
from ..wire.packet import Packet
from .bind import Bind
from .tx_stamps import TxStamps

__all__ = [
    "DEFAULT_RCVBUF",
    "FLOW_RCVBUF",
    "IP_PMTUDISC_DO",
    "IP_PMTUDISC_DONT",
    "ProbeSocket",
]

# Linux constants the socket module does not export on every Python version.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 0, 2
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_CHECKSUM = getattr(socket, "IPV6_CHECKSUM", 7)
SOL_RAW = getattr(socket, "SOL_RAW", 255)
ICMP_FILTER = 1  # <linux/icmp.h>, on SOL_RAW
ICMP6_FILTER = 1  # <netinet/icmp6.h>, on IPPROTO_ICMPV6
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
#: ``struct sock_fprog { unsigned short len; struct sock_filter *filter; }``
_SOCK_FPROG = struct.Struct("@HP")

_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: enum arithmetic costs ~1 µs per packet
_AF_INET6 = int(socket.AF_INET6)
_AF_INET = int(socket.AF_INET)
_RECV_BUF = 65536 + 256
_ANC_BUF = 512
#: Attempts per send on a socket with the error queue on: an ICMP error that reached it also
#: sets its pending socket error, which the *next* sendmsg reports (and clears) instead of
#: sending.
_RECVERR_SEND_ATTEMPTS = 3
#: Receive buffer of a datagram-mode trace flow socket: it only queues the errors of that
#: flow's probes in flight, so the raw sockets' megabytes are not needed.
FLOW_RCVBUF = 256 << 10


#: Default receive buffer: room for tens of thousands of small replies arriving in a burst, the
#: failure mode multiping users hit with the kernel's ~200 KB default.
DEFAULT_RCVBUF = 8 << 20


def _icmp_proto(v6: bool) -> int:
    return socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP


class ProbeSocket:
    """One socket of one family, non-blocking, opened as one of the few kinds the diagnostics
    use -- each a named constructor, so no caller combines mode flags by hand:

    ========================== ====================================================
    :meth:`raw_icmp`           raw ICMP/ICMPv6: send echo requests, hear replies and errors
    :meth:`raw_transport`      raw TCP (knock, trace -T): send SYNs, hear SYN-ACK / RST
    :meth:`raw_sender`         a send-only raw socket (IPv6 UDP probes, IPv4 DF siblings)
    :meth:`ipv4_header_sender` IPPROTO_RAW with IP_HDRINCL: we write the IPv4 header
    :meth:`icmp_datagram`      unprivileged ICMP "ping" socket, errors via the error queue
    :meth:`udp_flow`           ordinary UDP bound to a source, errors via the error queue
    ========================== ====================================================

    Opening raises :class:`PrivilegeError` on EPERM/EACCES and
    :class:`FamilyUnavailableError` when the family is not supported on this host.
    """

    #: Datagrams the kernel dropped because the receive buffer was full (SO_RXQ_OVFL), as last
    #: reported; the engine turns increases into a counter and a warning.
    drops: int = 0
    #: whether a classic BPF filter (:mod:`netdiag.wire.bpf`) is attached, and why not
    kernel_filter: bool = False
    kernel_filter_error: str | None = None
    #: whether the kernel stamps what this socket sends (:meth:`enable_tx_stamps`)
    tx_stamps: bool = False
    #: the keys of those stamps and the probes awaiting them
    tx: TxStamps | None = None

    @property
    def tx_stamps_used(self) -> int:
        """Transmit stamps the kernel reported and that replaced a probe's user-space send
        time."""
        return self.tx.used if self.tx is not None else 0

    def __init__(self, v6: bool, kind: int, proto: int, what: str) -> None:
        """Open the bare socket; use the named constructors instead."""
        self.v6 = v6
        self.kind = kind
        self.proto = proto
        #: whether ICMP errors arrive on the error queue (datagram sockets)
        self.recverr = False
        #: raw IPv4 sockets deliver the IP header first
        self.raw4 = not v6 and kind == socket.SOCK_RAW
        self._attempts = 1
        family = socket.AF_INET6 if v6 else socket.AF_INET
        try:
            self._sock = socket.socket(family, kind, proto)
        except PermissionError:
            raise PrivilegeError(what) from None
        except OSError as e:
            if e.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT):
                raise FamilyUnavailableError(
                    e.errno, f"IPv{6 if v6 else 4} is not available on this host: {e.strerror}"
                ) from None
            if e.errno == errno.EACCES:
                raise PrivilegeError(what) from None
            raise
        self._sock.setblocking(False)
        self._closed = False

    # -- the kinds -------------------------------------------------------------------------

    @classmethod
    def raw_icmp(
        cls, v6: bool, bind: Bind | None, *, types: Iterable[int], rcvbuf: int = DEFAULT_RCVBUF
    ) -> ProbeSocket:
        """Raw ICMP (IPv4) or ICMPv6: only ``types`` reach us (the kernel drops the rest)."""
        allowed = frozenset(types)

        def setup(s: ProbeSocket) -> None:
            s._bind(bind)
            s._receiving(rcvbuf)
            s._icmp_filter(allowed)

        return cls._build(setup, v6, socket.SOCK_RAW, _icmp_proto(v6), "raw sockets")

    @classmethod
    def raw_transport(
        cls,
        v6: bool,
        proto: int,
        bind: Bind | None,
        *,
        rcvbuf: int = DEFAULT_RCVBUF,
        checksum_offset: int | None = None,
    ) -> ProbeSocket:
        """Raw TCP or UDP that also receives; ``checksum_offset`` (IPv6) makes the kernel fill
        the transport checksum at that offset (IPV6_CHECKSUM)."""

        def setup(s: ProbeSocket) -> None:
            s._bind(bind)
            s._receiving(rcvbuf)
            s._checksum(checksum_offset)

        return cls._build(setup, v6, socket.SOCK_RAW, proto, "raw sockets")

    @classmethod
    def raw_sender(
        cls,
        v6: bool,
        proto: int,
        bind: Bind | None,
        *,
        checksum_offset: int | None = None,
        pmtudisc: int | None = None,
    ) -> ProbeSocket:
        """A send-only raw socket: it receives nothing (a tiny buffer that never fills, and no
        ICMP type passes its filter), so another socket of the object hears the replies."""

        def setup(s: ProbeSocket) -> None:
            s._bind(bind)
            s._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256)
            if proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
                s._icmp_filter(frozenset())
            s._checksum(checksum_offset)
            s._pmtudisc(pmtudisc)

        return cls._build(setup, v6, socket.SOCK_RAW, proto, "raw sockets")

    @classmethod
    def ipv4_header_sender(cls, bind: Bind | None) -> ProbeSocket:
        """IPPROTO_RAW with IP_HDRINCL: every probe carries the IPv4 header we built, so its
        TTL and identification are per packet and nothing socket-wide can race."""

        def setup(s: ProbeSocket) -> None:
            s._bind(bind)
            s._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256)
            s._sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)

        return cls._build(setup, False, socket.SOCK_RAW, socket.IPPROTO_RAW, "raw sockets")

    @classmethod
    def icmp_datagram(
        cls,
        v6: bool,
        bind: Bind | None,
        *,
        rcvbuf: int = DEFAULT_RCVBUF,
        pmtudisc: int | None = None,
    ) -> ProbeSocket:
        """An unprivileged ICMP "ping" socket (needs the group in ping_group_range). It is
        bound at once so the kernel picks its echo identifier (:meth:`local_port`); ICMP errors
        arrive through its error queue."""

        def setup(s: ProbeSocket) -> None:
            s._bind(bind)
            s._receiving(rcvbuf)
            s._recverr()
            s._pmtudisc(pmtudisc)
            if bind is None or bind.for_family(v6) is None:
                s._sock.bind(("::" if v6 else "0.0.0.0", 0))

        return cls._build(setup, v6, socket.SOCK_DGRAM, _icmp_proto(v6), "ICMP datagram sockets")

    @classmethod
    def udp_flow(
        cls, v6: bool, src: bytes | None, device: str | None, *, rcvbuf: int = FLOW_RCVBUF
    ) -> ProbeSocket:
        """An ordinary UDP socket with the error queue on, bound to ``src`` (packed; ``None``:
        any) and a port the kernel picks (:meth:`local_port`) -- one trace flow without raw
        sockets. A link-local ``src`` without its scope cannot be bound: the kernel then picks
        the source per packet, as for any UDP socket."""

        def setup(s: ProbeSocket) -> None:
            s._bind(Bind(device=device) if device else None)
            s._receiving(rcvbuf)
            s._recverr()
            any_addr = "::" if v6 else "0.0.0.0"
            host = socket.inet_ntop(_AF_INET6 if v6 else _AF_INET, src) if src else any_addr
            try:
                s._sock.bind((host, 0))
            except OSError as e:
                if e.errno != errno.EINVAL or host == any_addr:
                    raise
                s._sock.bind((any_addr, 0))

        return cls._build(setup, v6, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "UDP sockets")

    @classmethod
    def _build(
        cls, setup: Callable[[ProbeSocket], object], v6: bool, kind: int, proto: int, what: str
    ) -> ProbeSocket:
        s = cls(v6, kind, proto, what)
        try:
            setup(s)
        except BaseException:
            s._sock.close()
            raise
        return s

    # -- option groups ---------------------------------------------------------------------

    def _bind(self, bind: Bind | None) -> None:
        s = self._sock
        if bind is None:
            return
        if bind.device:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, bind.device.encode())
            except OSError as e:
                msg = f"cannot bind to interface {bind.device!r}: {e.strerror}"
                raise OSError(e.errno, msg) from None
        addr = bind.for_family(self.v6)
        if addr is not None:
            try:
                s.bind((str(addr), 0))
            except OSError as e:
                raise OSError(e.errno, f"cannot bind to {addr}: {e.strerror}") from None

    def _receiving(self, rcvbuf: int) -> None:
        """A big buffer, kernel timestamps, drop counts, reply TTL and local address."""
        s = self._sock
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(socket.SOL_SOCKET, cmsg.SO_TIMESTAMPNS, 1)
        # Have the kernel tell us how many datagrams a full buffer cost (a cmsg on each
        # packet once any was lost), so overload shows up as counted loss, not mystery.
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, cmsg.SO_RXQ_OVFL, 1)
        if self.v6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            if self.kind != socket.SOCK_RAW:
                s.setsockopt(socket.IPPROTO_IP, cmsg.IP_PKTINFO, 1)

    def _recverr(self) -> None:
        if self.v6:
            self._sock.setsockopt(socket.IPPROTO_IPV6, cmsg.IPV6_RECVERR, 1)
        else:
            self._sock.setsockopt(socket.IPPROTO_IP, cmsg.IP_RECVERR, 1)
        self.recverr = True
        self._attempts = _RECVERR_SEND_ATTEMPTS

    def _icmp_filter(self, allowed: frozenset[int]) -> None:
        """Let only ``allowed`` ICMP types reach this socket, so the kernel drops the rest
        before they wake us (ICMP_FILTER / ICMP6_FILTER: a set bit blocks that type)."""
        if self.v6:
            words = [0xFFFFFFFF] * 8
            for t in allowed:
                words[t >> 5] &= ~(1 << (t & 31))
            self._sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("@8I", *words))
        else:
            mask = 0xFFFFFFFF
            for t in allowed:
                if t < 32:
                    mask &= ~(1 << t)
            self._sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("@I", mask))

    def attach_filter(self, program: bytes) -> bool:
        """Attach (or atomically replace) a classic BPF program built by
        :mod:`netdiag.wire.bpf`: from now on the kernel drops what it rejects before any copy
        to us. Returns False, keeping the reason in :attr:`kernel_filter_error`, if the kernel
        refused it; the socket then works as before (the classifiers still decide)."""
        buf = array.array("B", program)  # a stable address the kernel copies from
        fprog = _SOCK_FPROG.pack(len(program) // 8, buf.buffer_info()[0])
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError as e:
            self.kernel_filter_error = e.strerror or str(e)
            return False
        finally:
            del buf
        self.kernel_filter = True
        self.kernel_filter_error = None
        return True

    def enable_tx_stamps(self) -> bool:
        """Have the kernel stamp each packet as it leaves (software TX timestamps, the
        CLOCK_REALTIME clock of the receive stamps) and report it on the error queue, keyed
        per send. A probe sent with ``stamp=`` then gets that time as ``sent_ns``: no
        send-path cost (Python, the syscall, qdisc) enters its RTT. Returns False if the
        kernel refuses; sends then keep the clock read before ``sendmsg``."""
        flags = cmsg.SOF_TX_STAMPS
        for f in (flags, flags & ~cmsg.SOF_TIMESTAMPING_OPT_RX_FILTER):  # RX_FILTER: 6.12+
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, cmsg.SO_TIMESTAMPING, f)
            except OSError:
                continue
            self.tx_stamps = True
            self.tx = TxStamps()
            return True
        return False

    def _checksum(self, offset: int | None) -> None:
        if offset is not None:
            self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, offset)

    def _pmtudisc(self, mode: int | None) -> None:
        if mode is not None and not self.v6:
            self._sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, mode)

    # -- sending ---------------------------------------------------------------------------

    def ancillary(
        self,
        ttl: int | None = None,
        tos: int | None = None,
        src: bytes | None = None,
        dontfrag: bool | None = None,
    ) -> list[cmsg.Cmsg]:
        """This family's ``sendmsg`` ancillary data; see :func:`netdiag.wire.cmsg.encode`."""
        return cmsg.encode(self.v6, ttl, tos, src, dontfrag)

    def send_nowait(
        self,
        data: bytes,
        dst: str,
        anc: list[cmsg.Cmsg],
        port: int = 0,
        stamp: object | None = None,
    ) -> int:
        """Send one datagram now; return the CLOCK_REALTIME nanoseconds read just before.

        With transmit stamps on (:meth:`enable_tx_stamps`), ``stamp`` -- an object with
        ``sent_ns`` and ``tx_kernel`` attributes, a probe -- gets the kernel's stamp of this
        packet once the receive loop reads it, and ``tx_kernel = True``.

        Raises ``BlockingIOError`` when the send buffer is full (callers that may wait use
        :meth:`send`). The time is read *before* the syscall because on loopback the reply can
        be received, and kernel-stamped, before ``sendmsg`` even returns. On a socket with the
        error queue on, a send refused because of a pending error left by an earlier ICMP
        error is retried (the error itself reaches us through the queue).
        """
        addr = (dst, port, 0, 0) if self.v6 else (dst, port)
        sendmsg = self._sock.sendmsg
        if self.tx_stamps:
            return self._send_stamped(data, addr, anc, stamp)
        for attempt in range(self._attempts):
            t = time.time_ns()
            try:
                sendmsg((data,), anc, 0, addr)
            except BlockingIOError:
                raise
            except OSError:
                if attempt == self._attempts - 1:
                    raise
                continue
            return t
        raise AssertionError("unreachable")

    def _send_stamped(
        self, data: bytes, addr: tuple, anc: list[cmsg.Cmsg], stamp: object | None
    ) -> int:
        """:meth:`send_nowait` on a socket with transmit stamps: every send carries its key
        (SCM_TS_OPT_ID), or, on a kernel that refuses that (EINVAL, before 6.13), counts with
        the socket's own key counter."""
        sendmsg = self._sock.sendmsg
        tx = self.tx
        assert tx is not None
        for attempt in range(self._attempts):
            t = time.time_ns()
            try:
                sendmsg((data,), tx.ancillary(anc), 0, addr)
            except BlockingIOError:
                raise
            except OSError as e:
                if tx.refused(e.errno or 0):  # no per-send keys here: the counter from now on
                    return self._send_stamped(data, addr, anc, stamp)
                if attempt == self._attempts - 1:
                    raise
                continue
            tx.sent(stamp)
            return t
        raise AssertionError("unreachable")

    async def send(
        self,
        data: bytes,
        dst: str,
        anc: list[cmsg.Cmsg],
        port: int = 0,
        stamp: object | None = None,
    ) -> int:
        """Send one datagram, waiting for buffer space if needed; see :meth:`send_nowait`."""
        while True:
            try:
                return self.send_nowait(data, dst, anc, port, stamp)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    # -- receiving -------------------------------------------------------------------------

    def receive_queue(self) -> tuple[int, int]:
        """``(bytes waiting to be read, receive buffer size)`` (``SO_MEMINFO``): how far the
        receive side is behind, for a sender that slows down before the kernel drops."""
        raw = self._sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 8)
        queued, size = struct.unpack_from("=II", raw)
        return queued, size

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._sock)

    def recv_batch(self, limit: int = 512) -> tuple[list[Packet], OSError | None]:
        """Drain up to ``limit`` datagrams without blocking.

        Returns the packets and the first socket error hit (for example ENOBUFS), which stops
        the batch; the caller logs it and keeps receiving. Never raises.
        """
        out: list[Packet] = []
        buf = bytearray(_RECV_BUF)
        recv = self._sock.recvmsg_into
        v6 = self.v6
        err: OSError | None = None
        if self.recverr:
            # Errors first: reading one clears the socket's pending error, which the data
            # read below would otherwise report as a failure of its own.
            err = self._drain_errqueue(out, limit, buf)
        raw4 = self.raw4
        n_err = len(out)
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
        if len(out) > n_err and out[-1].drops != self.drops:  # cumulative: the newest knows
            self.drops = out[-1].drops
        if self.tx_stamps:
            # The error queue (again) after the data: a transmit stamp is queued before its
            # packet even leaves, so every reply just read finds its probe's stamp applied
            # before the caller classifies it. Drained every batch: while it holds anything,
            # epoll keeps reporting EPOLLERR and a loop that left it would spin.
            err = self._drain_errqueue(out, limit, buf) or err
        return out, err

    def _drain_errqueue(self, out: list[Packet], limit: int, buf: bytearray) -> OSError | None:
        recv = self._sock.recvmsg_into
        v6, tx = self.v6, self.tx if self.tx_stamps else None
        for _ in range(limit):
            try:
                n, anc, flags, addr = recv([buf], _ANC_BUF, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                return e
            if tx is not None:
                stamped = cmsg.decode_tx_stamp(anc)
                if stamped is not None:
                    tx.stamped(*stamped)
                    continue
            if not self.recverr:
                continue
            try:
                out.append(_make_packet(bytes(buf[:n]), anc, flags, addr, v6, False))
            except (ValueError, struct.error, OSError):
                continue
        return None

    def local_port(self) -> int:
        """The bound port: a UDP flow's source port, an ICMP datagram socket's identifier."""
        return int(self._sock.getsockname()[1])

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()


#: getsockopt(SOL_SOCKET, SO_MEMINFO): u32 words, the first two rmem_alloc and rcvbuf.
_SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)


def _make_packet(
    data: bytes, anc: list[cmsg.Cmsg], flags: int, addr: tuple, v6: bool, raw4: bool
) -> Packet:
    stamp, ttl, dst, err, drops = cmsg.decode(anc)
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
    return Packet(data, src, dst, ttl, stamp, kernel, addr[1], bool(flags & _MSG_TRUNC), err, drops)
