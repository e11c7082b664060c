"""The exporter's scheduler: pure, so fed plain times; and the runner's one timer loop under
trio's MockClock (virtual time: these tests take milliseconds whatever the periods)."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from netdiag.exporter.schedule import Entry, Scheduler, phase_of


def drive(s: Scheduler, until: float, duration: float | dict[Any, float] = 0.0,
          start: float = 0.0) -> list[tuple[float, Any, float]]:  # fmt: skip
    """Run the scheduler like the runner does (sleep to next_wakeup, start what is due,
    finish rounds ``duration`` after they start); return (start, key, slot) per round."""
    now = start
    running: list[tuple[float, Any]] = []
    out = []
    while now <= until:
        for end, key in sorted(running):
            if end <= now:
                s.finished(key, end)
                running.remove((end, key))
        for r in s.due(now):
            out.append((now, r.key, r.slot))
            d = duration.get(r.key, 0.0) if isinstance(duration, dict) else duration
            running.append((now + d, r.key))
        nxt = min([s.next_wakeup(now), *(e for e, _ in running)])
        if math.isinf(nxt):
            break
        now = max(nxt, now + 1e-6)
    return out


def test_phase_is_stable_and_in_range() -> None:
    keys = [("job", f"198.18.{i // 256}.{i % 256}") for i in range(1000)]
    phases = [phase_of(k, 10.0) for k in keys]
    assert phases == [phase_of(k, 10.0) for k in keys]  # no per-process salt
    assert all(0 <= p < 10.0 for p in phases)
    # spread: each tenth of the period holds a similar share of 1000 targets
    deciles = [sum(1 for p in phases if i <= p < i + 1) for i in range(10)]
    assert min(deciles) > 50 and max(deciles) < 150, deciles


def test_rounds_are_spread_over_the_period_not_bursted() -> None:
    s = Scheduler()
    s.set_entries([Entry(("j", str(i)), 1.0) for i in range(1000)], now=0.0)
    rounds = drive(s, until=3.0)
    per_target = {}
    for start, key, slot in rounds:
        assert start == pytest.approx(slot, abs=1e-5)  # on schedule: no rate bound, instant rounds
        per_target.setdefault(key, []).append(start)
    # every target ran about once per second, one second apart
    for starts in per_target.values():
        assert len(starts) in (2, 3)
        assert all(b - a == pytest.approx(1.0) for a, b in itertools.pairwise(starts))
    # no 10 ms window of the second period holds more than a small fraction of the targets
    second = sorted(t for t, _, _ in rounds if 1.0 <= t < 2.0)
    assert len(second) == 1000
    windows = [sum(1 for t in second if w / 100 + 1 <= t < (w + 1) / 100 + 1) for w in range(100)]
    assert max(windows) < 40, max(windows)


def test_slow_round_never_overlaps_its_next_one() -> None:
    s = Scheduler()
    key = ("slow", "t")
    s.set_entries([Entry(key, 1.0), Entry(("fast", "t"), 1.0)], now=0.0)
    rounds = drive(s, until=10.0, duration={key: 2.5, ("fast", "t"): 0.1})
    slow = [start for start, k, _ in rounds if k == key]
    # each round takes 2.5 s: the next starts at the first slot after it ended, never before
    for a, b in itertools.pairwise(slow):
        assert b >= a + 2.5
        assert b - a == pytest.approx(3.0)  # the slot after the end (slots 1 s apart)
    assert s.skipped[key] >= 2 * (len(slow) - 1)
    fast = [start for start, k, _ in rounds if k == ("fast", "t")]
    assert len(fast) == 10  # the other target is not held up


def test_rate_bound_holds_and_rounds_wait_instead_of_dropping() -> None:
    # 200 targets x 10 probes every second = 2000 probes/s wanted; bound at 500/s, burst 50
    s = Scheduler(max_rate=500.0, burst=50.0)
    s.set_entries([Entry(("j", str(i)), 1.0, cost=10) for i in range(200)], now=0.0)
    rounds = drive(s, until=20.0)
    starts = sorted(t for t, _, _ in rounds)
    # probes in any window never exceed rate * window + burst
    for i, t in enumerate(starts):
        j = i
        while j < len(starts) and starts[j] < t + 1.0:
            j += 1
        assert (j - i) * 10 <= 500 * 1.0 + 50 + 1e-9
    # the bound is used, not undershot: ~500 probes/s sustained after the start
    late = [t for t in starts if 5.0 <= t < 15.0]
    assert len(late) * 10 == pytest.approx(500 * 10, rel=0.05)
    assert all(st - slot >= -1e-9 for st, _, slot in rounds)


def test_reload_keeps_slots_of_unchanged_targets() -> None:
    s = Scheduler()
    a, b, c = ("j", "a"), ("j", "b"), ("k", "c")
    s.set_entries([Entry(a, 2.0), Entry(b, 2.0)], now=0.0)
    first = {key: slot for _, key, slot in drive(s, until=1.999)}
    assert set(first) == {a, b}
    # reload at t=2.5: b removed, c added, a unchanged
    s.set_entries([Entry(a, 2.0), Entry(c, 4.0)], now=2.5)
    assert b not in s and len(s) == 2
    later = drive(s, until=12.0, start=2.5)
    a_slots = [slot for _, key, slot in later if key == a]
    assert all((slot - first[a]) / 2.0 == pytest.approx(round((slot - first[a]) / 2.0))
               for slot in a_slots)  # fmt: skip
    assert not any(key == b for _, key, _ in later)
    c_starts = [t for t, key, _ in later if key == c]
    assert c_starts and c_starts[0] >= 2.5
    assert c_starts[0] == pytest.approx(
        phase_of(c, 4.0) + 4.0 * math.ceil((2.5 - phase_of(c, 4.0)) / 4.0)
    )
    # a removed key finishing late is ignored
    assert s.finished(b, 13.0) == math.inf


def test_reload_of_a_running_target_does_not_start_it_twice() -> None:
    s = Scheduler()
    key = ("j", "t")
    s.set_entries([Entry(key, 1.0)], now=0.0)
    now = s.next_wakeup(0.0)
    assert [r.key for r in s.due(now)] == [key]
    s.set_entries([Entry(key, 0.5)], now=now + 0.1)  # period changed while running
    assert s.due(now + 5.0) == []  # still running: nothing due
    nxt = s.finished(key, now + 5.0)
    assert nxt >= now + 5.0
    assert [r.key for r in s.due(nxt)] == [key]


def test_memory_is_bounded_by_targets_not_rounds() -> None:
    s = Scheduler()
    s.set_entries([Entry(("j", str(i)), 0.01) for i in range(50)], now=0.0)
    drive(s, until=10.0)  # 50,000 rounds
    assert s.started >= 49_000
    assert len(s._heap) <= 2 * len(s) + 64  # stale records are compacted away


def test_bad_entries_are_refused() -> None:
    with pytest.raises(ValueError):
        Entry("k", 0.0)
    with pytest.raises(ValueError):
        Scheduler(max_rate=0.0)
    with pytest.raises(ValueError):
        Scheduler().set_entries([Entry("k", 1.0), Entry("k", 2.0)], now=0.0)


# -- the runner's timer loop, in virtual time -------------------------------------------------


class FakePinger:
    """Stands in for Pinger.sweep: every request is answered after ``rtt`` virtual seconds
    (or, for addresses in ``slow``, after ``slow_rtt``), and each call is recorded."""

    def __init__(self, rtt: float = 0.01, slow: set[str] | None = None, slow_rtt: float = 0.0):
        self.rtt, self.slow, self.slow_rtt = rtt, slow or set(), slow_rtt
        self.calls: list[tuple[float, list[str]]] = []
        self.engine = None

    async def sweep(self, targets: list[Any], *, count: int, interval: float, expiry: float,
                    **kw: Any) -> AsyncIterator[Any]:  # fmt: skip
        from netdiag import PingResult

        self.calls.append((trio.current_time(), [str(t) for t in targets]))
        for seq in range(1, count + 1):
            if seq > 1:
                await trio.sleep(interval)
            for t in targets:
                rtt = self.slow_rtt if str(t) in self.slow else self.rtt
                await trio.sleep(rtt)
                yield PingResult(seq, t, "reply", rtt=rtt, responder=t, ttl=64)


def _config(text: str) -> Any:
    import tomllib

    from netdiag.exporter.config import parse

    return parse(tomllib.loads(text), "test.toml")


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.mark.trio
async def test_runner_one_timer_spreads_batches_and_reloads(clock: trio.testing.MockClock) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from netdiag.exporter.runner import Runner

    pinger = FakePinger(slow={"198.18.6.9"}, slow_rtt=3.0)
    runner = Runner(CollectorRegistry(), pinger, None, None)  # type: ignore[arg-type]
    targets = ", ".join(f'"198.18.6.{i}"' for i in range(1, 10))
    runner.apply(_config(f'[[ping]]\nname = "p"\ntargets = [{targets}]\nevery = 2.0\n'
                         'count = 1\nexpiry = 1.0\n'))  # fmt: skip
    base = _count_tasks(trio.lowlevel.current_root_task())
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        peak = 0
        for _ in range(200):  # sample the task tree: one timer, not a task per target
            await trio.sleep(0.05)
            peak = max(peak, _count_tasks(trio.lowlevel.current_root_task()))
        # the timer task, plus two per running batch (the slow target's is nearly always
        # running): well below one task per target (9)
        assert peak - base <= 5, (base, peak)
        starts: dict[str, list[float]] = {}
        for t, addrs in pinger.calls:
            for a in addrs:
                starts.setdefault(a, []).append(t)
        assert set(starts) == {f"198.18.6.{i}" for i in range(1, 10)}
        for a, ts in starts.items():
            gaps = [b - x for x, b in itertools.pairwise(ts)]
            if a == "198.18.6.9":  # 3 s rounds every 2 s: every other slot, never overlapping
                assert gaps and all(g == pytest.approx(4.0, abs=0.01) for g in gaps), gaps
            else:
                assert gaps and all(g == pytest.approx(2.0, abs=0.01) for g in gaps), gaps
        distinct = {round(t, 3) for t, _ in pinger.calls}
        assert len(distinct) >= 5  # spread over the period, not one burst per period
        # reload: drop most targets; series of removed targets go, the kept one stays on slot
        kept = starts["198.18.6.1"][-1]
        runner.apply(_config('[[ping]]\nname = "p"\ntargets = ["198.18.6.1"]\nevery = 2.0\n'
                             'count = 1\nexpiry = 1.0\n'))  # fmt: skip
        n = len(pinger.calls)
        await trio.sleep(6.0)
        later = [t for t, addrs in pinger.calls[n:] for a in addrs]
        assert all(a == "198.18.6.1" for _, addrs in pinger.calls[n:] for a in addrs)
        assert [round((t - kept) / 2.0, 6) % 1 for t in later] == [0.0] * len(later)
        text = _exposition(runner)
        assert 'target="198.18.6.1"' in text and 'target="198.18.6.2"' not in text
        nursery.cancel_scope.cancel()


def _count_tasks(task: Any) -> int:
    return 1 + sum(_count_tasks(t) for n in task.child_nurseries for t in n.child_tasks)


def _exposition(runner: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(runner.metrics.registry).decode()


@pytest.mark.trio
async def test_job_histogram_aggregates_rtts(clock: trio.testing.MockClock) -> None:
    """rtt_histogram = "job": one RTT histogram for the job, counters still per target."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from netdiag.exporter.runner import Runner

    pinger = FakePinger()
    runner = Runner(CollectorRegistry(), pinger, None, None)  # type: ignore[arg-type]
    text = '[[ping]]\nname = "p"\ntargets = ["198.18.6.1", "198.18.6.2"]\nevery = 1.0\n'
    runner.apply(_config(text + 'count = 1\nexpiry = 0.5\nrtt_histogram = "job"\n'))
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await trio.sleep(3.5)
        nursery.cancel_scope.cancel()
    text = _exposition(runner)
    counts = [ln for ln in text.splitlines() if ln.startswith("netdiag_ping_rtt_seconds_count")]
    assert len(counts) == 1 and 'target=""' in counts[0], counts
    assert float(counts[0].split()[-1]) >= 6
    assert text.count("netdiag_ping_sent_total{") == 2


@pytest.mark.trio
async def test_render_by_family_equals_generate_latest() -> None:
    """/metrics renders family by family (checkpoints between): same bytes as one go."""
    pytest.importorskip("hypercorn")
    from prometheus_client import CollectorRegistry, generate_latest

    from netdiag.exporter.http import render
    from netdiag.exporter.metrics import Metrics

    registry = CollectorRegistry()
    m = Metrics(("site",), registry=registry)
    for i in range(50):
        lab = m.labels("p", f"198.18.6.{i}", [("site", "lab")])
        m.ping_round(lab, 4, 3)
        m.knock_result(lab, "open", 0.001, True)
    assert await render(registry) == generate_latest(registry)
