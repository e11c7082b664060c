"""Multipath routes the diamond lab does not have (issue 13), each built by its own module
fixture: branches of unequal length (the long one longer by one hop, and by two), a 4-way
ECMP, and two diamonds in series.

Ground truth is computed in the test, two ways that do not use the MDA:

* from the topology: :meth:`Topology.paths` follows the routes the lab installs (ECMP and the
  unequal-cost overrides), so it knows how many interfaces each TTL has and at which TTLs the
  destination answers (v4: routers answer from the interface the probe came in by, so it also
  knows the addresses);
* by brute force on the wire: 48 fixed flows, each probed at every TTL to its own end
  (``Trace(flows=48, reach=max_ttl)``).

The MDA trace (99 %) must find exactly that -- every interface at every TTL, the destination at
every TTL it is reached at -- in at least one of three runs (a miss in one run is the MDA's
own, bounded probability; tests/test_trace_planner.py checks the rate against the confidence).
Every flow's path must be real: each link the trace reports is one the brute force saw.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from lab import Lab

from netdiag import Trace, Tracer
from netdiag.testing.lab import Topology
from netdiag.trace import TraceResult

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

R = ("r1", "r2a", "r2b", "r3a", "r3b", "r4")

TOPOLOGIES = {
    # src - r1 - {r2a - r3a - r4, r2b - r4} - dst: r4 at TTL 3 and 4, dst at TTL 4 and 5
    "unequal-by-one": Topology.create(
        nodes=("src", "r1", "r2a", "r2b", "r3a", "r4", "dst"),
        routers=("r1", "r2a", "r2b", "r3a", "r4"),
        links=(
            ("r1", "src"),
            ("r1", "r2a"),
            ("r1", "r2b"),
            ("r2a", "r3a"),
            ("r3a", "r4"),
            ("r2b", "r4"),
            ("r4", "dst"),
        ),
        overrides={"r1": {"dst": ("r2a", "r2b")}},
    ),
    # the long branch two hops longer: dst at TTL 4 and 6
    "unequal-by-two": Topology.create(
        nodes=("src", "r1", "r2a", "r2b", "r3a", "r3b", "r4", "dst"),
        routers=("r1", "r2a", "r2b", "r3a", "r3b", "r4"),
        links=(
            ("r1", "src"),
            ("r1", "r2a"),
            ("r1", "r2b"),
            ("r2a", "r3a"),
            ("r3a", "r3b"),
            ("r3b", "r4"),
            ("r2b", "r4"),
            ("r4", "dst"),
        ),
        overrides={"r1": {"dst": ("r2a", "r2b")}, "r2a": {"dst": ("r3a",)}},
    ),
    # r1 - {r2a, r2b, r2c, r2d} - r3 - dst
    "ecmp-4": Topology.create(
        nodes=("src", "r1", "r2a", "r2b", "r2c", "r2d", "r3", "dst"),
        routers=("r1", "r2a", "r2b", "r2c", "r2d", "r3"),
        links=(
            ("r1", "src"),
            *(("r1", r) for r in ("r2a", "r2b", "r2c", "r2d")),
            *((r, "r3") for r in ("r2a", "r2b", "r2c", "r2d")),
            ("r3", "dst"),
        ),
    ),
    # r1 - {r2a, r2b} - r3 - {r4a, r4b} - r5 - dst
    "diamonds-in-series": Topology.create(
        nodes=("src", "r1", "r2a", "r2b", "r3", "r4a", "r4b", "r5", "dst"),
        routers=("r1", "r2a", "r2b", "r3", "r4a", "r4b", "r5"),
        links=(
            ("r1", "src"),
            ("r1", "r2a"),
            ("r1", "r2b"),
            ("r2a", "r3"),
            ("r2b", "r3"),
            ("r3", "r4a"),
            ("r3", "r4b"),
            ("r4a", "r5"),
            ("r4b", "r5"),
            ("r5", "dst"),
        ),
    ),
}


@pytest.fixture(scope="module", params=sorted(TOPOLOGIES))
def mlab(request: pytest.FixtureRequest) -> Iterator[tuple[str, Lab]]:
    """One lab per topology, built when the first test needs it, removed after the module."""
    with Lab(TOPOLOGIES[request.param]) as lab:
        yield request.param, lab


def truth(topo: Topology, v: int) -> tuple[dict[int, int], set[int], dict[int, set]]:
    """From the routes alone: per TTL the number of distinct interfaces, the TTLs the
    destination is reached at, and (v4) the interfaces' addresses."""
    paths = topo.paths("src", "dst", v)  # type: ignore[arg-type]
    at: dict[int, set[tuple[str, str]]] = {}
    for path in paths:
        prev = "src"
        for ttl, node in enumerate(path, start=1):
            at.setdefault(ttl, set()).add((node, prev if node != "dst" else ""))
            prev = node
    counts = {t: len(s) for t, s in at.items()}
    reached = {len(p) for p in paths}
    addrs = {
        t: {topo.node(n).addr(4) if n == "dst" else topo.node(n).on(p, 4) for n, p in s}
        for t, s in at.items()
    }
    return counts, reached, addrs


