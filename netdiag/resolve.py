"""Turning what a user typed into an address, through trio's non-blocking getaddrinfo."""

from __future__ import annotations

import ipaddress
import socket

import trio

from .errors import ResolveError
from .sock import IPAddress

__all__ = ["literal", "resolve", "reverse"]


async def resolve(host: str | IPAddress, version: int | None = None) -> IPAddress:
    """Resolve ``host`` to one address, optionally of one IP ``version`` (4 or 6).

    Literal addresses are returned without a lookup. Names go through ``getaddrinfo`` in a
    worker thread (trio's), so thousands of concurrent pings never block the event loop.
    Raises :class:`ResolveError` (a ``ValueError``) with the host name in the message.
    """
    if version not in (None, 4, 6):
        raise ValueError(f"IP version must be 4 or 6, not {version!r}")
    if isinstance(host, ipaddress.IPv4Address | ipaddress.IPv6Address):
        addr: IPAddress = host
    else:
        if not isinstance(host, str) or not host:
            raise ResolveError(f"not a host name or address: {host!r}")
        try:
            addr = literal(host)
        except ValueError:
            family = {None: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}[version]
            try:
                infos = await trio.socket.getaddrinfo(host, None, family, socket.SOCK_RAW)
            except (socket.gaierror, UnicodeError) as e:
                msg = e.strerror if isinstance(e, socket.gaierror) else str(e)
                if version is not None:
                    await _only_other_family(host, version)
                raise ResolveError(f"{host}: {msg}") from None
            if not infos:
                raise ResolveError(f"{host}: no address") from None
            addr = ipaddress.ip_address(str(infos[0][4][0]).split("%", 1)[0])
    if version is not None and addr.version != version:
        raise ResolveError(f"{host}: not an IPv{version} address")
    return addr


async def _only_other_family(host: str, version: int) -> None:
    """``-6 localhost`` failed: if the name has addresses of the other family, say exactly
    that (raise), rather than the resolver's "Name or service not known"."""
    try:
        infos = await trio.socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_RAW)
    except (socket.gaierror, UnicodeError):
        return
    others = list(dict.fromkeys(str(i[4][0]).split("%", 1)[0] for i in infos))
    if others:
        raise ResolveError(f"{host} has no IPv{version} address (only {', '.join(others)})")


def literal(host: str) -> IPAddress:
    """An address literal, parsed by the C library first: ``ipaddress`` alone costs several
    microseconds per address, which a 100,000-target sweep notices."""
    text = host.strip("[]")
    if "%" in text:
        text = text.split("%", 1)[0]
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except OSError:
        pass
    try:
        return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
    except OSError:
        raise ValueError(host) from None


async def reverse(addr: IPAddress) -> str | None:
    """Reverse DNS for display (``None`` when there is no name); never raises."""
    try:
        name, _ = await trio.socket.getnameinfo((str(addr), 0), socket.NI_NAMEREQD)
    except (OSError, UnicodeError):
        return None
    return name
