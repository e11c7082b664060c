"""Ancillary data (cmsg) for ``sendmsg`` and from ``recvmsg``: pure encoding and decoding.

The socket layer passes the raw ``(level, type, data)`` triples through; what they mean lives
here, with no file descriptor in sight, so every branch is tested with bytes built by hand
(tests/test_cmsg.py). Constants are Linux's (``<linux/in.h>``, ``<linux/in6.h>``,
``<asm-generic/socket.h>``); the :mod:`socket` module lacks several on some Pythons.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

from .packet import ExtErr

__all__ = [
    "IPV6_DONTFRAG",
    "IPV6_HOPLIMIT",
    "IPV6_PKTINFO",
    "IPV6_RECVERR",
    "IPV6_TCLASS",
    "IP_PKTINFO",
    "IP_RECVERR",
    "IP_TOS",
    "IP_TTL",
    "SCM_TIMESTAMPING",
    "SCM_TS_OPT_ID",
    "SOF_TX_STAMPS",
    "SO_RXQ_OVFL",
    "SO_TIMESTAMPING",
    "SO_TIMESTAMPNS",
    "Ancillary",
    "Cmsg",
    "decode",
    "decode_tx_stamp",
    "encode",
    "ts_opt_id",
]

#: One control message: ``(level, type, data)``, as ``socket.sendmsg``/``recvmsg`` use them.
Cmsg = tuple[int, int, bytes]

SOL_SOCKET = int(socket.SOL_SOCKET)
IPPROTO_IP = int(socket.IPPROTO_IP)
IPPROTO_IPV6 = int(socket.IPPROTO_IPV6)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
IP_TTL = int(socket.IP_TTL)
IP_TOS = int(socket.IP_TOS)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)

# Kernel transmit timestamps (Documentation/networking/timestamping.rst): SO_TIMESTAMPING (the
# "old" option, whose SCM_TIMESTAMPING carries 64-bit timespecs on 64-bit hosts) and its flags.
SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
SCM_TIMESTAMPING = SO_TIMESTAMPING
#: a per-sendmsg key for the transmit timestamp (Linux 6.13+), instead of the socket counter
SCM_TS_OPT_ID = 81
SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_ID = 1 << 7
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11
SOF_TIMESTAMPING_OPT_RX_FILTER = 1 << 17
#: software transmit stamps (CLOCK_REALTIME, as the receive stamps), keyed, without a copy of
#: the packet; RX_FILTER keeps them off received packets, which carry SO_TIMESTAMPNS already
SOF_TX_STAMPS = (
    SOF_TIMESTAMPING_TX_SOFTWARE
    | SOF_TIMESTAMPING_SOFTWARE
    | SOF_TIMESTAMPING_OPT_ID
    | SOF_TIMESTAMPING_OPT_TSONLY
    | SOF_TIMESTAMPING_OPT_RX_FILTER
)
#: ``sock_extended_err.ee_origin`` of a timestamp on the error queue (linux/errqueue.h)
SO_EE_ORIGIN_TIMESTAMPING = 4

_AF_INET = int(socket.AF_INET)
_AF_INET6 = int(socket.AF_INET6)
_TIMESPEC = struct.Struct("@qq")
_EE = struct.Struct("@IBBBBII")  # struct sock_extended_err
_INT = struct.Struct("@i")
_U32 = struct.Struct("@I")
_U16 = struct.Struct("@H")
_RECVERR = {(IPPROTO_IP, IP_RECVERR), (IPPROTO_IPV6, IPV6_RECVERR)}


def encode(
    v6: bool,
    ttl: int | None = None,
    tos: int | None = None,
    src: bytes | None = None,
    dontfrag: bool | None = None,
) -> list[Cmsg]:
    """The ``sendmsg`` ancillary data for per-packet TTL/hop limit, TOS/traffic class, IPv6
    source address and IPv6 don't-fragment. Per packet, never socket-wide, so concurrent probes
    on one socket cannot race; built once per probe shape and reused."""
    anc: list[Cmsg] = []
    if v6:
        if ttl is not None:
            anc.append((IPPROTO_IPV6, IPV6_HOPLIMIT, _INT.pack(ttl)))
        if tos is not None:
            anc.append((IPPROTO_IPV6, IPV6_TCLASS, _INT.pack(tos)))
        if src is not None:
            # struct in6_pktinfo: address, then interface index 0 (any)
            anc.append((IPPROTO_IPV6, IPV6_PKTINFO, src + b"\x00\x00\x00\x00"))
        if dontfrag is not None:
            anc.append((IPPROTO_IPV6, IPV6_DONTFRAG, _INT.pack(int(dontfrag))))
    else:
        if ttl is not None:
            anc.append((IPPROTO_IP, IP_TTL, _INT.pack(ttl)))
        if tos is not None:
            anc.append((IPPROTO_IP, IP_TOS, bytes([tos])))
    return anc


def ts_opt_id(key: int) -> Cmsg:
    """The ``sendmsg`` ancillary data giving this packet's transmit timestamp ``key`` (it
    comes back as ``ee_data``), so stamps match sends exactly whatever the socket counter
    did (a send refused after the kernel took a key, say)."""
    return (SOL_SOCKET, SCM_TS_OPT_ID, _U32.pack(key & 0xFFFFFFFF))


def decode_tx_stamp(anc: Iterable[Cmsg]) -> tuple[int, int] | None:
    """``(key, stamp_ns)`` if this error-queue message is a transmit timestamp: an
    SCM_TIMESTAMPING (software stamp in ``ts[0]``) with a ``sock_extended_err`` whose origin is
    SO_EE_ORIGIN_TIMESTAMPING and whose ``ee_data`` is the key (OPT_ID). ``None`` for anything
    else (an ICMP error on a datagram socket, say), and for a zero stamp."""
    stamp = 0
    key: int | None = None
    for level, typ, cdata in anc:
        if level == SOL_SOCKET and typ == SCM_TIMESTAMPING and len(cdata) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(cdata)
            stamp = sec * 1_000_000_000 + nsec
        elif (level, typ) in _RECVERR and len(cdata) >= 16:
            _errno, origin, _t, _c, _pad, _info, data = _EE.unpack_from(cdata)
            if origin == SO_EE_ORIGIN_TIMESTAMPING:
                key = data
    if key is None or not stamp:
        return None
    return key, stamp


#: What :func:`decode` returns: ``(stamp_ns, ttl, dst, err, drops)``. A plain tuple, because
#: it is built once per received packet on the hot path. ``stamp_ns`` is 0 when the kernel gave
#: no timestamp; ``drops`` 0 until the socket lost a datagram to a full buffer.
Ancillary = tuple[int, "int | None", "bytes | None", "ExtErr | None", int]


def _offender(rest: bytes) -> bytes | None:
    """The packed address in the ``sockaddr`` that follows ``sock_extended_err``."""
    if len(rest) < 8:
        return None
    family = _U16.unpack_from(rest)[0]
    if family == _AF_INET:
        return bytes(rest[4:8])
    if family == _AF_INET6 and len(rest) >= 24:
        return bytes(rest[8:24])
    return None


def decode(anc: Iterable[Cmsg]) -> Ancillary:
    """Decode ``recvmsg``'s ancillary data: kernel timestamp (SO_TIMESTAMPNS), drop counter
    (SO_RXQ_OVFL), queued error (IP_RECVERR / IPV6_RECVERR with its offender), received TTL
    or hop limit, and the local address (IP_PKTINFO / IPV6_PKTINFO). Messages too short to
    hold their value are skipped, never an error."""
    stamp = drops = 0
    ttl: int | None = None
    dst: bytes | None = None
    err: ExtErr | None = None
    for level, typ, cdata in anc:
        if level == SOL_SOCKET:
            if typ == SO_TIMESTAMPNS and len(cdata) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(cdata)
                stamp = sec * 1_000_000_000 + nsec
            elif typ == SO_RXQ_OVFL and len(cdata) >= 4:
                drops = _U32.unpack_from(cdata)[0]
        elif (level, typ) in _RECVERR:
            if len(cdata) >= 16:
                e_errno, origin, etype, ecode, _pad, info, _data = _EE.unpack_from(cdata)
                err = ExtErr(e_errno, origin, etype, ecode, info, _offender(cdata[16:]))
        elif level == IPPROTO_IP:
            if typ == IP_TTL and cdata:
                ttl = _INT.unpack_from(cdata)[0] if len(cdata) >= 4 else cdata[0]
            elif typ == IP_PKTINFO and len(cdata) >= 12:
                dst = bytes(cdata[8:12])  # struct in_pktinfo: ifindex, spec_dst, addr
        elif level == IPPROTO_IPV6:
            if typ == IPV6_HOPLIMIT and len(cdata) >= 4:
                ttl = _INT.unpack_from(cdata)[0]
            elif typ == IPV6_PKTINFO and len(cdata) >= 16:
                dst = bytes(cdata[:16])
    return stamp, ttl, dst, err, drops
