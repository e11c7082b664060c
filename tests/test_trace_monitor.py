"""The trace in rounds without IO: running statistics, loss attributed by flow, route changes
(netdiag/trace/mtrstats.py), the rounds a Monitor plans on trio's virtual clock
(netdiag/trace/monitor.py), and the mtr-style report (netdiag/trace/report.py)."""

from __future__ import annotations

import ipaddress
import itertools
import math
import statistics
import sys
from dataclasses import replace

import pytest
import trio
import trio.testing

from netdiag import Trace
from netdiag.trace import Hop, TraceProbe, monitor_cli
from netdiag.trace import __main__ as trace_cli
from netdiag.trace.monitor import Monitor, Snapshot
from netdiag.trace.mtrstats import HISTORY, PathStats, RouteChange, RunningStats
from netdiag.trace.report import report_dict, report_lines

A = ipaddress.ip_address
R1, R2A, R2B, R3A, R3B, DST = (
    A(x)
    for x in ("198.18.1.1", "198.18.2.2", "198.18.3.2", "198.18.4.2", "198.18.5.2", "198.18.6.2")
)
TARGET = DST


def hop(ttl: int, answers: dict[int, object], last: bool = False) -> Hop:
    """A hop from ``flow -> addr`` (``None``: timeout); RTT = ttl ms + flow µs."""
    probes = []
    for flow, addr in sorted(answers.items()):
        if addr is None:
            probes.append(TraceProbe(ttl, flow, "timeout"))
        else:
            probes.append(
                TraceProbe(
                    ttl,
                    flow,
                    "time-exceeded",
                    addr,  # type: ignore[arg-type]
                    ttl / 1000 + flow / 1e6,
                    destination=addr == DST,
                    reply_ttl=64 - ttl,
                )
            )
    return Hop(ttl, tuple(probes), (), 0, last, last)


def diamond(lost: frozenset[tuple[int, int]] = frozenset(), down_a: bool = False) -> list[Hop]:
    """Flows 0-3; even flows take branch a, odd ones b (all b when ``down_a``)."""

    def via(flow: int) -> bool:
        return flow % 2 == 0 and not down_a

    def ans(ttl: int, f: int, addr: object) -> object:
        return None if (ttl, f) in lost else addr

    return [
        hop(1, {f: ans(1, f, R1) for f in range(4)}),
        hop(2, {f: ans(2, f, R2A if via(f) else R2B) for f in range(4)}),
        hop(3, {f: ans(3, f, R3A if via(f) else R3B) for f in range(4)}),
        hop(4, {f: ans(4, f, DST) for f in range(4)}, last=True),
    ]


def rows(stats: PathStats) -> dict[tuple[int, object], tuple[int, int]]:
    return {(h.ttl, r.addr): (r.sent, r.received) for h in stats.snapshot() for r in h.responders}


# -- RunningStats ----------------------------------------------------------------------------


def test_running_stats_match_the_statistics_module() -> None:
    xs = [0.010, 0.012, 0.009, 0.030, 0.011, 0.011]
    s = RunningStats()
    for x in xs:
        s.add(x)
    assert s.count == 6
    assert math.isclose(s.mean, statistics.fmean(xs))
    assert math.isclose(s.stdev, statistics.stdev(xs))
    assert (s.last, s.best, s.worst) == (0.011, 0.009, 0.030)
    diffs = [abs(b - a) for a, b in itertools.pairwise(xs)]
    assert math.isclose(s.jitter, statistics.fmean(diffs))
    assert s.jitter_last == 0.0


def test_running_stats_edges() -> None:
    s = RunningStats()
    assert s.stdev == 0.0 and s.last is None
    s.add(0.5)
    assert s.stdev == 0.0 and s.jitter == 0.0 and s.mean == 0.5
    for bad in (float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError):
            s.add(bad)  # type: ignore[arg-type]


# -- PathStats: loss by flow -----------------------------------------------------------------


