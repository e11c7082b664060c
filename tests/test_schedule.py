"""One scheduler per object (issue 12): every call's probes leave from the engine's one sender.

The scheduler alone, with fake sessions and a fake engine (no sockets, trio's MockClock): it
serves every session, interleaves them, survives a failing one, and holds back while the
receive side is behind. Then the real thing on loopback: thousands of concurrent ``ping()``
calls and a knock sweep, with no false loss, no task per call, and few reserved ports.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import os
from collections.abc import Callable

import pytest
import trio
import trio.testing

from netdiag import Knock, Knocker, Ping, Pinger
from netdiag.engine.receive import EngineStats
from netdiag.engine.schedule import MAX_BURST, Scheduled, Scheduler

privileged = pytest.mark.privileged


class FakeSession(Scheduled):
    """``count`` probes, one per ``interval`` (all at once when 0), recorded with their time
    (and their place in the order of all sends)."""

    order = itertools.count()

    def __init__(self, name: str, count: int, interval: float = 0.0) -> None:
        self.name = name
        self.count = count
        self.interval = interval
        self.sent: list[float] = []
        self.places: list[int] = []
        self.due = -math.inf
        self.closed = False
        self.error: Exception | None = None

    def step(self, now: float, budget: int) -> int:
        n = 0
        while n < budget and len(self.sent) < self.count:
            self.sent.append(now)
            self.places.append(next(self.order))
            n += 1
            if self.interval:
                break
        if len(self.sent) >= self.count:
            self.due = math.inf
        else:
            self.due = now + self.interval
        return n

    def fail(self, error: Exception) -> None:
        self.error = error
        self.due = math.inf


class FakeSocket:
    """A receive socket whose queue is as full as ``fill()`` says."""

    def __init__(self, fill: Callable[[], int], size: int = 1000) -> None:
        self.fill = fill
        self.size = size
        self.closed = False

    def receive_queue(self) -> tuple[int, int]:
        return self.fill(), self.size


class FakeEngine:
    def __init__(self, sockets: list[FakeSocket] | None = None) -> None:
        self.stats = EngineStats()
        self.sockets = sockets or []

    def receiving(self) -> list[FakeSocket]:
        return self.sockets


async def _serve(scheduler: Scheduler, sessions: list[FakeSession], until: float = 60) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run)
        for s in sessions:
            scheduler.add(s)
        with trio.fail_after(until):
            while any(s.due != math.inf for s in sessions):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


def test_every_session_is_served_interleaved_and_on_its_schedule() -> None:
    async def main() -> None:
        scheduler = Scheduler(FakeEngine())  # type: ignore[arg-type]
        sessions = [FakeSession(f"s{i}", 3, 0.2) for i in range(1000)]
        big = FakeSession("sweep", 5000)  # one long round, sent burst by burst
        await _serve(scheduler, [*sessions, big])
        assert all(len(s.sent) == 3 for s in sessions)
        assert len(big.sent) == 5000
        for s in sessions:  # rounds 0.2 s apart, anchored at the call's own first send
            assert s.sent[1] - s.sent[0] == pytest.approx(0.2, abs=0.01)
            assert s.sent[2] - s.sent[0] == pytest.approx(0.4, abs=0.01)
        # the long round did not hold the small calls back until it was done
        assert max(s.places[0] for s in sessions) < big.places[-1]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_failing_session_does_not_stop_the_others() -> None:
    class Broken(FakeSession):
        def step(self, now: float, budget: int) -> int:
            raise RuntimeError("bug in a diagnostic")

    async def main() -> None:
        scheduler = Scheduler(FakeEngine())  # type: ignore[arg-type]
        broken, fine = Broken("broken", 3), FakeSession("fine", 3, 0.1)
        await _serve(scheduler, [broken, fine])
        assert isinstance(broken.error, RuntimeError)
        assert len(fine.sent) == 3

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_sending_waits_while_the_receive_queue_is_full() -> None:
    """A queue over a quarter full holds the sender back and shrinks its bursts; it goes on
    once the receive side caught up."""
    checks = 0

    def fill() -> int:
        nonlocal checks
        checks += 1
        return 900 if checks <= 20 else 0  # behind for the first 20 looks

    async def main() -> None:
        scheduler = Scheduler(FakeEngine([FakeSocket(fill)]))  # type: ignore[arg-type]
        s = FakeSession("sweep", 10 * MAX_BURST)
        start = trio.current_time()
        await _serve(scheduler, [s])
        assert len(s.sent) == 10 * MAX_BURST
        assert scheduler.held_back >= 1
        # nothing after the first burst left before the queue drained (~20 ms of waiting)
        assert s.sent[MAX_BURST] - start >= 0.015
        assert scheduler.burst <= MAX_BURST  # grown back, never past the cap

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_rising_kernel_drops_slow_the_sender() -> None:
    engine = FakeEngine()

    class Dropping(FakeSession):
        def step(self, now: float, budget: int) -> int:
            engine.stats.kernel_drops += 1 if len(self.sent) < 4 * MAX_BURST else 0
            return super().step(now, budget)

    async def main() -> None:
        scheduler = Scheduler(engine)  # type: ignore[arg-type]
        s = Dropping("sweep", 8 * MAX_BURST)
        await _serve(scheduler, [s])
        assert len(s.sent) == 8 * MAX_BURST
        assert scheduler.held_back >= 3

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- the real thing on loopback ---------------------------------------------------------------


def _loopback(n: int, base: str = "127.3.0.1") -> list[ipaddress.IPv4Address]:
    first = int(ipaddress.IPv4Address(base))
    return [ipaddress.IPv4Address(first + i) for i in range(n)]


@privileged
async def test_thousands_of_concurrent_pings_lose_nothing_and_run_no_task_each() -> None:
    n = 2000
    got: list[float | None] = []
    async with Pinger(privileged=True) as pinger:
        engine = pinger.engine
        own = set(engine.nursery.child_tasks)

        async def one(addr: ipaddress.IPv4Address) -> None:
            got.extend([rtt async for rtt in pinger.ping(Ping(addr, count=3, interval=0.05))])

        async with trio.open_nursery() as nursery:
            for a in _loopback(n):
                nursery.start_soon(one, a)
            await trio.sleep(0.02)
            assert set(engine.nursery.child_tasks) == own  # no sender task per call
        assert len(got) == 3 * n
        assert None not in got  # every request answered: no false loss
        assert engine.stats.kernel_drops == 0
        assert engine.table == {}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@privileged
async def test_knocks_to_different_destinations_share_reserved_ports() -> None:
    """600 SYNs in flight at once (300 addresses x 2 closed ports) hold a handful of ports,
    not 600 descriptors; every 4-tuple is still unique, and everything is released after."""
    hosts = _loopback(300, "127.4.0.1")
    pairs = [(h, p) for h in hosts for p in (9, 19)]
    async with Knocker() as knocker:
        before = _fds()
        peak_ports = peak_fds = 0
        seen: set[tuple[int, object, int]] = set()
        async for r in knocker.sweep(pairs, count=1, expiry=5):
            peak_ports = max(peak_ports, len(knocker.reserved_ports()))
            peak_fds = max(peak_fds, _fds() - before)
            assert r.kind == "closed", r
            seen.add((r.sport, r.addr, r.port))
        assert len(seen) == len(pairs)
        assert 1 <= peak_ports <= 8 and peak_fds <= 8
        assert knocker.reserved_ports() == set()
        assert _fds() == before
        assert knocker.engine.table == {}
        # a knock that runs on still works on the same pool, and a new port is bound for a
        # second probe in flight to the same destination
        results = await knocker.collect(Knock("127.4.0.1", 9, count=2, interval=0))
        assert {r.kind for r in results} == {"closed"}
        assert len({r.sport for r in results}) == 2


def test_closed_sessions_do_not_stay_in_the_heap_until_their_due_time() -> None:
    """3,000 calls due in an hour, closed now: the heap lets go of them without waiting."""
    scheduler = Scheduler(FakeEngine())  # type: ignore[arg-type]
    sessions = [FakeSession(f"s{i}", 3, 3600.0) for i in range(3000)]
    for s in sessions:
        s.due = 3600.0
        scheduler.add(s)
    for s in sessions[:2900]:
        s.closed = True
        scheduler.discard(s)
    assert len(scheduler._heap) < 3000 // 2
    assert {e[2].name for e in scheduler._heap} >= {s.name for s in sessions[2900:]}
