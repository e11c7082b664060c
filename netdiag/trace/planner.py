"""How MDA decides: the route planner of one trace, a sans-IO state machine.

No sockets, no trio, no clock: like h11's ``Connection``, a :class:`Planner` is *told* what
happened and *asked* what to do, and the caller (``trace/session.py``) does the IO. Times are
given explicitly, so the same planner runs on the wire, on trio's virtual clock, or in a plain
loop over a simulated topology (``tests/test_trace_planner.py``).

Asked:

* :meth:`Planner.next_probe` -- the next probe to send, as ``Send(ttl, flow)``, or ``None``:
  then wait for the next answer or expiry and ask again. The planner counts the probe as in
  flight as soon as it hands it out (the caller registers and sends it at once).
* :meth:`Planner.settled_hops` -- the hops settled since the last call, as frozen
  :class:`~netdiag.trace.results.Hop` values in TTL order. :attr:`Planner.complete` says the
  last hop was among them.

Told:

* :meth:`Planner.answered` -- the first answer to a probe in flight (as the
  :class:`~netdiag.trace.results.TraceProbe` it makes, and whether it ends the route there:
  an arrival or an unreachable). Duplicates and late answers are the caller's business.
* :meth:`Planner.expired` -- a probe in flight got no answer in time.

**The window is held inside**: ``next_probe()`` returns ``None`` while ``window`` probes are in
flight. Keeping it here (not in the caller) keeps the order of probes a function of the events
alone: which probe goes next depends on how many are in flight.

**The rules** (the design is explained in docs/trace.md, "MDA and parallel probing"):

* *Flows are Paris flows, numbered from 0*: a hop's probes are flows ``0 .. sent-1`` in that
  order, so flow ``f`` keeps its number (and its flow id on the wire) at every TTL.
* *The scout*: flow 0 probes TTLs ``first_ttl .. first_ttl + reach - 1`` at once; a router's
  answer (or silence) from the deeper half of that range pushes the reach to ``ttl + reach``
  (never past ``max_ttl``).
* *The horizon*: ``max_ttl`` until a terminal answer (arrival, unreachable) lowers it to that
  answer's TTL; nothing beyond it is planned, and the hop at the horizon is the last one.
* *The MDA's flows*: a hop gets flows beyond the scout's only once it is *open*: a deeper hop
  answered as a router (so it is on the route), or its own scout probe was answered or expired.
  Then its *quota* is :func:`~netdiag.wire.trace.mda_probes` for the interfaces seen so far
  (capped at ``max_flows``), or exactly ``flows`` when fixed -- except at the destination's
  hop: once only the target answered at the horizon, the answers in settle it.
* *Settled*: every probe sent to the hop answered or expired and its quota sent; hops are
  emitted strictly in TTL order.
* *Waves*: probes are planned in waves. A wave is the list of probes the state asks for when
  the previous wave has been handed out: the missing scout probes within reach and, per open
  hop, the flows it is short of its quota, in TTL order. Each entry is checked again when its
  turn comes (answers meanwhile may have settled its hop, or lowered the horizon below it);
  flows the state asks for meanwhile go into the next wave. This batching fixes the order in
  which probes leave, which the probe counts pinned in the tests depend on.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import NamedTuple

from ..validate import check_int
from ..wire.trace import mda_probes
from .options import DEFAULT_REACH
from .results import Hop, Responder, TraceProbe

__all__ = ["Planner", "Send", "mda_probes"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Send(NamedTuple):
    """Send flow ``flow``'s probe with TTL ``ttl`` now."""

    ttl: int
    flow: int


class _HopState:
    """What the planner knows of one TTL while it is not settled."""

    __slots__ = ("addrs", "mark", "outstanding", "probes", "reached", "sent", "ttl")

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.sent = 0
        self.outstanding = 0
        self.probes: list[TraceProbe] = []
        self.addrs: dict[IPAddress, None] = {}  # ordered: first answer first
        self.reached = False
        self.mark = ""


