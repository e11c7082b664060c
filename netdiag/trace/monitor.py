"""A trace repeated in rounds, as mtr does, over fixed Paris flows: :class:`Monitor`.

:meth:`Tracer.monitor <netdiag.Tracer.monitor>` runs it; this module holds the part that
decides what each round sends and what a round's hops mean, so it is tested with fabricated
rounds on trio's virtual clock (``tests/test_trace_monitor.py``).

**Rounds.** The first round is an ordinary MDA trace (the *discovery*): it finds every branch,
and the number of flows it needed at its widest hop, ``N``. Every following round sends flows
``0 .. N-1`` through every TTL up to where the discovery ended, all at once. The flows are the
*same* flows every round (the Tracer keeps their ids -- source ports, echo identifiers --
reserved for the whole monitor; only the probe ids change between rounds), so flow ``f``
follows one path, round after round: a probe of it that is not answered is lost *on that
path*, and loss on one ECMP branch shows on that branch's responders only
(:mod:`netdiag.trace.mtrstats`). The discovery runs again every ``rediscover`` rounds, after
a round that showed a route change, and after a round that ended otherwise than the discovery
(at another TTL, reached or not, another unreachable mark).

Memory stays bounded however long it runs: running statistics per responder, a fixed
history per row, at most ``MAX_EVENTS`` route changes remembered.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from ..validate import check_float, check_int
from ..wire.trace import MAX_ATTEMPT
from .mtrstats import HopSnapshot, PathStats, RouteChange
from .options import Trace
from .results import Hop

__all__ = ["MAX_EVENTS", "Monitor", "RoundRunner", "Snapshot"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Route changes a monitor remembers (the latest).
MAX_EVENTS = 64

#: Runs one round: ``(trace, attempt) -> hops``. ``attempt`` (0..MAX_ATTEMPT, cycling) goes
#: into the probe ids, so a round's keys differ from the previous rounds' lingering ones.
RoundRunner = Callable[[Trace, int], Awaitable[list[Hop]]]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The statistics after round ``round`` (from 1; statistics count from the last reset).

    ``discovery`` says this round was an MDA trace; ``flows`` is the number of fixed flows
    the rounds send through every hop; ``changes`` are the route changes this round showed,
    ``events`` the latest ones of the whole run (oldest first). ``reached``: the target
    answered this round. ``elapsed`` is this round's duration in seconds, ``at`` the wall
    clock (``time.time()``) at its end.
    """

    target: IPAddress
    protocol: str
    port: int
    round: int
    discovery: bool
    flows: int
    reached: bool
    hops: tuple[HopSnapshot, ...]
    changes: tuple[RouteChange, ...]
    events: tuple[RouteChange, ...]
    elapsed: float
    at: float

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--report --json`` prints, with the host)."""
        return {
            "target": str(self.target),
            "protocol": self.protocol,
            "port": self.port if self.protocol != "icmp" else None,
            "round": self.round,
            "discovery": self.discovery,
            "flows": self.flows,
            "reached": self.reached,
            "elapsed": self.elapsed,
            "at": self.at,
            "hops": [h.as_dict() for h in self.hops],
            "changes": [c.as_dict() for c in self.changes],
            "events": [c.as_dict() for c in self.events],
        }


class Monitor:
    """A trace repeated in rounds (see the module docstring).

    ``rounds``: how many (``None``: until cancelled). ``every``: seconds from the start of one
    round to the start of the next (a round that takes longer is followed at once).
    ``rediscover``: run the MDA discovery again every this many rounds (``None``: only after a
    route change). ``grace``: silent rounds after which a responder counts as vanished
    (:class:`~netdiag.trace.mtrstats.PathStats`).

    Keep the object to control a running monitor: :meth:`reset` clears the statistics (mtr's
    ``r`` key), :attr:`stats` and :attr:`events` are readable at any time.
    """

    def __init__(
        self,
        trace: Trace,
        *,
        rounds: int | None = None,
        every: float = 1.0,
        rediscover: int | None = None,
        grace: int = 8,
    ) -> None:
        if not isinstance(trace, Trace):
            raise TypeError(f"expected a netdiag.Trace, got {trace!r}")
        if rounds is not None:
            check_int("rounds", rounds, 1, 2**31)
        check_float("every", every, 0.0, 86400.0)
        # A round's probe ids carry the round number modulo MAX_ATTEMPT + 1; a finished round's
        # keys linger max(2 s, 2 x expiry) (trace/session.py), so they must not come round again
        # before that.
        linger = max(2.0, 2 * trace.expiry)
        if every * (MAX_ATTEMPT + 1) <= linger:
            raise ValueError(
                f"every must exceed {linger / (MAX_ATTEMPT + 1):.4f} s with expiry "
                f"{trace.expiry} s (probe ids of a round must not meet those of round "
                f"{MAX_ATTEMPT + 1} rounds earlier)"
            )
        if rediscover is not None:
            check_int("rediscover", rediscover, 1, 2**31)
        self.trace = trace
        self.rounds = rounds
        self.every = float(every)
        self.rediscover = rediscover
        self.stats = PathStats(grace)
        self.events: deque[RouteChange] = deque(maxlen=MAX_EVENTS)
        #: rounds run so far (not reset by :meth:`reset`)
        self.round = 0
        self.flows = 0
        self._depth = trace.max_ttl

    def reset(self) -> None:
        """Clear the statistics; keep what is known of the paths and the events."""
        self.stats.reset()

    def round_trace(self, discovery: bool) -> Trace:
        """What the next round sends: the MDA trace itself, or the fixed flows up to where the
        discovery ended, every TTL at once."""
        t = self.trace
        if discovery:
            return t
        depth = max(self._depth, t.first_ttl)
        return replace(t, flows=self.flows, max_ttl=depth, reach=depth - t.first_ttl + 1)

    async def run(
        self, run_round: RoundRunner, target: IPAddress, port: int | None = None
    ) -> AsyncIterator[Snapshot]:
        """Run the rounds through ``run_round``; yield a :class:`Snapshot` after each."""
        t = self.trace
        discover = True
        discovered_end: tuple[int, bool, str] | None = None
        while self.rounds is None or self.round < self.rounds:
            start = trio.current_time()
            attempt = self.round % (MAX_ATTEMPT + 1)
            hops = await run_round(self.round_trace(discover), attempt)
            self.round += 1
            reached = any(h.reached for h in hops)
            end = (hops[-1].ttl, reached, hops[-1].mark) if hops else None
            if discover:
                widest = max((len(h.probes) for h in hops), default=1)
                self.flows = min(t.flows or widest, t.max_flows)
                self._depth = hops[-1].ttl if hops else t.max_ttl
                discovered_end = end
            changes = self.stats.add_round(hops)
            self.events.extend(changes)
            was_discovery = discover
            discover = (
                (not was_discovery and bool(changes))
                or (not was_discovery and end != discovered_end)
                or (self.rediscover is not None and self.round % self.rediscover == 0)
            )
            now = trio.current_time()
            yield Snapshot(
                target,
                t.proto,
                t.dport if port is None else port,
                self.round,
                was_discovery,
                self.flows,
                reached,
                self.stats.snapshot(),
                tuple(changes),
                tuple(self.events),
                now - start,
                time.time(),
            )
            if self.rounds is not None and self.round >= self.rounds:
                break
            await trio.sleep_until(start + self.every)
