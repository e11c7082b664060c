"""Source discovery (which local address routes to a target), the kernel's route for a target
(how many first hops), and TCP source-port reservation."""

from __future__ import annotations

import contextlib
import itertools
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from ..wire.rtnetlink import (
    NETLINK_ROUTE,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_ERROR,
    NexthopObject,
    count_first_hops,
    nexthop_request,
    parse_messages,
    parse_nexthop,
    parse_route,
    route_request,
)
from .bind import Bind, IPAddress, parse_address
from .probe_socket import SO_BINDTODEVICE

_T = TypeVar("_T")

#: How long a route lookup waits for the kernel (it answers at once; this only bounds a fault).
NETLINK_TIMEOUT = 0.5
#: Bytes per netlink read: a route reply is a few hundred bytes, but multipath routes grow.
_NETLINK_BUFSIZE = 65536

__all__ = ["RouteFinder", "ephemeral_ports", "reserve_tcp_port"]


def ephemeral_ports() -> tuple[int, int] | None:
    """The kernel's ephemeral port range in this network namespace (what ``bind(0)`` picks
    from, so every port :func:`reserve_tcp_port` reserves), or ``None`` if unreadable."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return (lo, hi) if 0 < lo <= hi <= 0xFFFF else None


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
    """Route questions for one family, answered by the kernel without sending anything.

    :meth:`source`: "which local address would reach ``dst``?" Connecting a UDP socket sends
    nothing but makes the kernel do its route lookup (honouring the bind address and
    interface); ``getsockname`` then tells the chosen source. Probes whose checksum or key
    covers the source (TCP, UDP, traceroute) need it before the first packet leaves.

    :meth:`first_hops`: "how many routers answer at TTL 1 towards ``dst``?", from the route
    the kernel uses (an rtnetlink ``RTM_GETROUTE``, :mod:`netdiag.wire.rtnetlink`), so a
    multipath traceroute need not spend several flows discovering a single first hop.

    Both sockets are opened here, with the object's raw sockets, so they live in the same
    network namespace even if the caller's thread moves later (a netlink socket answers for
    the namespace it was created in); the interface index of a bound device is resolved here
    for the same reason.
    """

    def __init__(self, v6: bool, bind: Bind | None = None) -> None:
        self.v6 = v6
        self.bind = bind
        self.sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        self._netlink: socket.socket | None = None
        self._oif = 0
        try:
            if bind is not None and bind.device:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, bind.device.encode())
            addr = bind.for_family(v6) if bind is not None else None
            if addr is not None:
                self.sock.bind((str(addr), 0))
            self._open_netlink()
        except BaseException:
            self.close()
            raise

    def _open_netlink(self) -> None:
        """Open the rtnetlink socket, or leave it None: the lookups it serves are an
        optimisation, so failing to open it (a seccomp sandbox, ...) must not fail the
        object. It needs no privileges."""
        try:
            if self.bind is not None and self.bind.device:
                self._oif = socket.if_nametoindex(self.bind.device)
            nl = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
            )
        except OSError:
            return
        try:
            nl.bind((0, 0))  # the kernel assigns our port id, which its replies carry
            nl.settimeout(NETLINK_TIMEOUT)
        except OSError:
            nl.close()
            return
        self._netlink = nl
        self._portid: int = nl.getsockname()[0]
        self._seq = itertools.count(1)

    def source(self, dst: IPAddress) -> bytes:
        """The packed local address for ``dst``; ``OSError`` (ENETUNREACH ...) if no route."""
        self.sock.connect((str(dst), 9))
        name = self.sock.getsockname()[0].split("%", 1)[0]
        return socket.inet_pton(socket.AF_INET6 if self.v6 else socket.AF_INET, name)

    def first_hops(self, dst: IPAddress | str) -> int | None:
        """How many distinct first hops (routers, or ``dst`` itself) the kernel's route to
        ``dst`` has, as this object's sockets would use it; None when unknown.

        1 for a single-gateway, on-link or local route; the number of paths of a multipath
        route (for a nexthop-object route, of its group); None for blackhole, unreachable,
        prohibit and other non-unicast routes, when there is no route, and on any error --
        the caller then probes instead of assuming, so this lookup can never break a trace.
        The lookup is the kernel's ``ip route get fibmatch`` (a netlink call, no packet is
        sent) with the bound interface (``RTA_OIF``) and source address (``RTA_SRC``, for
        policy routing), so it answers for the route this object's probes take.
        """
        addr = parse_address(dst)
        if self._netlink is None:
            return None
        src = self.bind.for_family(addr.version == 6) if self.bind is not None else None
        try:
            route = self._ask(
                lambda seq: route_request(addr, seq=seq, oif=self._oif, src=src), parse_route
            )
            if route.nh_id is None:
                return count_first_hops(route, oif=self._oif)
            nexthop = self._nexthop(route.nh_id)
            members: tuple[NexthopObject, ...] = ()
            if self._oif and nexthop.group:
                members = tuple(self._nexthop(m.id) for m in nexthop.group)
            return count_first_hops(route, oif=self._oif, nexthop=nexthop, members=members)
        except (OSError, ValueError):
            return None

    def _nexthop(self, nh_id: int) -> NexthopObject:
        return self._ask(lambda seq: nexthop_request(nh_id, seq=seq), parse_nexthop)

    def _ask(self, build: Callable[[int], bytes], parse: Callable[[bytes], _T]) -> _T:
        """Send one request and parse the reply to it.

        Replies are matched on sequence number and port id, so a late answer to an earlier
        request that timed out is skipped, not mistaken for this one. A multi-part reply
        (``NLM_F_MULTI``, up to ``NLMSG_DONE``) is answered by its first part: a route or
        nexthop ``GET`` is one object. ``TimeoutError`` (an ``OSError``) if no reply comes
        within :data:`NETLINK_TIMEOUT`.
        """
        nl = self._netlink
        if nl is None:
            raise OSError("no netlink socket")
        seq = next(self._seq) & 0xFFFFFFFF
        nl.send(build(seq))
        deadline = time.monotonic() + NETLINK_TIMEOUT
        answer: bytes | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no netlink reply")
            nl.settimeout(remaining)
            data = nl.recv(_NETLINK_BUFSIZE)
            done = False
            for msg in parse_messages(data):
                if msg.seq != seq or msg.pid != self._portid:
                    continue  # a stale reply, or a notification
                if msg.type == NLMSG_DONE:
                    done = True
                    break
                if answer is None:
                    answer = msg.raw
                if msg.type == NLMSG_ERROR or not msg.flags & NLM_F_MULTI:
                    done = True
                    break
            if done:
                if answer is None:
                    raise ValueError("empty multi-part netlink reply")
                return parse(answer)

    def close(self) -> None:
        """Close both sockets (idempotent)."""
        self.sock.close()
        if self._netlink is not None:
            with contextlib.suppress(OSError):
                self._netlink.close()
