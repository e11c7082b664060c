"""Addresses users type, and where an object's sockets bind (:class:`Bind`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["Bind", "IPAddress", "parse_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
        """The source address bound for IPv6 (``v6``) or IPv4, or None."""
        return self.v6 if v6 else self.v4
