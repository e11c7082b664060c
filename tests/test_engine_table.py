"""The demux table and its expiry heap, and the first/duplicate/late verdict: pure, no trio.

Every time is passed in, so expiry order, lazy heap removal and compaction are checked by
calling the table directly.
"""

from __future__ import annotations

import ast
import inspect
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netdiag.engine import DemuxTable, Lease, Verdict, verdict
from netdiag.errors import KeyInUseError


class Sink:
    def on_event(self, lease: Lease, event: Any, packet: Any) -> None:
        pass

    def on_expire(self, lease: Lease) -> None:
        pass


SINK = Sink()


def test_table_and_verdict_modules_import_no_trio() -> None:
    """The package's __init__ imports the trio parts; these modules themselves must not."""
    import netdiag.engine.table as table
    import netdiag.engine.verdict as v

    for mod in (table, v):
        tree = ast.parse(inspect.getsource(mod))
        names = {
            a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for a in node.names
        }
        mods = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "trio" not in names and "trio" not in mods, mod.__name__


def test_register_rejects_a_live_key_and_release_frees_it() -> None:
    t = DemuxTable()
    lease = t.register("k", SINK, 10.0)
    with pytest.raises(KeyInUseError):
        t.register("k", SINK, 20.0)
    lease.release()
    lease.release()  # idempotent
    assert t.leases == {}
    t.register("k", SINK, 30.0)


def test_due_leases_expire_in_deadline_order_once() -> None:
    t = DemuxTable()
    late = t.register("late", SINK, 3.0)
    early = t.register("early", SINK, 1.0)
    answered = t.register("answered", SINK, 0.5)
    answered.finish()
    assert list(t.pop_due(0.9)) == []
    assert [lease.key for lease in t.pop_due(1.0)] == ["early"]
    assert early.expired and not late.expired
    assert [lease.key for lease in t.pop_due(10.0)] == ["late"]
    assert list(t.pop_due(100.0)) == []
    # Expired leases keep their keys until released: a late reply finds its own probe.
    assert set(t.leases) == {"late", "early", "answered"}
    assert t.expired == 2


def test_earlier_deadline_is_announced() -> None:
    seen: list[float] = []
    t = DemuxTable(seen.append)
    t.register("a", SINK, 5.0)
    t.register("b", SINK, 7.0)  # later than the earliest: nothing to announce
    t.register("c", SINK, 2.0)
    assert seen == [5.0, 2.0]
    assert t.next_deadline == 2.0


def test_empty_table_has_no_deadline() -> None:
    assert DemuxTable().next_deadline == math.inf


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(1.0, 1000.0), st.sampled_from(["keep", "finish", "release"])),
        min_size=1,
        max_size=3000,
    )
)
def test_heap_compaction_never_loses_a_live_deadline(plan: list[tuple[float, str]]) -> None:
    """Answered and released probes leave the heap (bounded memory), but every probe still
    active expires exactly once, at its deadline."""
    t = DemuxTable()
    leases = [t.register(i, SINK, d) for i, (d, _) in enumerate(plan)]
    for lease, (_, what) in zip(leases, plan, strict=True):
        if what == "finish":
            lease.finish()
        elif what == "release":
            lease.release()
    live = sum(1 for _, what in plan if what == "keep")
    assert len(t.heap) <= live + 1024 + 1
    expired = [lease.key for lease in t.pop_due(math.inf)]
    assert sorted(expired) == [i for i, (_, what) in enumerate(plan) if what == "keep"]
    deadlines = [plan[k][0] for k in expired]
    assert deadlines == sorted(deadlines)
    for lease in leases:
        lease.release()
    assert t.leases == {} and t.heap == []


@pytest.mark.parametrize(
    ("expired", "answered", "want"),
    [
        (False, False, Verdict.FIRST),
        (False, True, Verdict.DUPLICATE),
        (True, False, Verdict.LATE),
        (True, True, Verdict.LATE),
    ],
)
def test_verdict(expired: bool, answered: bool, want: Verdict) -> None:
    assert verdict(expired, answered) is want
