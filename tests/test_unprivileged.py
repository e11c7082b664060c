"""Without CAP_NET_RAW (issue 7): ICMP datagram sockets for ping, clear errors for the rest.

Root with the capability dropped stands in for an ordinary user: `setpriv` removes CAP_NET_RAW
from the bounding set, so raw sockets fail with EPERM while ICMP datagram sockets follow
`net.ipv4.ping_group_range`, which each test sets in the src namespace only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from lab import Lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing"),
]

DROP = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw"]

PING_SCRIPT = """
import json, sys, trio
from netdiag import Ping, Pinger

async def main():
    out = {}
    async with Pinger() as pinger:
        out["mode"] = pinger.mode
        for name in sys.argv[1:]:
            addr, _, ttl = name.partition("@")
            rs = await pinger.collect(Ping(addr, count=3, interval=0.02, expiry=1,
                                           ttl=int(ttl) if ttl else None))
            out[name] = [
                {"kind": r.kind, "ttl": r.ttl, "responder": str(r.responder),
                 "error": r.error.text if r.error else None}
                for r in sorted(rs, key=lambda r: r.seq)
            ]
        out["table"] = len(pinger.engine.table)
    print(json.dumps(out))

trio.run(main)
"""


@pytest.fixture
def ping_group(lab: Lab) -> Iterator[Lab]:
    """Allow ICMP datagram sockets for every group in src, and restore the default after."""
    old = lab.exec("src", "sysctl", "-n", "net.ipv4.ping_group_range").stdout.split()
    lab.exec("src", "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
    try:
        yield lab
    finally:
        lab.exec("src", "sysctl", "-qw", f"net.ipv4.ping_group_range={old[0]} {old[1]}")


def unprivileged(lab: Lab, *argv: str) -> subprocess.CompletedProcess[str]:
    return lab.exec("src", *DROP, sys.executable, *argv, check=False, timeout=60)


def test_raw_sockets_really_are_refused(lab: Lab) -> None:
    code = "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)"
    out = unprivileged(lab, "-c", code)
    assert out.returncode != 0 and "PermissionError" in out.stderr


def test_ping_falls_back_to_datagram_sockets_and_matches_raw(ping_group: Lab) -> None:
    lab = ping_group
    targets = [str(lab.dst.v4), str(lab.dst.v6), f"{lab.dst.v4}@1", f"{lab.dst.v6}@1"]
    out = unprivileged(lab, "-c", PING_SCRIPT, *targets)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["mode"] == "datagram"
    assert got["table"] == 0
    for t in targets[:2]:
        assert [r["kind"] for r in got[t]] == ["reply"] * 3
        assert {r["ttl"] for r in got[t]} == {61}
    # TTL 1: the time-exceeded errors arrive through the socket's error queue, from r1.
    assert {r["responder"] for r in got[f"{lab.dst.v4}@1"]} == {str(lab.r1.v4)}
    assert {r["responder"] for r in got[f"{lab.dst.v6}@1"]} == {str(lab.r1.v6)}
    for t in targets[2:]:
        assert all(r["kind"] == "error" and "Time to live" in r["error"] for r in got[t])

    # The same pings over raw sockets (this process is root) give the same outcomes.
    raw = lab.python("src", "-c", PING_SCRIPT, *targets)
    raw_got = json.loads(raw.stdout)
    assert raw_got["mode"] == "raw"
    for t in targets:
        assert [(r["kind"], r["ttl"], r["responder"]) for r in raw_got[t]] == [
            (r["kind"], r["ttl"], r["responder"]) for r in got[t]
        ]


def test_cli_ping_unprivileged(ping_group: Lab) -> None:
    lab = ping_group
    out = unprivileged(lab, "-m", "netdiag.ping", "-c", "2", "-i", "0.05", str(lab.dst.v6))
    assert out.returncode == 0, out.stderr
    assert "2 packets transmitted, 2 received" in out.stdout and "ttl=61" in out.stdout


def test_privileged_only_mode_refuses_clearly(ping_group: Lab) -> None:
    lab = ping_group
    out = unprivileged(lab, "-m", "netdiag.ping", "--privileged", "-c", "1", str(lab.dst.v4))
    assert out.returncode == 2
    assert "CAP_NET_RAW" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_without_ping_group_both_fixes_are_named(lab: Lab) -> None:
    out = unprivileged(lab, "-m", "netdiag.ping", "-c", "1", str(lab.dst.v4))
    assert out.returncode == 2
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "CAP_NET_RAW" in line and "ping_group_range" in line
    assert "Traceback" not in out.stderr


def test_doctor_reports_what_works(ping_group: Lab) -> None:
    out = unprivileged(ping_group, "-m", "netdiag.doctor", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    checks = {c["name"]: c["ok"] for c in doc["checks"]}
    assert doc["cap_net_raw"] is False
    assert checks["raw ICMP (IPv4)"] is False and checks["raw TCP (IPv6)"] is False
    assert checks["ICMP datagram (IPv4)"] is True and checks["ICMP datagram (IPv6)"] is True
    # Socket filters are not a privilege: doctor attaches one to a UDP socket instead.
    assert checks["kernel filter (IPv4)"] is True and checks["kernel filter (IPv6)"] is True
    assert checks["kernel TX stamps (IPv4)"] is True and checks["kernel TX stamps (IPv6)"] is True
    assert any("CAP_NET_RAW" in tip for tip in doc["advice"])


def test_knock_needs_raw_sockets_and_says_so(lab: Lab) -> None:
    out = unprivileged(lab, "-m", "netdiag.knock", "-c", "1", f"{lab.dst.v4}:80")
    assert out.returncode == 2
    assert "CAP_NET_RAW" in out.stderr
    assert "Traceback" not in out.stderr
