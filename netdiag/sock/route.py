"""Source discovery (which local address routes to a target) and TCP source-port reservation."""

from __future__ import annotations

import socket

from .bind import Bind, IPAddress
from .probe_socket import SO_BINDTODEVICE

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
