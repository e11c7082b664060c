"""When a sender may send its next probe: rounds on a fixed schedule, an optional rate cap."""

from __future__ import annotations

import trio

__all__ = ["Pacer"]

#: A sender ahead of schedule by less than this sends at once: sleeping per probe would cost a
#: cancel scope and a timer each.
_SLACK = 0.001


class Pacer:
    """When a session's sender may send its next probe.

    Round ``i`` starts ``i * interval`` after the first; within a round, probes leave back to
    back, or ``rate`` per second when given. The sender sleeps only when it is ahead of
    schedule by more than a millisecond, and otherwise yields to the event loop every ``burst``
    probes so the receive loops drain replies while a big batch goes out. :attr:`now` is trio's
    clock as of the last wait: good enough for deadlines, and one clock read per burst instead
    of per probe.
    """

    def __init__(self, interval: float, rate: float | None = None, burst: int = 64) -> None:
        self.interval = interval
        self.gap = 1.0 / rate if rate else 0.0
        self.burst = burst
        self.start = self.now = trio.current_time()
        self._next = self.start
        self._unyielded = 0

    async def round(self, i: int) -> None:
        """Wait for round ``i`` (0-based) to begin."""
        if i:
            due = self.start + i * self.interval
            self.now = trio.current_time()
            if due > self.now:
                await trio.sleep_until(due)
                self.now = trio.current_time()
                self._unyielded = 0
            self._next = max(self._next, self.now)

    async def probe(self) -> None:
        """Wait until the next probe may leave."""
        if self.gap:
            self._next += self.gap
            self.now = trio.current_time()
            if self._next - self.now > _SLACK:
                await trio.sleep_until(self._next)
                self.now = trio.current_time()
                self._unyielded = 0
        elif self._unyielded >= self.burst:
            await trio.lowlevel.checkpoint()
            self.now = trio.current_time()
            self._unyielded = 0
        self._unyielded += 1

    def waited(self) -> None:
        """The sender blocked elsewhere (a full socket buffer): refresh the clock."""
        self.now = trio.current_time()
        self._unyielded = 0