def test_loss_on_one_branch_shows_on_that_branch_only() -> None:
    st = PathStats()
    st.add_round(diamond())
    # branch a (even flows) loses its probes beyond r2a: hops 3 and 4 of flows 0 and 2
    lossy = frozenset({(3, 0), (4, 2)})
    for _ in range(9):
        assert st.add_round(diamond(lossy)) == []
    got = rows(st)
    assert got[(1, R1)] == (40, 40)
    assert got[(2, R2A)] == (20, 20) and got[(2, R2B)] == (20, 20)
    assert got[(3, R3A)] == (20, 11)  # flow 0's 9 lost at hop 3
    assert got[(3, R3B)] == (20, 20)
    assert got[(4, DST)] == (40, 31)
    (dst,) = [r for h in st.snapshot() if h.ttl == 4 for r in h.responders]
    assert dst.flows == {0: (10, 10), 1: (10, 10), 2: (10, 1), 3: (10, 10)}
    assert dst.loss == pytest.approx(22.5)
    assert all(r.addr is not None for h in st.snapshot() for r in h.responders)


def test_a_timeout_before_any_answer_goes_to_the_unknown_row_or_the_successor() -> None:
    st = PathStats()
    # round 1: flow 2 never answered at hop 3; flow 0 (same r2a) reached R3A
    st.add_round(diamond(frozenset({(3, 2)})))
    got = rows(st)
    assert got[(3, R3A)] == (2, 1)  # flow 2's loss: r2a's successor is R3A
    st2 = PathStats()
    # flows 0 and 2 (all of branch a) silent at hop 3: nobody known beyond r2a -> ???
    st2.add_round(diamond(frozenset({(3, 0), (3, 2)})))
    got2 = rows(st2)
    assert got2[(3, None)] == (2, 0) and got2[(3, R3B)] == (2, 2)
    # a flow unknown at hop 3 and 4: the destination's hop has one responder
    st3 = PathStats()
    st3.add_round(diamond(frozenset({(3, 0), (4, 0)})))
    assert rows(st3)[(4, DST)] == (4, 3)


def test_reply_ttl_mark_history_and_destination() -> None:
    st = PathStats()
    for _ in range(HISTORY + 10):
        st.add_round(diamond(frozenset({(4, 1)})))
    (dst,) = [r for h in st.snapshot() if h.ttl == 4 for r in h.responders]
    assert dst.reply_ttl == 60 and dst.destination
    assert len(dst.history) == HISTORY
    assert dst.history.count(None) == HISTORY // 4


# -- PathStats: route changes ----------------------------------------------------------------


def test_first_round_is_the_baseline_then_a_moved_branch_is_a_change() -> None:
    st = PathStats()
    assert st.add_round(diamond()) == []
    assert st.add_round(diamond()) == []
    changes = st.add_round(diamond(down_a=True))
    assert [(c.ttl, c.appeared, c.vanished) for c in changes] == [
        (2, (), (R2A,)),
        (3, (), (R3A,)),
    ]
    assert changes[0].round == 3 and str(changes[0]) == "round 3 hop 2: -198.18.2.2"
    assert st.add_round(diamond(down_a=True)) == []
    back = st.add_round(diamond())
    assert [(c.ttl, c.appeared, c.vanished) for c in back] == [
        (2, (R2A,), ()),
        (3, (R3A,), ()),
    ]
    # a vanished responder's row stays, inactive, until it comes back
    snap = {(h.ttl, r.addr): r.active for h in st.snapshot() for r in h.responders}
    assert snap[(2, R2A)]


def test_a_route_that_now_ends_earlier_loses_its_deeper_responders() -> None:
    st = PathStats()
    st.add_round(diamond())
    short = diamond()[:2]
    short[1] = replace(short[1], last=True, mark="!N")
    changes = st.add_round(short)
    assert [(c.ttl, set(c.vanished)) for c in changes] == [(3, {R3A, R3B}), (4, {DST})]
    assert [(c.ttl, set(c.appeared)) for c in st.add_round(diamond())] == [
        (3, {R3A, R3B}),
        (4, {DST}),
    ]
    # ending at max_ttl (no mark, not reached) says nothing about deeper hops
    st.add_round(diamond()[:2])
    assert all(r.active for h in st.snapshot() for r in h.responders)


def test_silence_is_a_change_only_after_grace_rounds() -> None:
    st = PathStats(grace=3)
    st.add_round(diamond())
    silent_a = frozenset({(3, 0), (3, 2)})
    assert st.add_round(diamond(silent_a)) == []
    assert st.add_round(diamond(silent_a)) == []
    (c,) = st.add_round(diamond(silent_a))
    assert (c.ttl, c.vanished) == (3, (R3A,))
    # the hop answering nobody at all says nothing about who vanished
    st2 = PathStats(grace=1)
    st2.add_round(diamond())
    assert st2.add_round(diamond(frozenset((3, f) for f in range(4)))) == []


