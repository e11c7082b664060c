"""Statistics of a trace repeated in rounds, as mtr keeps them, but per responder and per flow.

Pure: no sockets, no trio, no clock. :class:`PathStats` is fed the hops of each round
(:meth:`PathStats.add_round`) and keeps, per hop and per responder, running statistics
(:class:`RunningStats`: Welford's mean and variance, last, best, worst, jitter) and per-flow
sent/received counts -- a fixed amount of state per responder, so a monitor can run for days.

**Loss is attributed by flow.** The monitor sends the same Paris flows every round, and a flow
follows one path, so a probe of flow ``f`` at TTL ``t`` that gets no answer is lost *on the
path flow f took to TTL t*: it counts as sent (and lost) for the responder that flow ``f``
last reached at TTL ``t``. Loss on one ECMP branch therefore shows on that branch's
responders only, instead of being averaged over the hop as mtr does. A timeout of a flow that
never reached anything at that TTL goes to the hop's ``None`` responder (mtr's ``???``).

**Route changes** (:class:`RouteChange`) are reported per TTL when the set of responders
changes: an address *appears* when a flow that reached another address at a TTL now reaches
it, or when it answers again after it vanished (a flow answered for the first time only shows
what was there: its earlier probes were lost, or it is new);
an address *vanishes* when the flows that used to reach it were answered by others in a round
(the path moved), when the route now ends (arrival, unreachable) before its TTL, or when it has
been silent for ``grace`` rounds in a row while its hop answered.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .results import Hop

__all__ = [
    "HISTORY",
    "HopSnapshot",
    "PathStats",
    "ResponderSnapshot",
    "RouteChange",
    "RunningStats",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: RTTs (or ``None`` for a lost probe) each responder remembers for sparklines.
HISTORY = 32
#: Responders kept per hop: vanished ones beyond this are forgotten, oldest first.
MAX_RESPONDERS = 32


class RunningStats:
    """RTT statistics in constant memory: count, Welford's mean and variance, last, best,
    worst, and jitter (the mean absolute difference between consecutive RTTs, as mtr's
    ``Javg``; ``jitter_last`` is the latest such difference)."""

    __slots__ = ("best", "count", "jitter", "jitter_last", "last", "m2", "mean", "worst")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.last: float | None = None
        self.best: float | None = None
        self.worst: float | None = None
        self.jitter = 0.0
        self.jitter_last = 0.0

    def add(self, x: float) -> None:
        """Account one RTT (seconds)."""
        if not isinstance(x, int | float) or isinstance(x, bool) or not math.isfinite(x):
            raise ValueError(f"an RTT must be a finite number of seconds, not {x!r}")
        if self.last is not None:
            self.jitter_last = abs(x - self.last)
            # the mean of count-1 differences
            self.jitter += (self.jitter_last - self.jitter) / self.count
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)
        self.last = x
        self.best = x if self.best is None else min(self.best, x)
        self.worst = x if self.worst is None else max(self.worst, x)

    @property
    def stdev(self) -> float:
        """Sample standard deviation (0 below two samples), as mtr's ``StDev``."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0


@dataclass(frozen=True, slots=True)
class RouteChange:
    """At ``ttl``, in round ``round``, these addresses started (``appeared``) or stopped
    (``vanished``) answering."""

    round: int
    ttl: int
    appeared: tuple[IPAddress, ...] = ()
    vanished: tuple[IPAddress, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "ttl": self.ttl,
            "appeared": [str(a) for a in self.appeared],
            "vanished": [str(a) for a in self.vanished],
        }

    def __str__(self) -> str:
        parts = [f"round {self.round} hop {self.ttl}:"]
        parts += [f"+{a}" for a in self.appeared]
        parts += [f"-{a}" for a in self.vanished]
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class ResponderSnapshot:
    """One row of the report: one responder (``addr``; ``None`` for probes nobody answered)
    at one hop. RTTs in seconds (``None`` before the first answer); ``loss`` in percent.
    ``flows`` maps each flow that reached it to ``(sent, received)``. ``history`` holds the
    latest RTTs, ``None`` for a lost probe, oldest first. ``active`` is false once the
    responder vanished (its statistics stay)."""

    ttl: int
    addr: IPAddress | None
    sent: int
    received: int
    last: float | None
    avg: float | None
    best: float | None
    worst: float | None
    stdev: float
    jitter: float
    reply_ttl: int | None
    mark: str
    destination: bool
    active: bool
    flows: dict[int, tuple[int, int]] = field(default_factory=dict)
    history: tuple[float | None, ...] = ()
    name: str | None = None

    @property
    def loss(self) -> float:
        """Lost probes in percent of those sent (0.0 before any was sent)."""
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl,
            "addr": str(self.addr) if self.addr is not None else None,
            "name": self.name,
            "sent": self.sent,
            "received": self.received,
            "loss": self.loss,
            "last": self.last,
            "avg": self.avg,
            "best": self.best,
            "worst": self.worst,
            "stdev": self.stdev,
            "jitter": self.jitter,
            "reply_ttl": self.reply_ttl,
            "mark": self.mark,
            "destination": self.destination,
            "active": self.active,
            "flows": {str(f): {"sent": s, "received": r} for f, (s, r) in self.flows.items()},
        }


