"""The exporter's recurring schedule, as pure logic: it is told the time, it answers which rounds
are due. No trio, no clock of its own -- so it is unit-tested with plain numbers, and the runner
drives it with one timer for all targets (``sleep_until(next_wakeup())``), not a task or a timer
per target.

Rules, for thousands of targets:

- **Spread.** Each entry (a job's target) has a stable phase in ``[0, every)`` derived from a
  hash of its key, and its rounds are due at ``phase + k * every``. Targets of one job are thus
  scattered over the period instead of all firing together, and an entry keeps its slots across
  reloads and restarts (the phase depends on the key and the period only).
- **No overlap.** A round still running when its next slot comes skips that slot (counted in
  :attr:`Scheduler.skipped`); the next round starts at the first slot after the running one
  finished.
- **Bounded rate.** Every round costs the probes it sends (:attr:`Entry.cost`); a token bucket
  of ``max_rate`` tokens per second (burst :attr:`Scheduler.burst`) pays for it. A due round
  that cannot be paid waits (it is late, see :attr:`Round.lateness`), so the probe rate never
  exceeds ``max_rate`` on average and the burst at any instant.
- **Bounded memory.** State is one record per entry plus a heap whose stale records are
  compacted away: nothing grows with time or with rounds.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

__all__ = ["Entry", "Round", "Scheduler", "phase_of"]


@dataclass(frozen=True, slots=True)
class Entry:
    """Something to run every ``every`` seconds: ``key`` identifies it (``(job, target)``),
    ``cost`` is the probes one round sends, ``group`` lets the runner batch due rounds (a
    job's ping rounds due together become one sweep)."""

    key: Hashable
    every: float
    cost: int = 1
    group: Hashable = None

    def __post_init__(self) -> None:
        if not self.every > 0 or math.isinf(self.every):
            raise ValueError(f"every must be > 0 seconds, got {self.every!r}")
        if self.cost < 0:
            raise ValueError(f"cost must be >= 0, got {self.cost!r}")


@dataclass(frozen=True, slots=True)
class Round:
    """A round the runner must start now: ``slot`` is when it was due, ``lateness`` how much
    later than that it starts (waiting for rate tokens, or a late wake-up)."""

    entry: Entry
    slot: float
    start: float

    @property
    def key(self) -> Hashable:
        return self.entry.key

    @property
    def lateness(self) -> float:
        return max(0.0, self.start - self.slot)


def phase_of(key: Hashable, every: float) -> float:
    """A stable offset in ``[0, every)`` for ``key`` (same in every process: not ``hash()``,
    which is salted per process for strings)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * every


class _State:
    __slots__ = ("entry", "gen", "next_slot", "phase", "running")

    def __init__(self, entry: Entry, phase: float) -> None:
        self.entry = entry
        self.phase = phase
        self.next_slot = math.inf
        self.running = False
        self.gen = 0


class Scheduler:
    """Which rounds are due, given the time. See the module docstring for the rules.

    ``max_rate`` is probes per second (``None``: unbounded); ``burst`` the tokens the bucket
    holds, by default a tenth of a second's worth (at least the largest round's cost, so every
    round can be paid).
    """

    def __init__(self, max_rate: float | None = None, burst: float | None = None) -> None:
        if max_rate is not None and not max_rate > 0:
            raise ValueError(f"max_rate must be > 0, got {max_rate!r}")
        self.max_rate = max_rate
        self._burst = burst
        self._states: dict[Hashable, _State] = {}
        self._heap: list[tuple[float, int, int, Hashable]] = []  # (slot, seq, gen, key)
        self._seq = 0
        self._tokens = 0.0
        self._tokens_at: float | None = None
        self._largest = 1  # the largest cost of one round (the bucket must hold it)
        #: slots skipped because the previous round was still running, per key (cleared when
        #: the key goes away, so it stays bounded)
        self.skipped: dict[Hashable, int] = {}
        #: rounds handed out so far
        self.started = 0

    # -- configuration ---------------------------------------------------------------------

    @property
    def burst(self) -> float:
        if self.max_rate is None:
            return math.inf
        base = self._burst if self._burst is not None else self.max_rate * 0.1
        return max(base, float(self._largest))

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._states

    def entries(self) -> list[Entry]:
        return [s.entry for s in self._states.values()]

    def set_entries(self, entries: Iterable[Entry], now: float) -> None:
        """Replace the schedule (a reload). Entries whose key and period are unchanged keep
        their slot and their running state; new ones get their first slot after ``now``;
        removed ones are forgotten (a running round of theirs is ignored when it finishes)."""
        new: dict[Hashable, Entry] = {}
        for e in entries:
            if e.key in new:
                raise ValueError(f"duplicate schedule key {e.key!r}")
            new[e.key] = e
        for key in list(self._states):
            if key not in new:
                del self._states[key]
                self.skipped.pop(key, None)
        for key, e in new.items():
            st = self._states.get(key)
            if st is not None and st.entry.every == e.every:
                st.entry = e  # cost or group may change; the slot does not
                continue
            running = st.running if st is not None else False
            st = self._states[key] = _State(e, phase_of(key, e.every))
            st.running = running
            self._plan(st, now)
        self._largest = max((e.cost for e in new.values()), default=1)
        self._compact(force=False)

    def _plan(self, st: _State, after: float) -> None:
        """Put ``st``'s next slot at the first ``phase + k * every`` strictly after ``after``
        (or at ``after`` exactly if that is a slot)."""
        every = st.entry.every
        k = math.ceil((after - st.phase) / every)
        slot = st.phase + k * every
        if slot < after:  # float rounding
            slot += every
        st.next_slot = slot
        st.gen += 1
        self._seq += 1
        heapq.heappush(self._heap, (slot, self._seq, st.gen, st.entry.key))

    def _compact(self, force: bool) -> None:
        if force or len(self._heap) > 2 * len(self._states) + 64:
            self._heap = [
                item
                for item in self._heap
                if (st := self._states.get(item[3])) is not None and st.gen == item[2]
            ]
            heapq.heapify(self._heap)

    # -- running ---------------------------------------------------------------------------

    def _head(self) -> tuple[float, _State] | None:
        """The earliest live heap record, dropping stale ones."""
        while self._heap:
            slot, _, gen, key = self._heap[0]
            st = self._states.get(key)
            if st is None or st.gen != gen or st.running:
                # a running entry is re-planned when it finishes
                heapq.heappop(self._heap)
                continue
            return slot, st
        return None

    def _refill(self, now: float) -> None:
        if self.max_rate is None:
            return
        if self._tokens_at is None:
            self._tokens, self._tokens_at = self.burst, now
            return
        if now > self._tokens_at:
            self._tokens = min(self.burst, self._tokens + (now - self._tokens_at) * self.max_rate)
            self._tokens_at = now

    def due(self, now: float) -> list[Round]:
        """Every round to start at ``now``: due, not running, and paid for. They are marked
        running; call :meth:`finished` for each when it ends."""
        out: list[Round] = []
        self._refill(now)
        while (head := self._head()) is not None:
            slot, st = head
            if slot > now:
                break
            cost = st.entry.cost
            if self.max_rate is not None and cost > self._tokens:
                break  # wait for tokens; next_wakeup says until when
            heapq.heappop(self._heap)
            self._tokens -= cost if self.max_rate is not None else 0
            st.running = True
            st.gen += 1
            out.append(Round(st.entry, slot, now))
        self.started += len(out)
        return out

    def finished(self, key: Hashable, now: float) -> float:
        """The round of ``key`` ended at ``now``: plan its next slot, skipping the slots that
        passed while it ran (no overlap, no catch-up burst). Returns that slot (``inf`` for a
        key no longer scheduled), so a driver knows whether to wake earlier than it planned."""
        st = self._states.get(key)
        if st is None or not st.running:
            return math.inf
        st.running = False
        passed = st.next_slot + st.entry.every
        if now > passed:
            missed = int((now - st.next_slot) // st.entry.every)
            self.skipped[key] = self.skipped.get(key, 0) + missed
        self._plan(st, max(now, st.next_slot + st.entry.every * 0.5))
        self._compact(force=False)
        return st.next_slot

    def next_wakeup(self, now: float) -> float:
        """When :meth:`due` may next return something (``inf`` if nothing is scheduled or
        everything is running)."""
        head = self._head()
        if head is None:
            return math.inf
        slot, st = head
        if self.max_rate is None:
            return slot
        self._refill(now)
        lack = st.entry.cost - self._tokens
        paid = now + lack / self.max_rate if lack > 0 else now
        return max(slot, paid)

    def is_running(self, key: Hashable) -> bool:
        st = self._states.get(key)
        return st is not None and st.running
