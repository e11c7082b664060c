"""What a receive loop hands a classifier: one datagram and what the kernel said about it.

Pure values, so the classifiers that take them stay sans-IO and are tested by building a
:class:`Packet` by hand. The socket layer (:mod:`netdiag.sock`) fills them from ``recvmsg``
through :func:`netdiag.wire.cmsg.decode`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "SO_EE_ORIGIN_ICMP",
    "SO_EE_ORIGIN_ICMP6",
    "SO_EE_ORIGIN_LOCAL",
    "SO_EE_ORIGIN_NONE",
    "SO_EE_ORIGIN_TIMESTAMPING",
    "ExtErr",
    "Packet",
]

#: ``sock_extended_err.ee_origin`` (linux/errqueue.h): who reported a queued error.
SO_EE_ORIGIN_NONE = 0
SO_EE_ORIGIN_LOCAL = 1  # this host (EMSGSIZE ...)
SO_EE_ORIGIN_ICMP = 2  # an ICMP error from the network
SO_EE_ORIGIN_ICMP6 = 3  # an ICMPv6 error from the network
SO_EE_ORIGIN_TIMESTAMPING = 4  # a transmit timestamp, not an error (netdiag.wire.cmsg)


@dataclass(frozen=True, slots=True)
class ExtErr:
    """An ICMP error the kernel queued on a datagram socket (IP_RECVERR / IPV6_RECVERR).

    Datagram sockets (ICMP "ping" sockets, UDP) never see ICMP errors as packets; with RECVERR
    the kernel parses the error and queues ``struct sock_extended_err`` plus the quoted
    payload of our packet on the socket's error queue. ``origin`` is one of the
    ``SO_EE_ORIGIN_*`` constants. ``offender`` is the packed address of the router or host
    that sent the error. The :class:`Packet` carrying it has ``data`` = our packet's quoted
    payload and ``src``/``port`` = the original destination.
    """

    errno: int
    origin: int
    type: int
    code: int
    info: int
    offender: bytes | None

    @property
    def from_network(self) -> bool:
        """Did a router or host send this (not a local error such as EMSGSIZE)?"""
        return self.origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6)


@dataclass(slots=True)
class Packet:
    """One received datagram with what the kernel told us about it.

    ``src`` and ``dst`` are packed addresses (4 or 16 bytes); ``dst`` is known for IPv6 through
    IPV6_PKTINFO and for IPv4 from the IP header (raw sockets) or IP_PKTINFO. ``ttl`` is the
    received TTL or hop limit when the kernel reported it. ``stamp_ns`` is the kernel receive time
    (CLOCK_REALTIME nanoseconds), or our own reading of that clock if the kernel gave none
    (``kernel_stamp`` False). ``port`` is the source port the socket reported (0 for raw
    sockets). ``drops`` is the kernel's running count of datagrams this socket lost to a full
    receive buffer, as of this one (SO_RXQ_OVFL; 0 until the first loss).
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