@dataclass(frozen=True, slots=True)
class HopSnapshot:
    """The rows of one TTL: responders in order of first answer, unanswered probes last."""

    ttl: int
    responders: tuple[ResponderSnapshot, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"ttl": self.ttl, "responders": [r.as_dict() for r in self.responders]}


class _Responder:
    __slots__ = (
        "active",
        "addr",
        "destination",
        "flows",
        "history",
        "mark",
        "received",
        "reply_ttl",
        "rtt",
        "seen",
        "sent",
        "silent",
    )

    def __init__(self, addr: IPAddress | None, round_no: int) -> None:
        self.addr = addr
        self.sent = 0
        self.received = 0
        self.rtt = RunningStats()
        self.reply_ttl: int | None = None
        self.mark = ""
        self.destination = False
        self.active = True
        self.flows: dict[int, list[int]] = {}
        self.history: deque[float | None] = deque(maxlen=HISTORY)
        self.seen = round_no  # the last round it answered
        self.silent = 0  # rounds in a row without an answer while its hop answered

    def probe(self, flow: int, rtt: float | None, answered: bool) -> None:
        self.sent += 1
        counts = self.flows.setdefault(flow, [0, 0])
        counts[0] += 1
        if answered:
            self.received += 1
            counts[1] += 1
            if rtt is not None:
                self.rtt.add(rtt)
        self.history.append(rtt if answered else None)

    def snapshot(self, ttl: int, names: dict[IPAddress, str | None]) -> ResponderSnapshot:
        s = self.rtt
        return ResponderSnapshot(
            ttl,
            self.addr,
            self.sent,
            self.received,
            s.last,
            s.mean if s.count else None,
            s.best,
            s.worst,
            s.stdev,
            s.jitter,
            self.reply_ttl,
            self.mark,
            self.destination,
            self.active,
            {f: (c[0], c[1]) for f, c in sorted(self.flows.items())},
            tuple(self.history),
            names.get(self.addr) if self.addr is not None else None,
        )


