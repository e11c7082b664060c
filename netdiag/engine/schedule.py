"""One scheduler per object: every call's probes leave from one task, paced as one stream.

Before, each ``ping()``/``knock()`` call ran its own sender task: 20,000 concurrent calls were
20,000 tasks, 20,000 cancel scopes and timers, and every call's round left in the same instant,
so 20,000 replies hit the receive buffer at once and the kernel dropped most of them.

Now a call (a :class:`Scheduled` session) only says *when* it next wants to send
(:attr:`Scheduled.due`) and sends what is due when asked (:meth:`Scheduled.step`, plain
synchronous code). The engine's :class:`Scheduler` task keeps one heap of sessions by due time
and, when the earliest is due, lets sessions send in bursts:

* **one pacing mechanism**: rounds are anchored at the moment a call's *first* probe actually
  left, so calls that the scheduler had to spread out (below) stay spread out round after
  round, instead of all leaving in the same instant every ``interval``;
* **backpressure**: after every burst the scheduler yields to the event loop (the receive loops
  drain the sockets) and looks at the receive sockets' queues (``SO_MEMINFO``): while a queue is
  more than a fraction full, or the kernel's drop counter (``SO_RXQ_OVFL``) rose, it waits for
  the receive side instead of sending, and halves its burst (grown back slowly when the
  queues stay short). Sending slows down; replies are not lost to a full buffer;
* **a full send buffer** (``EAGAIN``) makes the session give the probe back (nothing is
  registered for it) and the scheduler wait until the socket is writable;
* **bounded**: a burst is at most :attr:`Scheduler.burst` probes; a session with a long round
  (a sweep of 100,000 targets) sends it burst by burst, interleaved with the others.

Expiry stays the engine's one heap (:mod:`.core`); results go to each call's queue
(:mod:`.session`), which wakes the one task iterating it.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
from typing import TYPE_CHECKING

import trio

from .receive import log

if TYPE_CHECKING:
    from ..sock import ProbeSocket
    from .core import Engine

__all__ = ["Scheduled", "Scheduler"]

#: A session due within this many seconds is served now: sleeping per probe would cost a timer.
SLACK = 0.001
#: Probes sent between two yields to the event loop (and two backlog checks), at most / at least.
MAX_BURST = 256
MIN_BURST = 16
#: A receive queue fuller than this share of its buffer holds the sender back.
BACKLOG_SHARE = 0.25
#: Closed sessions tolerated in the heap before a rebuild is considered.
_COMPACT_AFTER = 1024


class Scheduled:
    """What the scheduler asks of a session (mixed into :class:`~.probe.ProbeSession`)."""

    #: trio time at which the session next wants to send (``inf``: nothing more to send)
    due: float = 0.0
    #: set by :meth:`step` when a send found the socket's buffer full
    blocked: ProbeSocket | None = None
    closed: bool = False

    def step(self, now: float, budget: int) -> int:
        """Send up to ``budget`` probes due at ``now``; update :attr:`due`. Returns the number
        of probes handled (sent or refused). Must not raise for a packet's sake."""
        raise NotImplementedError

    def fail(self, error: Exception) -> None:
        """The session's own code raised: end it with that error."""
        raise NotImplementedError


class Scheduler:
    """The engine's sender task; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._heap: list[tuple[float, int, Scheduled]] = []
        self._counter = itertools.count()
        self._scope: trio.CancelScope | None = None
        self.burst = MAX_BURST
        #: times the sender waited for the receive side (backlog or kernel drops)
        self.held_back = 0
        self._drops = 0
        self._closed = 0  # closed sessions that may still be in the heap

    def add(self, session: Scheduled) -> None:
        """Queue ``session``: the scheduler calls its :meth:`~Scheduled.step` from now on."""
        heap = self._heap
        heapq.heappush(heap, (session.due, next(self._counter), session))
        scope = self._scope
        if scope is not None and session.due < scope.deadline:
            scope.deadline = session.due

    async def run(self) -> None:
        heap = self._heap
        while True:
            if not heap or heap[0][0] > trio.current_time() + SLACK:
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
                self._scope = None
                continue
            now = trio.current_time()
            budget = self.burst
            while heap and budget > 0 and heap[0][0] <= now + SLACK:
                _, _, s = heapq.heappop(heap)
                if s.closed:
                    continue
                try:
                    budget -= s.step(now, budget)
                except Exception as e:  # never let one call take the scheduler down
                    log.exception("sender of %r failed", s)
                    s.fail(e)
                    continue
                blocked = s.blocked
                if blocked is not None:
                    s.blocked = None
                    heapq.heappush(heap, (now, next(self._counter), s))
                    # closed under us: the session's next send says what happened
                    with contextlib.suppress(trio.ClosedResourceError, OSError):
                        await blocked.wait_writable()
                    break
                if s.due != math.inf and not s.closed:
                    heapq.heappush(heap, (s.due, next(self._counter), s))
            await self._pause()

    async def _pause(self) -> None:
        """Between bursts: let the receive loops run, and wait while they are behind."""
        await trio.lowlevel.checkpoint()
        stats = self._engine.stats
        for attempt in itertools.count():
            behind = stats.kernel_drops != self._drops or self._backlogged()
            self._drops = stats.kernel_drops
            if not behind:
                if attempt == 0 and self.burst < MAX_BURST:
                    self.burst = min(MAX_BURST, self.burst + 1 + self.burst // 16)
                return
            if attempt == 0:
                self.held_back += 1
                self.burst = max(MIN_BURST, self.burst // 2)
            if attempt >= 200:  # ~0.2 s: the queue is not draining (nobody reads results?)
                return
            await trio.sleep(0.001)

    def _backlogged(self) -> bool:
        for sock in self._engine.receiving():
            try:
                queued, size = sock.receive_queue()
            except OSError:
                continue
            if queued > size * BACKLOG_SHARE:
                return True
        return False

    def discard(self, session: Scheduled) -> None:
        """``session`` closed: its heap entry is dropped lazily (at its due time), or at once
        when most of a big heap is closed sessions -- a ping with a one-hour interval
        cancelled early must not be held for an hour."""
        self._closed += 1
        heap = self._heap
        if self._closed > _COMPACT_AFTER and 2 * self._closed > len(heap):
            heap[:] = [e for e in heap if not e[2].closed]
            heapq.heapify(heap)
            self._closed = 0

    def close(self) -> None:
        self._heap.clear()
        self._closed = 0