async def run(lab: Lab, privileged: bool, *traces: Trace) -> list[TraceResult]:
    with lab.enter("src"):
        async with Tracer(privileged=privileged) as t:
            return [await t.collect(tr) for tr in traces]


def hop_sets(r: TraceResult) -> dict[int, set]:
    return {h.ttl: set(h.addrs) for h in r.hops}


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize(
    ("proto", "privileged"),
    [("udp", True), ("tcp", True), ("udp", False)],
    ids=["udp", "tcp", "udp-dgram"],
)
async def test_complete_hop_sets_and_links(
    mlab: tuple[str, Lab], v: int, proto: str, privileged: bool
) -> None:
    name, lab = mlab
    dst = lab.dst.addr(v)  # type: ignore[arg-type]
    counts, reached_at, addrs = truth(lab.topology, v)
    depth = max(reached_at)
    port = 8081 if proto == "tcp" else None  # closed: the destination answers RST
    (brute,) = await run(
        lab, privileged, Trace(dst, proto=proto, port=port, flows=48, reach=10, max_ttl=10)
    )
    want = hop_sets(brute)
    # the brute force agrees with the routes
    assert sorted(want) == list(range(1, depth + 1)), (name, want)
    assert {t: len(s) for t, s in want.items()} == counts, (name, want)
    assert set(brute.arrivals.values()) == reached_at
    if v == 4:
        assert want == addrs
    real_links = {(k.ttl, k.src, k.dst) for k in brute.links}
    for _ in range(3):
        (r,) = await run(lab, privileged, Trace(dst, proto=proto, port=port, confidence=0.99))
        got = hop_sets(r)
        assert all(got[t] <= want.get(t, set()) for t in got), (name, got, want)
        assert {(k.ttl, k.src, k.dst) for k in r.links} <= real_links
        assert r.reached and r.hops[-1].last and r.hops[-1].addrs == {dst}
        if got == want:
            assert set(r.arrivals.values()) == reached_at
            assert r.sent == sum(len(h.probes) + len(h.beyond) for h in r.hops) + len(r.past)
            return
    pytest.fail(f"{name}: three MDA runs at 99 % all missed part of {want}: last {got}")


def test_cli_text_json_and_dot(mlab: tuple[str, Lab]) -> None:
    """The CLI on each topology: the text marks a destination that some flows reached while
    others went on; ``--json`` has every probe (``sent`` = the probes in hops + those past the
    route), ``elapsed`` and the graph; ``--dot`` one node per responder and TTL, an edge per
    link. 16 fixed flows, each to its own end (a branch missed with probability 2**-15 per
    hop), so the three runs see the same graph."""
    _, lab = mlab
    dst = str(lab.dst.addr(4))
    _, reached_at, _ = truth(lab.topology, 4)

    def cli(*flags: str) -> str:
        # -w 3: a probe unanswered within the default 1 s on a loaded machine would leave a
        # responder out of one run and not the others (seen once, under a parallel full run)
        p = lab.exec(
            "src", sys.executable, "-m", "netdiag.trace", "-n", "-q", "16", "-w", "3", *flags, dst
        )
        return p.stdout

    text = cli().splitlines()[1:]
    early = [line for line in text if dst in line and "reached]" in line]
    if len(reached_at) > 1:
        # the first arrival TTL's line shows the destination beside the router that went on
        assert early and early[0].split()[0] == str(min(reached_at))
    else:
        assert not early
    assert text[-1].split()[:2] == [str(max(reached_at)), dst]

    doc = json.loads(cli("--json"))
    in_hops = sum(len(h["probes"]) + len(h["beyond"]) for h in doc["hops"])
    assert doc["sent"] == in_hops + len(doc["past"]) and doc["elapsed"] > 0
    assert set(doc["arrivals"].values()) <= reached_at and doc["reached"]
    assert doc["links"] and all(k["ttl"] < len(doc["hops"]) for k in doc["links"])
    nodes = {(n["ttl"], n["addr"]) for n in doc["nodes"]}
    assert {(k["ttl"], k["src"]) for k in doc["links"]} <= nodes
    assert {(k["ttl"] + 1, k["dst"]) for k in doc["links"]} <= nodes

    dot = cli("--dot")
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    for h in doc["hops"]:
        for r in h["responders"]:
            assert f'"{h["ttl"]}/{r["addr"]}" [label=' in dot
