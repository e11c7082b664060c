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
  inflate RTTs. Send times are the kernel's transmit stamps where the socket has them on
  (``SO_TIMESTAMPING``, same clock), else that clock read immediately before ``sendmsg``.

Modules, one concept each:

=================== ==========================================================================
``bind``            addresses and :class:`Bind` (source address / interface per family)
``probe_socket``    :class:`ProbeSocket`: the named socket kinds, sending, batched receiving
``tx_stamps``       :class:`~netdiag.sock.tx_stamps.TxStamps`: which send a kernel transmit
                    stamp belongs to (per-send keys or the kernel's counter; no IO)
``route``           :class:`RouteFinder` (source discovery, first hops of the kernel's
                    route over rtnetlink), TCP source-port reservation
``family``          :class:`PerFamily`: one object's sockets per IP family, or why not
=================== ==========================================================================
"""

from ..wire.packet import ExtErr, Packet
from .bind import Bind, IPAddress, parse_address
from .family import PerFamily
from .probe_socket import (
    DEFAULT_RCVBUF,
    FLOW_RCVBUF,
    IP_PMTUDISC_DO,
    IP_PMTUDISC_DONT,
    ProbeSocket,
)
from .route import RouteFinder, ephemeral_ports, reserve_tcp_port

__all__ = [
    "DEFAULT_RCVBUF",
    "FLOW_RCVBUF",
    "IP_PMTUDISC_DO",
    "IP_PMTUDISC_DONT",
    "Bind",
    "ExtErr",
    "IPAddress",
    "Packet",
    "PerFamily",
    "ProbeSocket",
    "RouteFinder",
    "ephemeral_ports",
    "parse_address",
    "reserve_tcp_port",
]
