"""No cross-talk (issue 6): iputils ping, system traceroute, another netdiag process and two
Pingers plus a Tracer in this process all probe the same target at once; every raw socket sees
everyone's replies, and nobody may be credited with someone else's."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import trio
from lab import Lab

from netdiag import Ping, Pinger, Trace, Tracer

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        shutil.which("ping") is None or shutil.which("traceroute") is None,
        reason="needs iputils ping and traceroute",
    ),
]


def _spawn(lab: Lab, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("src"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("v", [4, 6])
async def test_everyone_probing_one_target_gets_only_their_own_answers(lab: Lab, v: int) -> None:
    dst = str(lab.dst.v4 if v == 4 else lab.dst.v6)
    others = [
        _spawn(lab, "ping", f"-{v}", "-c", "60", "-i", "0.01", "-s", "56", dst),
        _spawn(lab, "traceroute", f"-{v}", "-n", "-q", "3", "-w", "1", dst),
        _spawn(lab, sys.executable, "-m", "netdiag.ping", "-c", "60", "-i", "0.01", "--json", dst),
    ]
    try:
        with lab.enter("src"):
            async with Pinger() as a, Pinger() as b, Tracer() as tracer:
                # The kernel filter keeps other processes' replies out of a Pinger (issue 12):
                # give b a's identifier block, so a and b do hear each other and must tell
                # replies apart by their tokens.
                b._ident_pool.base = a._ident_pool.base
                b._kernel_filter(b._ident_pool.range)
                results: dict[str, list] = {}

                async def ping(name: str, pinger: Pinger) -> None:
                    results[name] = await pinger.collect(Ping(dst, count=60, interval=0.01))

                async def trace() -> None:
                    results["trace"] = [h async for h in tracer.results(Trace(dst, flows=4))]

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ping, "a", a)
                    nursery.start_soon(ping, "b", b)
                    nursery.start_soon(trace)
                # Both Pingers saw the other processes' and each other's replies and refused
                # them: that is what makes the zero-cross-talk assertion below meaningful.
                assert a.foreign + a.engine.stats.unmatched > 0
                assert b.foreign + b.engine.stats.unmatched > 0
                for p in (a, b):  # all else that passed the filter was refused
                    st = p.engine.stats
                    assert st.received == 60 + p.foreign + st.unmatched + st.ignored, st
    finally:
        outs = []
        for p in others:
            try:
                out, _ = p.communicate(timeout=60)
            finally:
                if p.returncode is None:
                    p.kill()
            outs.append(out)

    for name in ("a", "b"):
        rs = results[name]
        assert sorted(r.seq for r in rs) == list(range(1, 61)), name
        assert all(r.kind == "reply" and not r.duplicate and not r.late for r in rs), name
        assert all(str(r.responder) == dst for r in rs)
    hops = results["trace"]
    assert hops[-1].reached and hops[-1].ttl == 4
    assert all(str(x) == dst for x in hops[-1].addrs)

    iputils, system_trace, other_netdiag = outs
    assert re.search(r"60 packets transmitted, 60 received, 0% packet loss", iputils)
    assert "DUP!" not in iputils
    assert re.search(rf"^ 4  {re.escape(dst)} ", system_trace, re.M), system_trace
    stats = json.loads(other_netdiag)["pings"][0]["stats"]
    assert (stats["sent"], stats["received"], stats["duplicates"], stats["late"]) == (60, 60, 0, 0)