def test_reset_clears_statistics_but_not_the_paths() -> None:
    st = PathStats()
    st.add_round(diamond())
    st.add_round(diamond(frozenset({(3, 0)})))
    st.reset()
    assert st.rounds == 0
    assert all(r.sent == 0 for h in st.snapshot() for r in h.responders)
    assert st.add_round(diamond()) == []  # nothing "appears" again
    assert rows(st)[(3, R3A)] == (2, 2)
    with pytest.raises(ValueError):
        PathStats(grace=0)


def test_memory_is_bounded_over_many_rounds() -> None:
    st = PathStats()
    for i in range(3000):
        # the hop-3 address churns: a new one every 10 rounds
        hops = diamond()
        other = A(f"10.9.{i // 10 // 250}.{i // 10 % 250}")
        hops[2] = hop(3, {0: other, 1: R3B, 2: other, 3: R3B})
        st.add_round(hops)
    snap = st.snapshot()
    assert len(snap[2].responders) <= 32
    assert len(st._paths) == 16


# -- Monitor on the virtual clock ------------------------------------------------------------


async def test_monitor_plans_discovery_then_fixed_flows_and_rediscovers_on_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t = Trace("198.18.6.2", expiry=0.5, max_ttl=30)
    seen: list[tuple[Trace, int, float]] = []
    script = [diamond(), diamond(), diamond(down_a=True), diamond(down_a=True), diamond()]

    async def run_round(rt: Trace, attempt: int) -> list[Hop]:
        seen.append((rt, attempt, trio.current_time()))
        await trio.sleep(0.1)
        return script[len(seen) - 1]

    mon = Monitor(t, rounds=5, every=2.0)
    snaps = [s async for s in mon.run(run_round, TARGET)]
    assert [s.round for s in snaps] == [1, 2, 3, 4, 5]
    assert [s.discovery for s in snaps] == [True, False, False, True, False]
    assert [a for _, a, _ in seen] == [0, 1, 2, 3, 4]
    starts = [at - seen[0][2] for _, _, at in seen]
    assert starts == pytest.approx([0, 2, 4, 6, 8])
    first, fixed = seen[0][0], seen[1][0]
    assert first == t
    assert (fixed.flows, fixed.max_ttl, fixed.reach, fixed.first_ttl) == (4, 4, 4, 1)
    assert snaps[2].changes and not snaps[3].changes
    assert [c.round for c in snaps[4].events] == [3, 3, 5, 5]
    assert snaps[-1].reached and snaps[-1].flows == 4
    doc = snaps[-1].as_dict()
    assert doc["round"] == 5 and doc["hops"][1]["responders"][0]["addr"] == "198.18.2.2"


async def test_monitor_rediscovers_when_a_round_ends_short_and_every_n(
    autojump_clock: trio.testing.MockClock,
) -> None:
    short = diamond()[:3]
    script = [diamond(), short, diamond(), diamond(), diamond(), diamond()]
    kinds: list[bool] = []

    async def run_round(rt: Trace, attempt: int) -> list[Hop]:
        kinds.append(rt.flows is None)
        return script[len(kinds) - 1]

    mon = Monitor(Trace("198.18.6.2"), rounds=6, every=0.5, rediscover=4)
    async for _ in mon.run(run_round, TARGET):
        pass
    # 1 discovery; 2 ends short -> 3 discovery; 4 reaches -> round 4 is the 4th -> 5 discovery
    assert kinds == [True, False, True, False, True, False]


def test_monitor_checks_its_arguments() -> None:
    t = Trace("198.18.6.2")
    with pytest.raises(TypeError):
        Monitor("198.18.6.2")  # type: ignore[arg-type]
    for kw in ({"rounds": 0}, {"every": -1.0}, {"every": 0.001}, {"rediscover": 0}):
        with pytest.raises(ValueError):
            Monitor(t, **kw)  # type: ignore[arg-type]


async def test_reset_during_a_run(autojump_clock: trio.testing.MockClock) -> None:
    async def run_round(rt: Trace, attempt: int) -> list[Hop]:
        return diamond()

    mon = Monitor(Trace("198.18.6.2"), rounds=4, every=1.0)
    sent = []
    async for snap in mon.run(run_round, TARGET):
        sent.append(snap.hops[0].responders[0].sent)
        if snap.round == 2:
            mon.reset()
    assert sent == [4, 8, 4, 8]


