"""UDP traceroute without CAP_NET_RAW (issue 7): the Tracer's datagram mode on the lab.

Every trace here runs in a child process inside src with CAP_NET_RAW removed from its bounding
set (``setpriv``, as tests/test_unprivileged.py does), so raw sockets fail with EPERM and the
Tracer must fall back to ordinary UDP sockets, one per flow, reading ICMP errors from their
error queues. The child prints one JSON document; the checks are made here.

MDA is probabilistic: with two equally likely branches the 95% rule stops after 6 flows that
all took one branch with probability 1/32, so (as tests/test_trace_lab.py does) each run must
obey the rule and among up to three runs one must find both middle routers. A repeated run
first waits out the previous run's linger: the flow-socket count is the Tracer's (all traces,
lingering ones included), so back to back it read 6 + 11 = 17 where one trace used 11 (issue 15).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest
from lab import Lab

from netdiag.wire.trace import mda_probes

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing"),
]

DROP = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw"]

#: argv[1]: JSON {"privileged": None|True|False, "runs": int, "middle": [addr, addr],
#: "trace": {Trace keyword arguments}}. Traces up to "runs" times until both middle routers
#: are found at TTL 2, counting this process's open file descriptors around everything.
SCRIPT = """
import json, os, sys, trio
from netdiag import Trace, Tracer
from netdiag.errors import PrivilegeError

def fds():
    return len(os.listdir("/proc/self/fd"))

async def main():
    args = json.loads(sys.argv[1])
    out = {"fds_before": fds(), "routes": [], "flow_sockets": []}
    trace = Trace(**args["trace"])
    async with Tracer(privileged=args["privileged"]) as t:
        out["mode"] = t.mode
        fam = t._family(":" in trace.addr)
        out["fds_entered"] = fds()
        for run in range(args["runs"]):
            if run:
                # The previous route's flow sockets linger (stragglers count as late), and
                # open_flows counts every trace's: wait them out, so each count is one trace's.
                await trio.sleep(max(2.0, 2 * trace.expiry) + 0.3)
                out["flow_sockets_between_runs"] = getattr(fam, "open_flows", None)
            r = await t.collect(trace)
            out["routes"].append(r.as_dict())
            out["flow_sockets"].append(getattr(fam, "open_flows", None))
            if set(args["middle"]) <= {p["addr"] for p in r.hops[1].as_dict()["probes"]}:
                break
        out["fds_after_routes"] = fds()
        try:
            t.prepare(Trace(trace.addr, proto="icmp"))
            out["icmp"] = "allowed"
        except PrivilegeError as e:
            out["icmp"] = str(e)
        await trio.sleep(max(2.0, 2 * trace.expiry) + 0.3)  # the keys' linger
        out["table"] = len(t.engine.table)
        out["flow_sockets_after_linger"] = getattr(fam, "open_flows", None)
        out["fds_after_linger"] = fds()
        # A trace still lingering when the Tracer closes: its sockets close with it.
        await t.collect(Trace(trace.addr, expiry=0.5, flows=4, max_ttl=2))
    out["fds_after_exit"] = fds()
    print(json.dumps(out))

