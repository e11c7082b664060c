"""What a trace returns: one :class:`TraceProbe` per probe, grouped per TTL into a :class:`Hop`
(its :class:`Responder` interfaces), and the whole route as a :class:`TraceResult`.

Frozen values with ``as_dict()`` for JSON; no IO, so the planner builds them too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from .options import Proto

__all__ = ["Hop", "Responder", "TraceProbe", "TraceResult"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class TraceProbe:
    """The outcome of one probe: who answered (``addr``, ``None`` on timeout) and how.

    ``flow`` numbers the trace's flows from 0 (probes with the same number took the same path).
    ``kind`` is ``"timeout"`` or a :class:`~netdiag.wire.trace.ReplyKind` value
    (``"time-exceeded"``, ``"unreachable"``, ``"echo-reply"``, ``"syn-ack"``, ``"rst"``,
    ``"packet-too-big"``, ``"parameter-problem"``). ``mark`` is traceroute's annotation
    (``!X``, ``!F-1280`` ...). ``destination`` says the target itself answered. ``reply_ttl`` is
    the TTL/hop limit the answer arrived with; ``info`` the MTU or parameter-problem pointer.
    """

    ttl: int
    flow: int
    kind: str
    addr: IPAddress | None = None
    rtt: float | None = None
    mark: str = ""
    destination: bool = False
    reply_ttl: int | None = None
    info: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        return {
            "addr": str(self.addr) if self.addr is not None else None,
            "rtt": self.rtt,
            "flow": self.flow,
            "kind": self.kind,
            "mark": self.mark,
            "destination": self.destination,
            "reply_ttl": self.reply_ttl,
        }


@dataclass(frozen=True, slots=True)
class Responder:
    """One interface that answered at a hop, with every RTT and the flows that reached it."""

    addr: IPAddress
    rtts: tuple[float, ...]
    flows: tuple[int, ...]
    mark: str = ""
    destination: bool = False
    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        return {
            "addr": str(self.addr),
            "name": self.name,
            "rtts": list(self.rtts),
            "flows": list(self.flows),
            "mark": self.mark,
            "destination": self.destination,
        }


@dataclass(frozen=True, slots=True)
class Hop:
    """Everything learnt at one TTL.

    ``responders`` are in order of first answer. ``timeouts`` counts probes nobody answered.
    ``last`` is true for the final hop of the trace: the target answered (``reached``), an
    unreachable ended it (``mark`` is then ``!H``, ``!N``, ``!P``, ``!X`` ...), or ``max_ttl``.
    """

    ttl: int
    probes: tuple[TraceProbe, ...]
    responders: tuple[Responder, ...]
    timeouts: int
    last: bool
    reached: bool
    mark: str = ""

    @property
    def addrs(self) -> frozenset[IPAddress]:
        """The set of interfaces that answered at this hop."""
        return frozenset(r.addr for r in self.responders)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        return {
            "ttl": self.ttl,
            "probes": [p.as_dict() for p in self.probes],
            "responders": [r.as_dict() for r in self.responders],
            "timeouts": self.timeouts,
            "last": self.last,
            "reached": self.reached,
            "mark": self.mark,
        }


@dataclass(frozen=True, slots=True)
class TraceResult:
    """A whole route, as :meth:`Tracer.collect` collects it.

    ``sent`` counts probes, ``late`` answers that came after their probe expired (never credited
    to anything), ``elapsed`` the seconds from the first probe to the last hop.
    """

    target: IPAddress
    protocol: Proto
    port: int
    hops: tuple[Hop, ...]
    reached: bool
    sent: int
    late: int
    elapsed: float

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        return {
            "target": str(self.target),
            "protocol": self.protocol,
            "port": self.port if self.protocol != "icmp" else None,
            "reached": self.reached,
            "sent": self.sent,
            "late": self.late,
            "elapsed": self.elapsed,
            "hops": [h.as_dict() for h in self.hops],
        }
