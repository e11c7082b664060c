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
  :class:`~netdiag.trace.results.TraceProbe` it makes, and whether it ends its flow there:
  an arrival or an unreachable). Duplicates and late answers are the caller's business.
* :meth:`Planner.expired` -- a probe in flight got no answer in time.

**The window is held inside**: ``next_probe()`` returns ``None`` while ``window`` probes are in
flight. Keeping it here (not in the caller) keeps the order of probes a function of the events
alone: which probe goes next depends on how many are in flight.

**The rules** (the design is explained in docs/trace.md, "MDA and parallel probing"):

* *Flows are Paris flows, numbered from 0*: flow ``f`` keeps its number (and its flow id on
  the wire) at every TTL; each TTL gets the lowest flows eligible there.
* *Per-flow reach*: a flow ends at its own terminal answer (arrival or unreachable); its probes
  at deeper TTLs count for no hop (``Hop.beyond``). Once some flow ended below a TTL, only
  flows known to go on (a router's answer or silence at the TTL before) are sent there.
* *The scout*: flow 0 probes TTLs ``first_ttl .. first_ttl + reach - 1`` at once; a router's
  answer (or silence) from the deeper half of that range pushes the reach to ``ttl + reach``
  (never past ``max_ttl``). A TTL whose scout's flow had ended gets the lowest eligible flow.
* *The distance probe* (``minimize="probes"``, the default): before the scout goes past
  ``first_ttl``, flow 0 is sent once with TTL ``max_ttl``. The destination's answer quotes
  the probe's header as it arrived, so its TTL says how many routers the probe crossed: the
  answer *is* flow 0's probe at that distance ``d`` (same flow, same path), and is filed
  there; the scout then probes ``first_ttl+1 .. d-1`` and nothing beyond. An answer without
  a quote (TCP, ICMP echo) still hints ``d`` by its own TTL (the sender's initial TTL is one of
  32, 64, 128, 255): the scout goes that far, and the probe stays where it was sent (past the
  route). While it is out the scout steps: a router's answer at its deepest TTL sends the
  next TTL (that flow goes on, so never past the destination; a destination that never
  answers costs no expiry before the routers are known). No answer: the scout falls back to
  ``reach``. About one round trip more, no probe wasted past the destination.
  ``minimize="rounds"`` skips it (the scout's ``reach`` at once).
* *The first hop*: when the caller knows how many next hops the first hop has (the kernel's
  route to the target: one gateway, or an ECMP set), hop ``1`` needs no MDA beyond that: one
  answer settles a single first hop; with several, the MDA stops as soon as all are seen.
* *The MDA's flows*: a hop gets flows beyond the scout's only once it is *open*: a deeper hop
  answered as a router, or one of its own probes was answered or expired. Then its *quota* is
  :func:`~netdiag.wire.trace.mda_probes` for the interfaces seen so far, routers and the target
  alike (capped at ``max_flows``), or exactly ``flows`` flows, each to its own end, when fixed.
* *Coverage*: every router interface at ``ttl - 1`` gets a flow through it probed at ``ttl``
  (a second try after a timeout), so a branch that goes on beside one that arrived is seen.
  Where only the target answered, coverage is all the hop needs (the destination's hop) --
  or nothing, with ``stop_at_first_arrival`` (scamper's tracelb: ``k - 1`` probes fewer for
  ``k`` interfaces before the destination, and a longer branch beside it can go unseen).
* *Settled*: every probe sent to the hop answered or expired and the rules met; hops are
  emitted strictly in TTL order. The *last* hop is the first where only terminal answers came
  (no flow went on), or ``max_ttl``; :attr:`Planner.horizon` becomes its TTL.
* *Waves*: probes are planned in waves. A wave is the list of probes the state asks for when
  the previous wave has been handed out: the scouts within reach and, per open hop, the flows
  it is short of its quota and its coverage, in TTL order. Each entry is checked again when
  its turn comes (answers meanwhile may have made it unneeded, or ended its flow); probes the
  state asks for meanwhile go into the next wave. This batching fixes the order in which
  probes leave, which the probe counts pinned in the tests depend on.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import replace
from typing import Literal, NamedTuple

from ..validate import check_int
from ..wire.trace import mda_probes
from .options import DEFAULT_REACH
from .results import Hop, Responder, TraceProbe

__all__ = ["Planner", "Send", "mda_probes"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NEVER = 1 << 16  # a TTL beyond any: "this flow has not ended"

#: The initial TTLs senders use (RFC 1700's 64 for most; 32, 128, 255 for some stacks): a reply
#: that arrives with TTL ``t`` most likely left with the smallest of these ``>= t``.
INITIAL_TTLS = (32, 64, 128, 255)


def hops_from_reply_ttl(reply_ttl: int) -> int:
    """How far away a sender probably is, from the TTL its packet arrived with: the routers it
    crossed (its initial TTL minus ``reply_ttl``) plus one. A guess (the return path may
    differ from the forward one): the distance probe uses it only as the scout's reach."""
    initial = next(t for t in INITIAL_TTLS if t >= reply_ttl)
    return initial - reply_ttl + 1


# Why a probe is in a wave (checked again when its turn comes).
_SCOUT, _MDA, _COVER, _DISTANCE = 0, 1, 2, 3


class Send(NamedTuple):
    """Send flow ``flow``'s probe with TTL ``ttl`` now."""

    ttl: int
    flow: int


class _HopState:
    """What the planner knows of one TTL while it is not settled."""

    __slots__ = ("answers", "pending", "sent", "terminal", "ttl")

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.sent: dict[int, None] = {}  # flows probed at this TTL, in order sent
        self.pending: set[int] = set()  # of those, neither answered nor expired
        self.answers: dict[int, TraceProbe] = {}  # flow -> its probe's outcome (timeouts too)
        self.terminal: set[int] = set()  # flows whose answer here ends them


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
        minimize: Literal["probes", "rounds"] = "probes",
        first_hops: int | None = None,
        stop_at_first_arrival: bool = False,
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
        if minimize not in ("probes", "rounds"):
            raise ValueError(f"minimize must be 'probes' or 'rounds', not {minimize!r}")
        if first_hops is not None:
            check_int("first_hops", first_hops, 1, 1024)
        self.first_ttl = first_ttl
        self.max_ttl = max_ttl
        self.step = reach
        self.minimize = minimize
        self.stop_at_first_arrival = stop_at_first_arrival
        self.flows = flows
        self.confidence = confidence
        self.max_flows = max_flows
        self.window = window
        #: How many interfaces hop 1 has, when the caller knows (the kernel's route).
        self.first_hops = first_hops if first_ttl == 1 else None

        self._hops: dict[int, _HopState] = {}
        self._in_flight: set[tuple[int, int]] = set()
        self._wave: deque[tuple[int, int, int, IPAddress | None]] = deque()
        self._settled: deque[Hop] = deque()
        #: Per flow, the TTL of its terminal answer (arrival or unreachable), the lowest if
        #: several: the flow's probes beyond it are past *its* destination and count nowhere.
        self.ended: dict[int, int] = {}
        #: The lowest TTL any terminal answer came from (``_NEVER`` until one does).
        self._first_end = _NEVER
        #: Every probe resolved so far (answered or expired), in the order resolved -- those
        #: past their flow's end included.
        self.probes: list[TraceProbe] = []
        #: The last hop: ``max_ttl`` until the hop where no flow went on is settled.
        self.horizon = max_ttl
        #: How deep probes may go for now (the destination's distance is unknown): the scout
        #: probes ``first_ttl..reach``; answers from the deep end push it further.
        self.reach = min(first_ttl + reach - 1, max_ttl)
        #: The distance probe's state: ``"pending"`` while it is in flight (the scout waits at
        #: ``first_ttl``), ``"known"`` once an answer placed the destination (the reach is
        #: then exact, or a hint), ``"none"`` without one (never sent, or unanswered).
        self.distance: Literal["pending", "known", "none"] = "none"
        #: The destination's distance on flow 0, as the distance probe measured or hinted it.
        self.distance_ttl: int | None = None
        #: The distance probe was filed at ``distance_ttl`` (its answer quoted the TTL it
        #: arrived with); else it stays at ``max_ttl``, where it was sent.
        self.distance_filed = False
        self._held = 0  # the deepest TTL that would have extended the reach while it was pending
        if minimize == "probes" and max_ttl > first_ttl + 1:
            self.distance = "pending"
            self._wave.append((max_ttl, 0, _DISTANCE, None))
            self.reach = first_ttl
        #: The deepest TTL a router answered from (so it lies before the end of some flow).
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
            ttl, flow, why, via = wave.popleft()
            if why == _DISTANCE:
                if self.distance == "pending" and (ttl, flow) not in self._in_flight:
                    self._hand_out(ttl, flow)
                    return Send(ttl, flow)
                continue
            if ttl > self.horizon:
                wave.clear()  # and plan anew: the route ended before the rest of this wave
                continue
            if not self._eligible(ttl, flow):
                continue  # probed meanwhile, or its flow ended before this TTL
            h = self._hops.get(ttl)
            if h is not None and not self._still_wanted(h, why, via):
                continue  # answers meanwhile settled what this probe was for
            self._hand_out(ttl, flow)
            return Send(ttl, flow)
        return None

    def _hand_out(self, ttl: int, flow: int) -> None:
        h = self._hops.get(ttl)
        if h is None:
            h = self._hops[ttl] = _HopState(ttl)
        h.sent[flow] = None
        h.pending.add(flow)
        self.in_flight += 1
        self.sent += 1
        self._in_flight.add((ttl, flow))

    def settled_hops(self) -> list[Hop]:
        """The hops settled since the last call, in TTL order (the last has ``last=True``)."""
        out = list(self._settled)
        self._settled.clear()
        return out

    def unresolved(self) -> list[Send]:
        """The probes still in flight (neither answered nor expired), in TTL, flow order."""
        return [Send(t, f) for t, f in sorted(self._in_flight)]

    def past_route(self) -> tuple[TraceProbe, ...]:
        """The probes sent beyond the last hop (the scout's look-ahead past the destination, or
        a distance probe not filed at a hop), in TTL order: their outcome if it came, else kind
        ``"unresolved"`` (still in flight when the route was complete)."""
        past = [p for p in self.probes if p.ttl > self.horizon]
        past += [TraceProbe(t, f, "unresolved") for t, f in self._in_flight if t > self.horizon]
        return tuple(sorted(past, key=lambda p: (p.ttl, p.flow)))

    def past_end(self, probe: TraceProbe) -> bool:
        """Was ``probe`` sent beyond its own flow's end (its destination or unreachable at a
        lower TTL)? Such probes count for no hop."""
        return self.ended.get(probe.flow, _NEVER) < probe.ttl

    # -- told ----------------------------------------------------------------------------

    def answered(self, probe: TraceProbe, *, terminal: bool, now: float) -> None:
        """The first answer to the probe ``(probe.ttl, probe.flow)`` in flight. ``probe.addr``
        is who answered; ``probe.destination`` says the target did (an arrival), and
        ``terminal`` that the answer ends *this flow* at this TTL (an arrival or an
        unreachable; ``probe.mark`` names the latter)."""
        if probe.addr is None:
            raise ValueError("an answer names who answered (addr is None)")
        ttl, flow = probe.ttl, probe.flow
        h = self._resolve(ttl, flow)
        if self.distance == "pending" and (ttl, flow) == (self.max_ttl, 0):
            placed = self._place_distance(h, probe, terminal)
            if placed is not None:
                h, probe = placed
                ttl = probe.ttl
            self._release_held()
        h.answers[flow] = probe
        self.probes.append(probe)
        if terminal:
            h.terminal.add(flow)
            if ttl < self.ended.get(flow, _NEVER):
                self.ended[flow] = ttl
            self._first_end = min(self._first_end, ttl)
        else:
            self.known = max(self.known, ttl)
            if self.distance == "pending" and ttl >= self.reach:
                # A router at the scout's deepest TTL: that flow goes at least one TTL
                # further, so the next is probed now -- never past the destination, and a
                # silent destination costs no expiry before the scout goes on.
                self.reach = min(ttl + 1, self.max_ttl)
            self._extend_reach(ttl)
        self._advance(now)

    def expired(self, ttl: int, flow: int, *, now: float) -> None:
        """The probe ``(ttl, flow)`` in flight got no answer in time."""
        h = self._resolve(ttl, flow)
        probe = TraceProbe(ttl, flow, "timeout")
        h.answers[flow] = probe
        self.probes.append(probe)
        if self.distance == "pending" and (ttl, flow) == (self.max_ttl, 0):
            self._no_distance()  # the scout falls back to its reach
            self._release_held()
        else:
            self._extend_reach(ttl)
        self._advance(now)

    # -- the distance probe --------------------------------------------------------------

    def _place_distance(
        self, h: _HopState, probe: TraceProbe, terminal: bool
    ) -> tuple[_HopState, TraceProbe] | None:
        """The distance probe's answer: file it at the TTL it arrived with, if the answer
        quotes that (returns the hop and the probe as filed there); else take the hint its
        own TTL gives, or fall back to the scout's reach (returns ``None``: it stays where it
        was sent)."""
        first, last = self.first_ttl, self.max_ttl
        if terminal and probe.quoted_ttl is not None and 1 <= probe.quoted_ttl <= last:
            d = last - probe.quoted_ttl + 1  # routers crossed, plus one
            there = self._hops.get(d)
            if d == last:  # where it was sent: nothing to move
                self._known(d, filed=True)
                return None
            if first <= d and there is not None and 0 in there.sent:
                # the scout, stepping meanwhile, got there first: this one is a spare
                self._known(d, filed=False)
                return None
            if first <= d:
                del h.sent[0]
                if not h.sent:
                    del self._hops[last]
                if there is None:
                    there = self._hops[d] = _HopState(d)
                there.sent[0] = None
                self._known(d, filed=True)
                return there, replace(probe, ttl=d)
        if terminal and probe.destination and probe.reply_ttl:
            self._known(max(first, min(hops_from_reply_ttl(probe.reply_ttl), last)), filed=False)
            return None
        if not terminal and probe.kind == "time-exceeded":
            self.distance = "none"  # the route is longer than max_ttl: every TTL is on it
            return None
        self._no_distance()
        return None

    def _known(self, d: int, *, filed: bool) -> None:
        """The destination is at TTL ``d`` on flow 0: the scout goes that far."""
        self.distance, self.distance_ttl, self.distance_filed = "known", d, filed
        self.reach = max(self.reach, d)

    def _no_distance(self) -> None:
        self.distance = "none"
        self.reach = max(self.reach, min(self.first_ttl + self.step - 1, self.max_ttl))

    def _release_held(self) -> None:
        """The distance probe is resolved: what the scout's answers meanwhile would have done
        to the reach, under the rule that now applies."""
        if self._held:
            self._extend_reach(self._held)

    # -- the rules -----------------------------------------------------------------------

    def _resolve(self, ttl: int, flow: int) -> _HopState:
        try:
            self._in_flight.remove((ttl, flow))
        except KeyError:
            raise ValueError(f"no probe (ttl {ttl}, flow {flow}) in flight") from None
        h = self._hops[ttl]
        h.pending.discard(flow)
        self.in_flight -= 1
        return h

    def _counts(self, ttl: int, flow: int) -> bool:
        """Does flow ``flow``'s probe at ``ttl`` count for that hop (the flow had not ended)?"""
        return self.ended.get(flow, _NEVER) >= ttl

    def _eligible(self, ttl: int, flow: int) -> bool:
        """May flow ``flow`` be probed at ``ttl``? Not twice, not past its own end, and -- once
        some flow has ended at or below ``ttl`` -- only if it is known to go on: its probe at
        ``ttl - 1`` came back as a router's answer or as silence. Before any flow ended there,
        flows are sent ahead speculatively (the scout, and the MDA's waves). (At ``ttl``
        itself too: a flow that ended there may have ended lower, answers come in any order.)"""
        h = self._hops.get(ttl)
        if h is not None and flow in h.sent:
            return False
        if not self._counts(ttl, flow):
            return False
        if ttl == self.first_ttl or self._first_end > ttl:
            return True
        prev = self._hops.get(ttl - 1)
        return prev is not None and flow in prev.answers and flow not in prev.terminal

    def _candidates(self, ttl: int, n: int) -> list[int]:
        """The ``n`` lowest flows eligible at ``ttl``: flows are numbered from 0 and reused at
        every TTL (Paris), so flow ``f`` keeps its path and its id."""
        if n <= 0:
            return []
        limit = self.max_flows if self.flows is None else self.flows
        out = []
        for f in range(limit):
            if self._eligible(ttl, f):
                out.append(f)
                if len(out) == n:
                    break
        return out

    def _split(self, h: _HopState) -> tuple[set[IPAddress], set[IPAddress], int]:
        """The hop's counting answers: router interfaces, terminal responders, timeouts."""
        routers: set[IPAddress] = set()
        ends: set[IPAddress] = set()
        silent = 0
        for f, p in h.answers.items():
            if not self._counts(h.ttl, f):
                continue
            if p.addr is None:
                silent += 1
            elif f in h.terminal:
                ends.add(p.addr)
            else:
                routers.add(p.addr)
        return routers, ends, silent

    def _counting_sent(self, h: _HopState) -> int:
        return sum(1 for f in h.sent if self._counts(h.ttl, f))

    def _mda_need(self, h: _HopState) -> int:
        """Counting flows hop ``h`` needs in all, by the answers in so far: exactly ``flows``
        when fixed; none beyond the coverage of the previous hop when only the target answered
        (every flow there arrived: the destination's hop, as scamper's tracelb treats it);
        else -- an unreachable too -- the MDA rule for the interfaces seen (routers and the
        destination alike), capped at ``max_flows``."""
        if self.flows is not None:
            return self.flows
        routers, ends, silent = self._split(h)
        if h.ttl == 1 and self.first_hops is not None:
            seen = len(routers) + len(ends)
            if seen >= self.first_hops:
                return 0  # every next hop the route has answered
            if not seen and not silent:
                return 1  # the scout's answer first
        if self._arrivals_only(h, routers, ends):
            return 0
        return min(mda_probes(max(1, len(routers) + len(ends)), self.confidence), self.max_flows)

    def _arrivals_only(self, h: _HopState, routers: set[IPAddress], ends: set[IPAddress]) -> bool:
        """Did only the target answer at hop ``h`` so far (every flow there arrived)?"""
        return (
            bool(ends)
            and not routers
            and all(p.destination for f, p in h.answers.items() if f in h.terminal)
        )

    def _uncovered(self, h: _HopState) -> list[tuple[IPAddress, list[int]]]:
        """The router interfaces of the hop before ``h`` whose successors at ``h`` nobody has
        seen yet, each with the flows through it not yet probed at ``h``. Every interface at
        ``ttl - 1`` gets a flow through it to ``ttl`` (so a branch that goes on beside one
        that arrived is never cut off); a second try after a timeout, then it is given up."""
        if self.flows is not None or h.ttl == self.first_ttl:
            return []
        if self.stop_at_first_arrival and self._arrivals_only(h, *self._split(h)[:2]):
            return []  # as scamper's tracelb: an arrival settles the destination's hop
        prev = self._hops.get(h.ttl - 1)
        if prev is None:
            return []
        through: dict[IPAddress, list[int]] = {}
        for f, p in prev.answers.items():
            if p.addr is not None and f not in prev.terminal and self._counts(prev.ttl, f):
                through.setdefault(p.addr, []).append(f)
        out = []
        for addr, fs in through.items():
            probed = [f for f in fs if f in h.sent]
            if any(f in h.pending for f in probed):
                continue  # one is on its way
            if any(h.answers[f].addr is not None for f in probed):
                continue
            if len(probed) >= min(2, len(fs)):
                continue
            out.append((addr, [f for f in fs if f not in h.sent]))
        return out

    def _still_wanted(self, h: _HopState, why: int, via: IPAddress | None) -> bool:
        if why == _SCOUT:
            return self._counting_sent(h) == 0
        if why == _MDA:
            return self._counting_sent(h) < self._mda_need(h)
        return any(addr == via for addr, _ in self._uncovered(h))

    def _satisfied(self, h: _HopState) -> bool:
        """Is hop ``h`` settled (every probe sent to it resolved, the rules met)?"""
        if h.pending:
            return False
        if self.flows is not None:
            return not self._candidates(h.ttl, 1)
        if self._counting_sent(h) < self._mda_need(h) and self._candidates(h.ttl, 1):
            return False
        if self._counting_sent(h) == 0 and self._candidates(h.ttl, 1):
            return False
        return not any(fs for _, fs in self._uncovered(h))

    def _open(self, h: _HopState) -> bool:
        """May hop ``h`` get flows beyond its scout? Only once it is known to be on the route
        (a deeper hop answered as a router) or one of its own probes is resolved."""
        return h.ttl <= self.known or bool(h.answers)

    def _extend_reach(self, ttl: int) -> None:
        """When a probe at ``ttl`` is answered by a router or expires: near the deep end of the
        reach, it extends it, so the scout keeps ``reach`` hops ahead, up to ``max_ttl``."""
        step = self.step
        if self.distance == "pending":
            self._held = max(self._held, ttl)  # applied once the distance probe is resolved
            return
        # Once the distance is known, only a router at the deep end itself says the route
        # goes on beyond it (unequal branches; a hint that was short).
        if self.distance == "known":
            deep = ttl >= self.reach
        else:
            deep = ttl > self.reach - max(1, step // 2)
        if deep and self.reach < self.max_ttl:
            self.reach = min(ttl + step, self.max_ttl)

    def _plan(self) -> list[tuple[int, int, int, IPAddress | None]]:
        """The next wave, as ``(ttl, flow, why, via)`` in TTL order: a scout for every TTL
        within reach that has no counting probe yet, and for every open, unsettled hop the
        flows it is short of its quota, and a flow through each interface of the hop before
        whose successors are not seen yet."""
        out: list[tuple[int, int, int, IPAddress | None]] = []
        for ttl in range(self.next_emit, min(self.horizon, self.reach) + 1):
            h = self._hops.get(ttl)
            if h is None or self._counting_sent(h) == 0:
                if h is not None and h.pending:
                    continue  # wait: its probes may yet count
                out.extend((ttl, f, _SCOUT, None) for f in self._candidates(ttl, 1))
                continue
            if not self._open(h):
                continue
            short = self._mda_need(h) - self._counting_sent(h)
            out.extend((ttl, f, _MDA, None) for f in self._candidates(ttl, short))
            taken = {f for t, f, _, _ in out if t == ttl}
            for addr, fs in self._uncovered(h):
                f = next((f for f in fs if f not in taken and self._eligible(ttl, f)), None)
                if f is not None:
                    out.append((ttl, f, _COVER, addr))
                    taken.add(f)
        return out

    def _advance(self, now: float) -> None:
        """Emit, in TTL order, every hop that is settled."""
        while not self.complete:
            ttl = self.next_emit
            h = self._hops.get(ttl)
            if h is None or not self._satisfied(h):
                return
            routers, ends, _ = self._split(h)
            # The route goes on while some flow went on: a router answered (or, with no
            # arrival at this hop, silence).
            last = ttl >= self.max_ttl or (bool(ends) and not routers)
            self._settled.append(self._freeze(h, last))
            self.next_emit += 1
            if last:
                self.horizon = ttl
                self.complete = True
                self.finished_at = now

    def _freeze(self, h: _HopState, last: bool) -> Hop:
        groups: dict[IPAddress, list[TraceProbe]] = {}
        timeouts = 0
        counting: list[TraceProbe] = []
        beyond: list[TraceProbe] = []
        for f, p in h.answers.items():  # in the order answered: responders by first answer
            if not self._counts(h.ttl, f):
                beyond.append(p)
                continue
            counting.append(p)
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
                ends=tuple(p.flow for p in ps if p.flow in h.terminal),
                mpls=tuple(dict.fromkeys(p.mpls for p in ps if p.mpls)),
            )
            for addr, ps in groups.items()
        )
        counting.sort(key=lambda p: p.flow)
        beyond.sort(key=lambda p: p.flow)
        reached = any(p.destination for p in counting)
        mark = next((p.mark for p in counting if p.flow in h.terminal and p.mark), "")
        return Hop(h.ttl, tuple(counting), responders, timeouts, last, reached, mark, tuple(beyond))
