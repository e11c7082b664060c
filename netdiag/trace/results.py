"""What a trace returns: one :class:`TraceProbe` per probe, grouped per TTL into a :class:`Hop`
(its :class:`Responder` interfaces), and the whole route as a :class:`TraceResult`.

Frozen values with ``as_dict()`` for JSON; no IO, so the planner builds them too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from ..wire.icmpext import InterfaceInfo, MplsEntry
from .options import Proto

__all__ = ["Hop", "Link", "Responder", "TraceProbe", "TraceResult", "arrivals", "links", "paths"]

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
    ``mpls`` is the label stack an MPLS router quoted in its time-exceeded or unreachable (RFC
    4950, top entry first), ``interfaces`` the RFC 5837 interface information objects: both
    from the message's RFC 4884 extensions (raw sockets only: the datagram mode's error queue
    does not carry them). ``quoted_ttl`` is the TTL the probe had left when it reached the
    responder, as an ICMP error quotes it (``None`` for other answers): 1 from the router it
    expired at; from the destination it tells how many routers the probe crossed.
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
    mpls: tuple[MplsEntry, ...] = ()
    interfaces: tuple[InterfaceInfo, ...] = ()
    quoted_ttl: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        d: dict[str, Any] = {
            "addr": str(self.addr) if self.addr is not None else None,
            "rtt": self.rtt,
            "flow": self.flow,
            "kind": self.kind,
            "mark": self.mark,
            "destination": self.destination,
            "reply_ttl": self.reply_ttl,
            "quoted_ttl": self.quoted_ttl,
        }
        if self.mpls:
            d["mpls"] = [_mpls_dict(e) for e in self.mpls]
        if self.interfaces:
            d["interfaces"] = [_iface_dict(i) for i in self.interfaces]
        return d


def _mpls_dict(e: MplsEntry) -> dict[str, Any]:
    return {"label": e.label, "tc": e.tc, "s": e.s, "ttl": e.ttl}


def _iface_dict(i: InterfaceInfo) -> dict[str, Any]:
    return {
        "role": i.role,
        "ifindex": i.ifindex,
        "addr": str(i.addr) if i.addr is not None else None,
        "name": i.name,
        "mtu": i.mtu,
    }


@dataclass(frozen=True, slots=True)
class Responder:
    """One interface that answered at a hop, with every RTT and the flows that reached it.

    ``ends`` are the flows whose answer here ended them (the destination reached at this TTL,
    or an unreachable): in a multipath network the destination may answer at several TTLs,
    and a hop may hold it beside routers that other flows went on through.
    """

    addr: IPAddress
    rtts: tuple[float, ...]
    flows: tuple[int, ...]
    mark: str = ""
    destination: bool = False
    name: str | None = None
    ends: tuple[int, ...] = ()
    #: The distinct MPLS label stacks quoted by this interface's answers (usually one).
    mpls: tuple[tuple[MplsEntry, ...], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        return {
            "addr": str(self.addr),
            "name": self.name,
            "rtts": list(self.rtts),
            "flows": list(self.flows),
            "mark": self.mark,
            "destination": self.destination,
            "ends": list(self.ends),
            "mpls": [[_mpls_dict(e) for e in stack] for stack in self.mpls],
        }


@dataclass(frozen=True, slots=True)
class Hop:
    """Everything learnt at one TTL.

    ``responders`` are in order of first answer. ``timeouts`` counts probes nobody answered.
    ``last`` is true for the final hop of the trace: the target answered (``reached``), an
    unreachable ended it (``mark`` is then ``!H``, ``!N``, ``!P``, ``!X`` ...), or ``max_ttl``.
    ``reached`` says some flow reached the target at this TTL -- others may have gone on
    (``Responder.ends`` tells which). ``beyond`` are probes sent to this TTL on flows that had
    already ended at a lower one: they count for nothing here (the target answers them too).
    """

    ttl: int
    probes: tuple[TraceProbe, ...]
    responders: tuple[Responder, ...]
    timeouts: int
    last: bool
    reached: bool
    mark: str = ""
    beyond: tuple[TraceProbe, ...] = ()

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
            "beyond": [p.as_dict() for p in self.beyond],
        }


@dataclass(frozen=True, slots=True)
class Link:
    """Flows ``flows`` met ``src`` at TTL ``ttl`` and ``dst`` at ``ttl + 1``: an edge of the
    route's graph (MDA discovers a graph, not a list of hop sets)."""

    ttl: int
    src: IPAddress
    dst: IPAddress
    flows: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (an entry of ``--json``'s ``links``)."""
        return {
            "ttl": self.ttl,
            "src": str(self.src),
            "dst": str(self.dst),
            "flows": list(self.flows),
        }


def paths(hops: tuple[Hop, ...] | list[Hop]) -> dict[int, dict[int, IPAddress | None]]:
    """Per flow, the responder at each TTL it was probed at (``None``: no answer), up to its
    end; probes past a flow's end are left out."""
    out: dict[int, dict[int, IPAddress | None]] = {}
    for h in hops:
        for p in h.probes:
            out.setdefault(p.flow, {})[h.ttl] = p.addr
    return {f: dict(sorted(path.items())) for f, path in sorted(out.items())}


def links(hops: tuple[Hop, ...] | list[Hop]) -> tuple[Link, ...]:
    """The route's edges: a responder at TTL ``k`` to the one at ``k + 1`` on the same flow."""
    seen: dict[tuple[int, IPAddress, IPAddress], list[int]] = {}
    for f, path in paths(hops).items():
        for ttl, a in path.items():
            b = path.get(ttl + 1)
            if a is not None and b is not None:
                seen.setdefault((ttl, a, b), []).append(f)
    return tuple(Link(t, a, b, tuple(fs)) for (t, a, b), fs in sorted(seen.items(), key=_link_key))


def _link_key(item: tuple[tuple[int, IPAddress, IPAddress], list[int]]) -> tuple[int, int, int]:
    (t, _, _), fs = item
    return (t, min(fs), len(fs))


def arrivals(hops: tuple[Hop, ...] | list[Hop]) -> dict[int, int]:
    """Per flow that reached the target, the TTL it reached it at."""
    out: dict[int, int] = {}
    for h in hops:
        for p in h.probes:
            if p.destination:
                out.setdefault(p.flow, h.ttl)
    return dict(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class TraceResult:
    """A whole route, as :meth:`Tracer.collect` collects it.

    ``sent`` counts probes, ``late`` answers that came after their probe expired (never credited
    to anything), ``elapsed`` the seconds from the first probe to the last hop. ``past`` are
    the probes sent beyond the last hop (the scout's look-ahead with ``minimize="rounds"``; a
    distance probe whose answer quoted nothing), with their outcome if it came
    before the trace ended (else kind ``"unresolved"``). The route as a graph: :attr:`paths`,
    :attr:`links`, :attr:`arrivals`.
    """

    target: IPAddress
    protocol: Proto
    port: int
    hops: tuple[Hop, ...]
    reached: bool
    sent: int
    late: int
    elapsed: float
    past: tuple[TraceProbe, ...] = ()

    @property
    def paths(self) -> dict[int, dict[int, IPAddress | None]]:
        """Per flow, the responder at each TTL (``None``: silence) up to the flow's end."""
        return paths(self.hops)

    @property
    def links(self) -> tuple[Link, ...]:
        """Responder at TTL ``k`` -> responder at ``k + 1`` seen on the same flows."""
        return links(self.hops)

    @property
    def arrivals(self) -> dict[int, int]:
        """Per flow that reached the target, the TTL it reached it at."""
        return arrivals(self.hops)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        nodes = [
            {
                "ttl": h.ttl,
                "addr": str(r.addr),
                "name": r.name,
                "flows": len(r.flows),
                "destination": r.destination,
                "rtt": min(r.rtts) if r.rtts else None,
            }
            for h in self.hops
            for r in h.responders
        ]
        return {
            "target": str(self.target),
            "protocol": self.protocol,
            "port": self.port if self.protocol != "icmp" else None,
            "reached": self.reached,
            "sent": self.sent,
            "late": self.late,
            "elapsed": self.elapsed,
            "hops": [h.as_dict() for h in self.hops],
            "past": [p.as_dict() for p in self.past],
            "nodes": nodes,
            "links": [k.as_dict() for k in self.links],
            "paths": {
                str(f): {str(t): (str(a) if a is not None else None) for t, a in path.items()}
                for f, path in self.paths.items()
            },
            "arrivals": {str(f): t for f, t in self.arrivals.items()},
        }