class PathStats:
    """Per hop, per responder statistics over rounds, and route-change detection.

    Feed it each round's hops with :meth:`add_round`; read it with :meth:`snapshot`.
    ``grace``: silent rounds in a row after which a responder whose hop still answers counts as
    vanished (a lost probe is not a route change: with 50 % loss on a branch reached by two
    flows, one round in four is silent; set it higher for lossy paths).
    """

    def __init__(self, grace: int = 8) -> None:
        if not isinstance(grace, int) or isinstance(grace, bool) or grace < 1:
            raise ValueError(f"grace must be a positive number of rounds, not {grace!r}")
        self.grace = grace
        self.rounds = 0  # since the last reset
        self._round = 0  # ever
        self._hops: dict[int, dict[IPAddress | None, _Responder]] = {}
        #: ``(ttl, flow) -> addr``: where each flow was last answered at each TTL
        self._paths: dict[tuple[int, int], IPAddress] = {}
        self.names: dict[IPAddress, str | None] = {}

    def reset(self) -> None:
        """Forget the statistics (mtr's ``r`` key); what is known of the paths stays, so no
        route change is reported for responders already known."""
        for hop in self._hops.values():
            for addr in list(hop):
                r = hop[addr]
                if not r.active or addr is None:
                    del hop[addr]
                else:
                    fresh = _Responder(addr, r.seen)
                    fresh.reply_ttl, fresh.mark, fresh.destination = (
                        r.reply_ttl,
                        r.mark,
                        r.destination,
                    )
                    hop[addr] = fresh
        self.rounds = 0

    def add_round(self, hops: Iterable[Hop]) -> list[RouteChange]:
        """Account one round's hops; return the route changes it showed, in TTL order."""
        self.rounds += 1
        self._round += 1
        rnd = self._round
        first = rnd == 1  # the baseline: everything "appears", which is no change
        changes: list[RouteChange] = []
        hops = sorted(hops, key=lambda h: h.ttl)
        for hop in hops:
            rows = self._hops.setdefault(hop.ttl, {})
            appeared: list[IPAddress] = []
            moved: set[IPAddress] = set()
            answered_now: set[IPAddress] = set()
            # Answers first: timeouts are attributed with this round's paths known.
            for p in sorted(hop.probes, key=lambda p: (p.addr is None, p.flow)):
                key = (hop.ttl, p.flow)
                if p.addr is None:
                    row = rows.get(self._lost_at(hop.ttl, p.flow, rows))
                    if row is None:
                        row = rows.get(None)
                        if row is None:
                            row = rows[None] = _Responder(None, rnd)
                    row.probe(p.flow, None, False)
                    continue
                before = self._paths.get(key)
                if before is not None and before != p.addr:
                    moved.add(before)
                self._paths[key] = p.addr
                row = rows.get(p.addr)
                if row is None:
                    row = rows[p.addr] = _Responder(p.addr, rnd)
                    # news only if the flow went elsewhere before: a flow answered for the first
                    # time (its earlier probes lost, or a new flow) shows what was there
                    if before is not None and p.addr not in appeared:
                        appeared.append(p.addr)
                elif not row.active:
                    row.active = True
                    if p.addr not in appeared:
                        appeared.append(p.addr)
                row.probe(p.flow, p.rtt, True)
                row.seen = rnd
                row.silent = 0
                if p.reply_ttl is not None:
                    row.reply_ttl = p.reply_ttl
                if p.mark:
                    row.mark = p.mark
                row.destination = row.destination or p.destination
                answered_now.add(p.addr)
            vanished = []
            if answered_now:
                for addr, row in rows.items():
                    if addr is None or not row.active or addr in answered_now:
                        continue
                    row.silent += 1
                    if addr in moved or row.silent >= self.grace:
                        row.active = False
                        vanished.append(addr)
            if (appeared or vanished) and not first:
                changes.append(RouteChange(rnd, hop.ttl, tuple(appeared), tuple(vanished)))
            for r in hop.responders:
                if r.name is not None:
                    self.names[r.addr] = r.name
            self._trim(rows)
        # The route now ends (an arrival, an unreachable) before TTLs where responders
        # answered: they vanished.
        end = hops[-1] if hops else None
        if end is not None and end.last and (end.reached or end.mark) and not first:
            for ttl in sorted(t for t in self._hops if t > end.ttl):
                gone = [a for a, r in self._hops[ttl].items() if a is not None and r.active]
                for a in gone:
                    self._hops[ttl][a].active = False
                if gone:
                    changes.append(RouteChange(rnd, ttl, (), tuple(gone)))
        return changes

    def _lost_at(
        self, ttl: int, flow: int, rows: dict[IPAddress | None, _Responder]
    ) -> IPAddress | None:
        """Whose probe was lost: the responder ``flow`` reached at ``ttl`` before; else, if
        every flow that shared its responder one hop earlier went on to one responder here,
        that one; with the flow's path one hop earlier unknown too, the hop's only active
        responder; else ``None`` (``???``)."""
        paths = self._paths
        addr = paths.get((ttl, flow))
        if addr is not None:
            return addr
        prev = paths.get((ttl - 1, flow))
        if prev is not None:
            nexts = {
                a for (t, g), a in paths.items() if t == ttl and paths.get((ttl - 1, g)) == prev
            }
            # None known: the branch beyond ``prev`` is unexplored, so nobody can be named.
            return nexts.pop() if len(nexts) == 1 else None
        active = [a for a, r in rows.items() if a is not None and r.active]
        return active[0] if len(active) == 1 else None

    def _trim(self, rows: dict[IPAddress | None, _Responder]) -> None:
        if len(rows) <= MAX_RESPONDERS:
            return
        gone = sorted((r.seen, i, a) for i, (a, r) in enumerate(rows.items()) if not r.active)
        for _seen, _i, addr in gone[: len(rows) - MAX_RESPONDERS]:
            del rows[addr]

    def snapshot(self) -> tuple[HopSnapshot, ...]:
        """Every hop's rows, in TTL order; per hop the responders in order of first answer
        and the unanswered probes' row (``addr=None``) last."""
        out = []
        for ttl in sorted(self._hops):
            rows = self._hops[ttl]
            named = [r for a, r in rows.items() if a is not None]
            if None in rows:
                named.append(rows[None])
            out.append(HopSnapshot(ttl, tuple(r.snapshot(ttl, self.names) for r in named)))
        return tuple(out)
