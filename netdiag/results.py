"""What results share: :class:`ErrorReply`, and turning results into JSON-ready values.

The CLIs' ``--json`` and every ``as_dict()`` go through :func:`jsonable`, so an address is always
a string, an enum always its name as users know it, and a nested error always an object.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from dataclasses import dataclass
from typing import Any

from .wire.icmp import ErrorKind, IcmpError, Unreach, error_text

__all__ = ["ErrorReply", "jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` with dataclasses as dicts of their fields, ``ipaddress`` objects as strings,
    enums as their label (or value), bytes as hex, and tuples as lists -- recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, enum.Enum):
        return getattr(value, "label", value.value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """Why a probe got no answer of its own kind: the ICMP error a router or the target sent
    instead, or (``local``) why the probe could not be sent.

    ``kind`` is ``None`` for a local failure (no route, no free port, a full table ...); then
    ``text`` says why and ``type``/``code`` are -1. ``unreach`` is the normalised unreachable
    reason, e.g. :attr:`~netdiag.wire.icmp.Unreach.ADMIN` for a firewall's ``reject with icmp
    type admin-prohibited``. ``mtu`` is the next-hop MTU of a packet-too-big or
    fragmentation-needed error (0 otherwise). A value, not an exception: results carry it.
    """

    kind: ErrorKind | None
    type: int
    code: int
    text: str
    mtu: int = 0
    unreach: Unreach | None = None

    @property
    def local(self) -> bool:
        """True when the probe never left: the error is ours, not the network's."""
        return self.kind is None

    @classmethod
    def of(cls, e: IcmpError) -> ErrorReply:
        """The reply for an ICMP error, in iputils' words (``, mtu=N`` when it carries one)."""
        text = error_text(e)
        mtu = e.info if e.kind is ErrorKind.PACKET_TOO_BIG or e.unreach is not None else 0
        if mtu:
            text += f", mtu={mtu}"
        return cls(e.kind, e.type, e.code, text, mtu, e.unreach)

    @classmethod
    def local_failure(cls, text: str) -> ErrorReply:
        """A probe the kernel (or netdiag) refused to send."""
        return cls(None, -1, -1, text)
