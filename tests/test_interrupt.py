"""Interrupted runs count honestly (issue 15 item 1): requests that left but were still waiting
for their answer when Ctrl-C came are *sent* (and lost), as iputils counts them.

Each CLI runs in the lab's src namespace against dst, which counts and drops every probe with
nftables; SIGINT arrives while requests are outstanding; the summary's "sent" must equal the
number of probes that reached dst (the lab loses nothing on the way).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab import PROJECT_ROOT, Lab

pytestmark = pytest.mark.lab

#: Probes dst counts and drops: echo requests and TCP SYNs to port 9.
RULES = """
table inet interrupt {
  counter probes { }
  chain input {
    type filter hook input priority 0;
    icmp type echo-request counter name probes drop;
    icmpv6 type echo-request counter name probes drop;
    tcp dport 9 tcp flags syn counter name probes drop;
  }
}
"""


def _counted(lab: Lab) -> int:
    out = lab.exec("dst", "nft", "-j", "list", "counter", "inet", "interrupt", "probes").stdout
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError(out)


def _interrupted(lab: Lab, after: float, *argv: str) -> str:
    """Run a CLI in src and interrupt it once at least ``after`` / 0.2 s worth of probes (3 or
    more) reached dst -- whatever a loaded machine makes of start-up time -- so requests are
    outstanding when SIGINT comes (their -W is 5 s, the interval 0.2 s)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("src"), sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    want = max(3, round(after / 0.2))
    try:
        deadline = time.monotonic() + 30
        while _counted(lab) < want and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert "Traceback" not in err, err
    return out


@pytest.mark.parametrize("v", [4, 6])
def test_ping_counts_outstanding_requests_as_sent(clean_lab: Lab, v: int) -> None:
    lab = clean_lab
    lab.nft("dst", RULES)
    dst = str(lab.dst.v4 if v == 4 else lab.dst.v6)
    out = _interrupted(lab, 2.0, "-m", "netdiag.ping", "-i", "0.2", "-W", "5", "-c", "100", dst)
    m = re.search(r"(\d+) packets transmitted, 0 received, 100% packet loss", out)
    assert m, out
    sent = int(m.group(1))
    assert sent >= 3  # every one of them was still waiting: none had expired yet
    assert sent == _counted(lab)


def test_ping_json_counts_outstanding_requests(clean_lab: Lab) -> None:
    lab = clean_lab
    lab.nft("dst", RULES)
    out = _interrupted(
        lab, 1.5, "-m", "netdiag.ping", "--json", "-i", "0.2", "-W", "5", "-c", "100",
        str(lab.dst.v4),
    )  # fmt: skip
    stats = json.loads(out)["pings"][0]["stats"]
    assert stats["sent"] == stats["pending"] == _counted(lab) >= 3
    assert stats["loss"] == 1.0


def test_mass_ping_counts_outstanding_requests(clean_lab: Lab, tmp_path: Path) -> None:
    lab = clean_lab
    lab.nft("dst", RULES)
    targets = tmp_path / "targets"
    targets.write_text(f"{lab.dst.v4}\n{lab.dst.v6}\n")
    flag = "--file" if "--file" in _help() else "-f"
    out = _interrupted(
        lab, 1.5, "-m", "netdiag.ping", "-c", "100", "-i", "0.2", "-W", "5", flag, str(targets)
    )
    sent = [int(m.group(1)) for m in re.finditer(r"xmt/rcv/%loss = (\d+)/0/100%", out)]
    assert len(sent) == 2 and min(sent) >= 3, out
    assert sum(sent) == _counted(lab)


def _help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "netdiag.ping", "--help"], capture_output=True, text=True
    ).stdout


def test_knock_counts_outstanding_syns_as_sent(clean_lab: Lab) -> None:
    lab = clean_lab
    lab.nft("dst", RULES)
    out = _interrupted(
        lab, 1.5, "-m", "netdiag.knock", "-i", "0.2", "-W", "5", "-c", "100",
        f"{lab.dst.v4}:9",
    )  # fmt: skip
    m = re.search(r"(\d+) probes sent, 0 open, 0 closed, 0 filtered, (\d+) unanswered", out)
    assert m, out
    assert int(m.group(1)) == int(m.group(2)) == _counted(lab) >= 3