class Planner:
    """The route planner of one trace: which probes to send, and when a hop is settled.

    Parameters are :class:`~netdiag.Trace`'s of the same names (validated the same way).
    """

    def __init__(
        self,
        *,
        first_ttl: int = 1,
        max_ttl: int = 30,
        reach: int = DEFAULT_REACH,
        flows: int | None = None,
        confidence: float = 0.95,
        max_flows: int = 64,
        window: int = 32,
    ) -> None:
        check_int("first_ttl", first_ttl, 1, 255)
        check_int("max_ttl", max_ttl, 1, 255)
        if first_ttl > max_ttl:
            raise ValueError(f"first_ttl ({first_ttl}) must not exceed max_ttl ({max_ttl})")
        check_int("reach", reach, 1, 255)
        check_int("max_flows", max_flows, 1, 1024)
        if flows is not None:
            check_int("flows", flows, 1, max_flows)
        mda_probes(1, confidence)  # raises ValueError for a confidence outside (0, 1)
        check_int("window", window, 1, 65536)
        self.first_ttl = first_ttl
        self.max_ttl = max_ttl
        self.step = reach
        self.flows = flows
        self.confidence = confidence
        self.max_flows = max_flows
        self.window = window

        self._hops: dict[int, _HopState] = {}
        self._in_flight: set[tuple[int, int]] = set()
        self._wave: deque[int] = deque()  # TTLs, one entry per probe
        self._settled: deque[Hop] = deque()
        #: The last hop, exactly: ``max_ttl`` until a terminal answer lowers it.
        self.horizon = max_ttl
        #: How deep probes may go for now (the destination's distance is unknown): the scout
        #: flow probes ``first_ttl..reach``; answers from the deep end push it further.
        self.reach = min(first_ttl + reach - 1, max_ttl)
        #: The deepest TTL known to lie before the end of the route (it sent a non-terminal
        #: answer). Hops up to it may get more flows; deeper ones only once their own scout
        #: probe is resolved, so no MDA flow is spent beyond the destination.
        self.known = 0
        #: The next TTL to emit as settled.
        self.next_emit = first_ttl
        #: Probes handed out so far, and of those neither answered nor expired.
        self.sent = 0
        self.in_flight = 0
        #: The last hop is settled: nothing more to send, whatever is still in flight.
        self.complete = False
        #: The ``now`` of the event that completed the trace.
        self.finished_at: float | None = None

    # -- asked ---------------------------------------------------------------------------

    def next_probe(self) -> Send | None:
        """The probe to send now, counted as in flight from here on; or ``None``: nothing to
        send until the next :meth:`answered` or :meth:`expired` (asking again before that
        gives ``None`` again), or ever, once :attr:`complete`."""
        wave = self._wave
        while not self.complete:
            if not wave:
                wave.extend(self._plan())
                if not wave:
                    return None
            if self.in_flight >= self.window:
                return None
            ttl = wave.popleft()
            if ttl > self.horizon:
                wave.clear()  # and plan anew: the route ends before the rest of this wave
                continue
            h = self._hops.get(ttl)
            if h is not None and h.sent >= self._quota(h):
                continue  # answers meanwhile settled it (the destination's hop, say)
            if h is None:
                h = self._hops[ttl] = _HopState(ttl)
            flow = h.sent
            h.sent += 1
            h.outstanding += 1
            self.in_flight += 1
            self.sent += 1
            self._in_flight.add((ttl, flow))
            return Send(ttl, flow)
        return None

    def settled_hops(self) -> list[Hop]:
        """The hops settled since the last call, in TTL order (the last has ``last=True``)."""
        out = list(self._settled)
        self._settled.clear()
        return out

    # -- told ----------------------------------------------------------------------------

    def answered(self, probe: TraceProbe, *, terminal: bool, now: float) -> None:
        """The first answer to the probe ``(probe.ttl, probe.flow)`` in flight. ``probe.addr``
        is who answered; ``probe.destination`` says the target did (an arrival), and
        ``terminal`` that the answer ends the route at this TTL (an arrival or an
        unreachable; ``probe.mark`` names the latter)."""
        if probe.addr is None:
            raise ValueError("an answer names who answered (addr is None)")
        h = self._resolve(probe.ttl, probe.flow)
        h.probes.append(probe)
        h.addrs[probe.addr] = None
        if not terminal:
            self.known = max(self.known, probe.ttl)
        self._extend_reach(probe.ttl, terminal)
        if terminal and probe.ttl <= self.horizon:
            self.horizon = probe.ttl
            if probe.destination:
                h.reached = True
            elif not h.mark:
                h.mark = probe.mark
        self._advance(now)

    def expired(self, ttl: int, flow: int, *, now: float) -> None:
        """The probe ``(ttl, flow)`` in flight got no answer in time."""
        h = self._resolve(ttl, flow)
        h.probes.append(TraceProbe(ttl, flow, "timeout"))
        self._extend_reach(ttl, False)
        self._advance(now)

    # -- the rules -----------------------------------------------------------------------

    def _resolve(self, ttl: int, flow: int) -> _HopState:
        try:
            self._in_flight.remove((ttl, flow))
        except KeyError:
            raise ValueError(f"no probe (ttl {ttl}, flow {flow}) in flight") from None
        h = self._hops[ttl]
        h.outstanding -= 1
        self.in_flight -= 1
        return h

    def _needed(self, h: _HopState) -> int:
        """Flows hop ``h`` needs in all. The MDA rule for the interfaces seen so far -- except at
        the destination's hop: once only the target answered there, the hop is settled with the
        answers already in (as scamper's tracelb does): every further flow would reach the same
        host, and the route ends there whatever hop ``d + 1`` would show."""
        if self.flows is not None:
            return self.flows
        if h.reached and h.ttl == self.horizon and len(h.addrs) == 1:
            return 0
        return mda_probes(max(1, len(h.addrs)), self.confidence)

    def _quota(self, h: _HopState) -> int:
        return min(self._needed(h), self.max_flows)

    def _open(self, h: _HopState) -> bool:
        """May hop ``h`` get flows beyond the scout's? Only once it is known to be on the route
        (a deeper hop answered as a router) or its own scout probe is resolved."""
        return h.ttl <= self.known or bool(h.probes)

    def _extend_reach(self, ttl: int, terminal: bool) -> None:
        """When the probe at ``ttl`` is answered or expires: a router's answer (or silence) near
        the deep end of the reach extends it, so the scout keeps ``reach`` hops ahead of what
        is known, up to ``max_ttl``."""
        if terminal:
            return
        step = self.step
        if ttl > self.reach - max(1, step // 2) and self.reach < self.max_ttl:
            self.reach = min(ttl + step, self.max_ttl)

    def _plan(self) -> list[int]:
        """The next wave, as TTLs in order (a TTL repeated once per probe): a scout probe for
        every TTL within reach not yet probed, and for every open, unsettled hop the flows it
        is short of its quota."""
        out: list[int] = []
        for ttl in range(self.next_emit, min(self.horizon, self.reach) + 1):
            h = self._hops.get(ttl)
            if h is None:
                out.append(ttl)
            elif self._open(h):
                out.extend([ttl] * (self._quota(h) - h.sent))
        return out

    def _advance(self, now: float) -> None:
        """Emit, in TTL order, every hop that is settled."""
        while not self.complete:
            ttl = self.next_emit
            h = self._hops.get(ttl)
            if h is None or h.outstanding or h.sent < self._quota(h):
                return
            last = ttl >= self.horizon
            self._settled.append(_freeze(h, last))
            self.next_emit += 1
            if last:
                self.complete = True
                self.finished_at = now


def _freeze(h: _HopState, last: bool) -> Hop:
    groups: dict[IPAddress, list[TraceProbe]] = {}
    timeouts = 0
    for p in h.probes:
        if p.addr is None:
            timeouts += 1
        else:
            groups.setdefault(p.addr, []).append(p)
    responders = tuple(
        Responder(
            addr,
            tuple(p.rtt for p in ps if p.rtt is not None),
            tuple(p.flow for p in ps),
            next((p.mark for p in ps if p.mark), ""),
            any(p.destination for p in ps),
        )
        for addr, ps in groups.items()
    )
    probes = tuple(sorted(h.probes, key=lambda p: p.flow))
    return Hop(h.ttl, probes, responders, timeouts, last, h.reached, h.mark)