# -- report ----------------------------------------------------------------------------------


def _snapshot(n: int = 3) -> Snapshot:
    st = PathStats()
    st.add_round(diamond())
    for _ in range(n - 1):
        st.add_round(diamond(frozenset({(3, 0)})))
    st.add_round(diamond(down_a=True))
    return Snapshot(TARGET, "udp", 33434, n + 1, False, 4, True, st.snapshot(), (), (), 0.01, 0.0)


def test_report_is_mtr_like_with_ecmp_siblings_indented() -> None:
    lines = report_lines(_snapshot(), host="src", start="2026-12-02T05:00:00+0000")
    assert lines[0] == "Start: 2026-12-02T05:00:00+0000"
    assert lines[1].startswith("Target: 198.18.6.2 (udp port 33434), 4 rounds, 4 flows")
    head = lines[2].split()
    assert head == ["HOST:", "src", "Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev"]
    body = lines[3:]
    assert body[0].startswith("  1.|-- 198.18.1.1 ")
    assert body[1].startswith("  2.|-- 198.18.2.2 (gone) ")
    assert body[2].startswith("    |   198.18.3.2 ")
    r3a = body[3].split()
    assert r3a[:3] == ["3.|--", "198.18.4.2", "(gone)"] and r3a[3:5] == ["33.3%", "6"]
    assert body[5].split()[1:4] == ["198.18.6.2", "0.0%", "16"]
    cols = {len(line) for line in lines[2:]}
    assert len(cols) == 1  # one column grid
    doc = report_dict(_snapshot(), host="src")
    assert doc["host"] == "src" and doc["hops"][2]["responders"][0]["loss"] == pytest.approx(
        100 / 3
    )


def test_cli_count_needs_rounds_and_live_needs_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        trace_cli.main(["-c", "3", "127.0.0.1"])
    assert e.value.code == 2
    assert "-c applies to --report and --live" in capsys.readouterr().err
    monkeypatch.setattr(monitor_cli, "live_available", lambda: False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    with pytest.raises(SystemExit) as e:
        trace_cli.main(["--live", "127.0.0.1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "netdiag[tui]" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        trace_cli.main(["--live", "--report", "127.0.0.1"])
    assert e.value.code == 2
    capsys.readouterr()
    for argv, msg in (
        (["--rediscover", "5", "127.0.0.1"], "--rediscover applies to --report and --live"),
        (["-r", "--rediscover", "0", "127.0.0.1"], "rediscover"),
    ):
        with pytest.raises(SystemExit) as e:
            trace_cli.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1


def test_cli_rediscover_reaches_the_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    class Stop(Exception):
        pass

    def monitor(trace: Trace, **kw: object) -> None:
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(monitor_cli, "Monitor", monitor)
    with pytest.raises(Stop):
        trace_cli.main(["-r", "-c", "4", "-i", "0.5", "--rediscover", "3", "-n", "127.0.0.1"])
    assert seen == {"rounds": 4, "every": 0.5, "rediscover": 3}


# -- the live view's rendering (rich, from the test extra) -----------------------------------


def test_live_render_and_sparkline() -> None:
    from rich.console import Console

    from netdiag.trace.live import render, sparkline

    line = sparkline([0.001, None, 0.002, 0.003])
    assert line.plain == "▁·▄█"
    assert sparkline([0.002, 0.002]).plain == "▁▁"
    assert len(sparkline([0.001] * 50).plain) == 20
    snap = _snapshot()
    console = Console(width=140, record=True, color_system=None)
    console.print(render(snap, numeric=True, paused=True, host="src"))
    text = console.export_text()
    assert "round 4, 4 flows/hop" in text and "[PAUSED]" in text
    assert "└ 198.18.3.2" in text and "198.18.4.2 (gone)" in text
    assert "Route changes:" not in text  # no events in this snapshot
    assert "q quit" in text
    changed = replace(snap, events=(RouteChange(3, 2, (), (R2A,)), RouteChange(4, 3, (R3B,))))
    console = Console(width=140, record=True, color_system=None)
    console.print(render(changed, numeric=True, paused=False, host="src"))
    text = console.export_text()
    assert "round 3 hop 2: -198.18.2.2" in text and "round 4 hop 3: +198.18.5.2" in text
    assert "PAUSED" not in text
