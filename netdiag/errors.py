"""Exceptions netdiag raises on purpose, each precise enough to act on."""

from __future__ import annotations

from .privilege import raw_socket_advice

__all__ = [
    "FamilyUnavailableError",
    "KeyInUseError",
    "NetdiagError",
    "PrivilegeError",
    "ResolveError",
]


class NetdiagError(Exception):
    """Base class for netdiag's own errors."""


class PrivilegeError(NetdiagError, PermissionError):
    """Raw sockets were refused: the process lacks CAP_NET_RAW.

    It is a :class:`PermissionError` so generic handlers keep working, and its message names the
    capability and every fix (:func:`netdiag.privilege.raw_socket_advice`), because "Operation
    not permitted" alone sends users searching.
    """

    def __init__(self, what: str = "raw sockets", *, message: str | None = None) -> None:
        super().__init__(message or raw_socket_advice(what))


class FamilyUnavailableError(NetdiagError, OSError):
    """An address family (IPv4 or IPv6) cannot be used on this host.

    Raised when a probe needs the family, not when the object is created, so a host without IPv6
    can still ping over IPv4 with the same object.
    """


class KeyInUseError(NetdiagError, KeyError):
    """A demux key is already registered: two probes would be indistinguishable on the wire."""


class ResolveError(NetdiagError, ValueError):
    """A host name did not resolve to an address of a usable family."""
