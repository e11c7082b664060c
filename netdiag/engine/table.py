"""The demux table and its expiry heap: which probe owns which key, and until when.

Pure data structure: no trio, no sockets, no clock reads -- every time is passed in -- so it is
tested by calling it (tests/test_engine_table.py). :class:`~netdiag.engine.core.Engine` wraps one
in a running trio task that calls :meth:`DemuxTable.pop_due` when the earliest deadline passes.

Why expired leases stay: a lease that reaches its deadline is marked expired but keeps its key
until it is released, so a reply arriving after the expiry still finds *its own* probe and is
reported as late -- never credited to a later probe that reuses the key.

Why one heap: a million in-flight probes are a million heap entries, not a million timers or
tasks. Answered or released probes leave the heap lazily (at their deadline), or all at once
when most of a big heap is dead (:meth:`DemuxTable._dead_entry`), so memory stays bounded.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol

from ..errors import KeyInUseError
from ..wire.packet import Packet

__all__ = ["ACTIVE", "EXPIRED", "RELEASED", "DemuxTable", "Lease", "Sink"]

#: Lease states. ACTIVE: waiting for its answer (or answered, with ``deadline == inf``);
#: EXPIRED: its deadline passed unanswered, key kept for late replies; RELEASED: key gone.
ACTIVE, EXPIRED, RELEASED = 0, 1, 2

#: Dead heap entries tolerated before a rebuild is considered (see ``_dead_entry``).
_COMPACT_AFTER = 1024


class Sink(Protocol):
    """What a diagnostic implements to hear about its probes."""

    def on_event(self, lease: Lease, event: Any, packet: Packet) -> None:
        """A packet matched ``lease``'s key (``lease.expired`` tells if it came late)."""

    def on_expire(self, lease: Lease) -> None:
        """``lease`` reached its deadline with no reply that ended it."""


class Lease:
    """A registered demux key: the claim one probe has on the replies that match it.

    ``probe`` is free for the diagnostic (its per-probe state). See the module docstring for why
    a lease stays in the table after it expires.
    """

    __slots__ = ("_table", "deadline", "key", "probe", "sink", "state")

    def __init__(self, table: DemuxTable, key: Hashable, sink: Sink, deadline: float, probe: Any):
        self._table = table
        self.key = key
        self.sink = sink
        self.deadline = deadline
        self.probe = probe
        self.state = ACTIVE

    @property
    def expired(self) -> bool:
        return self.state == EXPIRED

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    def finish(self) -> None:
        """Stop the expiry clock (the probe got its answer) but keep the key registered, so
        duplicates and late copies are still recognised until :meth:`release`."""
        if self.state == ACTIVE and self.deadline != math.inf:
            self._table._dead_entry()
        self.deadline = math.inf

    def release(self) -> None:
        """Remove the key from the table. Idempotent."""
        if self.state != RELEASED:
            dead = self.state == ACTIVE and self.deadline != math.inf
            self.state = RELEASED
            table = self._table
            if table.leases.get(self.key) is self:
                del table.leases[self.key]
            if dead:
                table._dead_entry()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class DemuxTable:
    """Keys to leases, plus one heap of deadlines.

    ``on_earlier_deadline(deadline)`` is called when a registration makes the earliest
    deadline earlier, so whoever sleeps until it (the engine's expiry task) can wake sooner.
    """

    def __init__(self, on_earlier_deadline: Callable[[float], None] | None = None) -> None:
        self.leases: dict[Hashable, Lease] = {}
        self.heap: list[tuple[float, int, Lease]] = []
        self._dead = 0  # heap entries whose lease was answered or released before its deadline
        self._counter = itertools.count()
        self._on_earlier = on_earlier_deadline
        #: leases that reached their deadline unanswered, so far
        self.expired = 0

    def register(self, key: Hashable, sink: Sink, deadline: float, probe: Any = None) -> Lease:
        """Claim ``key`` until ``deadline``. Raises :class:`KeyInUseError` if another live probe
        holds it: two probes that look the same on the wire must never be in flight at once."""
        if key in self.leases:
            raise KeyInUseError(key)
        lease = Lease(self, key, sink, deadline, probe)
        self._insert(lease)
        return lease

    def adopt(self, lease: Lease, key: Hashable, sink: Sink, deadline: float) -> None:
        """:meth:`register` for a lease built by the caller -- a probe that *is* its own lease
        (:class:`~netdiag.engine.probe.Probe`), so a probe in flight is one object, not two."""
        if key in self.leases:
            raise KeyInUseError(key)
        lease._table = self
        lease.key = key
        lease.sink = sink
        lease.deadline = deadline
        lease.state = ACTIVE
        self._insert(lease)

    def _insert(self, lease: Lease) -> None:
        self.leases[lease.key] = lease
        deadline = lease.deadline
        heap = self.heap
        if self._on_earlier is not None and (not heap or deadline < heap[0][0]):
            self._on_earlier(deadline)
        heapq.heappush(heap, (deadline, next(self._counter), lease))

    @property
    def next_deadline(self) -> float:
        """The earliest deadline in the heap (``inf`` when empty). It may belong to a dead
        entry; :meth:`pop_due` then just drops it."""
        return self.heap[0][0] if self.heap else math.inf

    def pop_due(self, now: float) -> Iterator[Lease]:
        """Mark expired, and yield, every active lease whose deadline is ``<= now``. Each is
        marked before it is yielded, so the sink sees ``lease.expired``."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            deadline, _, lease = heapq.heappop(heap)
            if lease.state == ACTIVE and lease.deadline == deadline:
                lease.state = EXPIRED
                self.expired += 1
                yield lease
            else:
                self._dead -= 1

    def clear(self) -> None:
        self.leases.clear()
        self.heap.clear()
        self._dead = 0

    def _dead_entry(self) -> None:
        """A heap entry stopped mattering (answered or released early). Entries leave the heap
        lazily, at their deadline; but when most of a big heap is dead -- 10,000 probes with a
        long expiry cancelled at once, say -- rebuild it now, so their memory is not held until
        deadlines that may be hours away; and drop them all once nothing is active. Amortised
        O(1) per probe."""
        self._dead += 1
        heap = self.heap
        if not self.leases:  # nothing is registered: every entry left is dead
            heap.clear()
            self._dead = 0
        elif self._dead > _COMPACT_AFTER and 2 * self._dead > len(heap):
            heap[:] = [e for e in heap if e[2].state == ACTIVE and e[2].deadline == e[0]]
            heapq.heapify(heap)
            self._dead = 0