trio.run(main)
"""


def unprivileged(lab: Lab, *argv: str) -> subprocess.CompletedProcess[str]:
    return lab.exec("src", *DROP, sys.executable, *argv, check=False, timeout=60)


def run_script(lab: Lab, **args: Any) -> dict[str, Any]:
    out = unprivileged(lab, "-c", SCRIPT, json.dumps(args))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def addrs(hop: dict[str, Any]) -> set[str]:
    return {r["addr"] for r in hop["responders"]}


@pytest.mark.parametrize("v", [4, 6])
def test_udp_trace_without_raw_sockets_finds_the_diamond(lab: Lab, v: int) -> None:
    topo = lab.topology
    middle = {str(a) for a in topo.expected_hops("src", "dst", 2, v)}
    assert middle == {str(lab.r2a.addr(v)), str(lab.r2b.addr(v))}
    got = run_script(
        lab,
        privileged=None,
        runs=3,
        middle=sorted(middle),
        trace={"addr": str(lab.dst.addr(v)), "expiry": 1.0},
    )
    assert got["mode"] == "datagram"
    assert "CAP_NET_RAW" in got["icmp"] and "-I" in got["icmp"]
    seen: set[str] = set()
    for r, flows in zip(got["routes"], got["flow_sockets"], strict=True):
        hops = r["hops"]
        assert [h["ttl"] for h in hops] == [1, 2, 3, 4]
        assert addrs(hops[0]) == {str(a) for a in topo.expected_hops("src", "dst", 1, v)}
        for h in hops[1:3]:
            assert addrs(h) and addrs(h) <= {
                str(a) for a in topo.expected_hops("src", "dst", h["ttl"], v)
            }
            # the MDA stopping rule, exactly, with distinct flows (distinct sockets)
            flow_ids = {p["flow"] for p in h["probes"]}
            assert len(flow_ids) == len(h["probes"]) == mda_probes(len(addrs(h)))
            assert {p["kind"] for p in h["probes"]} == {"time-exceeded"}
        last = hops[3]
        assert addrs(last) == {str(lab.dst.addr(v))}
        assert last["reached"] and last["last"] and r["reached"]
        assert {p["kind"] for p in last["probes"]} == {"unreachable"}
        assert all(p["destination"] and p["rtt"] > 0 for p in last["probes"])
        assert all(h["timeouts"] == 0 for h in hops) and r["late"] == 0
        assert not any(h["last"] or h["reached"] for h in hops[:3])
        # One socket per flow, never more than the flows the busiest hop used; all still
        # open right after the trace (the keys linger), none after the linger.
        assert flows == max(len(h["probes"]) for h in hops) <= 64
        seen |= addrs(hops[1])
        if addrs(hops[1]) == middle:
            assert len(addrs(hops[2])) == 2  # both r3 interfaces at TTL 3
    assert seen == middle
    assert got["table"] == 0 and got["flow_sockets_after_linger"] == 0
    assert got.get("flow_sockets_between_runs", 0) == 0
    assert got["fds_after_routes"] > got["fds_entered"]
    assert got["fds_after_linger"] == got["fds_entered"]
    assert got["fds_after_exit"] == got["fds_before"]


def test_fixed_flows_match_the_raw_mode(lab: Lab) -> None:
    """16 fixed flows (miss chance 2 * 2**-16) over v4 and v6: the same hop sets as the raw
    Tracer run as root, and the datagram mode really is forced with privileged=False."""
    for v in (4, 6):
        spec = {"addr": str(lab.dst.addr(v)), "flows": 16, "expiry": 1.0}
        dgram = run_script(lab, privileged=False, runs=1, middle=[], trace=spec)
        raw = json.loads(
            lab.python(
                "src",
                "-c",
                SCRIPT,
                json.dumps({"privileged": True, "runs": 1, "middle": [], "trace": spec}),
            ).stdout
        )
        assert dgram["mode"] == "datagram" and raw["mode"] == "raw"
        d_hops, r_hops = dgram["routes"][0]["hops"], raw["routes"][0]["hops"]
        assert [addrs(h) for h in d_hops] == [addrs(h) for h in r_hops]
        assert len(addrs(d_hops[1])) == 2 and len(addrs(d_hops[2])) == 2
        assert all(len(h["probes"]) == 16 for h in d_hops)
        assert dgram["flow_sockets"] == [16]


@pytest.mark.parametrize("v", [4, 6])
def test_admin_prohibited_ends_with_X(lab: Lab, v: int) -> None:
    rules = f"""
        table inet t {{
            chain forw {{
                type filter hook forward priority 0;
                ip daddr {lab.dst.v4} reject with icmp type admin-prohibited
                ip6 daddr {lab.dst.v6} reject with icmpv6 type admin-prohibited
            }}
        }}"""
    r1 = str(lab.r1.on("src", v))
    lab.nft("r1", rules)
    try:
        got = run_script(
            lab,
            privileged=False,
            runs=1,
            middle=[],
            trace={"addr": str(lab.dst.addr(v)), "expiry": 0.5},
        )
    finally:
        lab.nft_flush("r1")
    (r,) = got["routes"]
    hops = r["hops"]
    assert [h["ttl"] for h in hops] == [1, 2]
    assert addrs(hops[0]) == {r1} and not hops[0]["last"]
    last = hops[1]
    assert addrs(last) == {r1} and last["mark"] == "!X" and last["last"]
    assert not last["reached"] and not r["reached"]
    assert {p["mark"] for p in last["probes"]} == {"!X"}
    assert got["fds_after_exit"] == got["fds_before"]


def test_cli_unprivileged_trace(lab: Lab) -> None:
    out = unprivileged(lab, "-m", "netdiag.trace", "-n", "-q", "8", "-w", "1", str(lab.dst.v6))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"traceroute to {lab.dst.v6}")
    assert len(lines) == 5 and lines[4].split()[:2] == ["4", str(lab.dst.v6)]
    assert str(lab.r1.on("src", 6)) in lines[1]

    forced = unprivileged(
        lab, "-m", "netdiag.trace", "--unprivileged", "-n", "--json", str(lab.dst.v4)
    )
    assert forced.returncode == 0, forced.stderr
    doc = json.loads(forced.stdout)
    assert doc["reached"] and doc["mode"] == "datagram"
    assert [h["ttl"] for h in doc["hops"]] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "argv",
    [
        ["-I"],
        ["-T", "-p", "80"],
        ["--unprivileged", "-I"],
        ["--privileged"],
    ],
)
def test_cli_without_raw_sockets_refuses_clearly(lab: Lab, argv: list[str]) -> None:
    out = unprivileged(lab, "-m", "netdiag.trace", "-n", *argv, str(lab.dst.v4))
    assert out.returncode == 2
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "CAP_NET_RAW" in line
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_raw_mode_is_chosen_when_permitted(lab: Lab) -> None:
    out = lab.python("src", "-m", "netdiag.trace", "-n", "--json", "-q", "2", str(lab.dst.v4))
    assert json.loads(out.stdout)["mode"] == "raw"
