"""The trace in rounds in the namespace lab: loss injected on one ECMP branch shows on that
branch's responders only (numbers checked against the nftables counters), a branch taken away
mid-run is a route change, the --report CLI, and the --live view in a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import trio
from lab import PROJECT_ROOT, Lab

from netdiag import Trace, Tracer
from netdiag.trace.monitor import Snapshot

pytestmark = pytest.mark.privileged

# Every second UDP packet r2a forwards is dropped; the first rule counts them all. ICMP (the
# answers, whichever branch they return by) passes.
DROP_HALF = """
table inet t {
    chain fw {
        type filter hook forward priority 0;
        meta l4proto udp counter
        meta l4proto udp numgen inc mod 2 == 0 counter drop
    }
}"""


def nft_counters(lab: Lab, node: str) -> list[int]:
    """The packet counts of ``node``'s rules, in order."""
    doc = json.loads(lab.exec(node, "nft", "-j", "list", "ruleset").stdout)
    out = []
    for item in doc["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                out.append(expr["counter"]["packets"])
    return out


async def monitor(lab: Lab, trace: Trace, rounds: int, every: float = 0.05) -> list[Snapshot]:
    with lab.enter("src"):  # the sockets open on entry: in src
        async with Tracer() as tracer:
            return [s async for s in tracer.monitor(trace, rounds=rounds, every=every)]


@pytest.mark.parametrize("v", [4, 6])
async def test_loss_on_one_branch_shows_on_its_responders_only(clean_lab: Lab, v: int) -> None:
    lab = clean_lab
    lab.nft("r2a", DROP_HALF)
    # 16 flows, not the MDA: its 95 % confidence misses a branch one run in 30
    snaps = await monitor(lab, Trace(lab.dst.addr(v), expiry=0.3, flows=16), rounds=10)
    forwarded, dropped = nft_counters(lab, "r2a")
    last = snaps[-1]
    assert last.round == 10 and last.reached and last.flows == 16
    rows = {(h.ttl, r.addr): r for h in last.hops for r in h.responders}
    r1 = lab.r1.on("src", v)
    r2a, r2b = lab.r2a.on("r1", v), lab.r2b.on("r1", v)
    r3a, r3b = lab.r3.on("r2a", v), lab.r3.on("r2b", v)
    dst = lab.dst.addr(v)
    named = {k for k in rows if k[1] is not None}
    assert named == {(1, r1), (2, r2a), (2, r2b), (3, r3a), (3, r3b), (4, dst)}
    # Nothing lost before r2a forwards, nor on branch b.
    for key in [(1, r1), (2, r2a), (2, r2b), (3, r3b)]:
        assert rows[key].received == rows[key].sent > 0, key
    assert rows[(3, r3a)].received < rows[(3, r3a)].sent
    flows_a = set(rows[(2, r2a)].flows)
    flows_b = set(rows[(2, r2b)].flows)
    assert flows_a and flows_b and not flows_a & flows_b
    # Per flow: those through r2b lose nothing anywhere. (A first-round probe lost before its
    # flow was ever answered at a hop is on that hop's ??? row; only flows of branch a.)
    deep = [r for (ttl, _), r in rows.items() if ttl >= 3]
    for r in deep:
        for f, (sent, received) in r.flows.items():
            assert f in flows_a or sent == received, (r.ttl, r.addr, f)
    unknown = rows.get((3, None))
    assert unknown is None or set(unknown.flows) <= flows_a
    # Every probe lost is one r2a dropped: it forwarded the probes of branch a beyond TTL 2
    # and dropped every second one. Only the first round's scout probes beyond the destination
    # (at most reach = 8, none of them reported) are not in the table.
    sent_a = sum(c[0] for r in deep for f, c in r.flows.items() if f in flows_a)
    lost_a = sum(c[0] - c[1] for r in deep for f, c in r.flows.items() if f in flows_a)
    assert dropped in (forwarded // 2, (forwarded + 1) // 2)
    assert lost_a <= dropped <= lost_a + 8
    assert sent_a <= forwarded <= sent_a + 8
    assert 40.0 <= 100 * lost_a / sent_a <= 60.0
    assert sum(r.sent - r.received for r in rows.values()) == lost_a
    # Loss is not a route change.
    assert not any(s.changes for s in snaps)


async def test_taking_a_branch_away_is_a_route_change(clean_lab: Lab) -> None:
    lab = clean_lab
    r3a = lab.r3.on("r2a")
    changes = []
    with lab.enter("src"):
        async with Tracer() as tracer:
            async for snap in tracer.monitor(
                Trace(lab.dst.v4, expiry=0.3, flows=16), rounds=40, every=0.1
            ):
                if snap.round == 3:
                    await trio.to_thread.run_sync(lab.set_link, "r2a", "r3", False)
                changes += snap.changes
                if any(r3a in c.vanished for c in changes):
                    break
    assert changes and all(c.round > 3 for c in changes)
    (gone,) = [c for c in changes if r3a in c.vanished]
    assert gone.ttl == 3
    # the row stays, inactive, with its statistics
    rows = {(h.ttl, r.addr): r for h in snap.hops for r in h.responders}
    assert not rows[(3, r3a)].active and rows[(3, r3a)].received > 0


def test_report_cli(clean_lab: Lab) -> None:
    lab = clean_lab
    lab.nft("r2a", DROP_HALF)
    r = lab.python(
        "src", "-m", "netdiag.trace", "--report", "-c", "4", "-n", "-q", "16",
        "-w", "0.3", "-i", "0.05",
        str(lab.dst.v4), check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Start: ")
    assert "4 rounds" in lines[1]
    assert lines[2].split()[2:] == ["Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev"]
    table = {ln.split()[-8]: ln.split()[-7] for ln in lines[3:] if "%" in ln}
    assert table[str(lab.r2a.on("r1"))] == "0.0%" and table[str(lab.r2b.on("r1"))] == "0.0%"
    assert table[str(lab.r3.on("r2b"))] == "0.0%" and table[str(lab.r3.on("r2a"))] != "0.0%"
    assert any(ln.startswith("    |   198.18.") for ln in lines)  # an ECMP sibling
    j = lab.python(
        "src", "-m", "netdiag.trace", "-r", "-c", "2", "-n", "-q", "16", "--json",
        "-w", "0.3", "-i", "0.05",
        str(lab.dst.v4), check=False,
    )  # fmt: skip
    doc = json.loads(j.stdout)
    assert doc["round"] == 2 and doc["reached"] and doc["target"] == str(lab.dst.v4)
    hop2 = {r["addr"] for h in doc["hops"] if h["ttl"] == 2 for r in h["responders"]}
    assert hop2 == {str(lab.r2a.on("r1")), str(lab.r2b.on("r1"))}


def test_live_without_a_terminal_prints_a_report_per_round(lab: Lab) -> None:
    r = lab.python(
        "src", "-m", "netdiag.trace", "--live", "-c", "3", "-n", "-w", "0.3", "-i", "0.05",
        str(lab.dst.v4), check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    heads = [ln for ln in r.stdout.splitlines() if ln.startswith("Target: ")]
    assert [h.split(", ")[1] for h in heads] == ["1 round", "2 rounds", "3 rounds"]


def test_report_ctrl_c_prints_what_was_measured(lab: Lab) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    argv = ["ip", "netns", "exec", lab.ns("src"), sys.executable, "-m", "netdiag.trace", "-r",
            "-c", "100000", "-n", "-i", "0.1", "-w", "0.3", str(lab.dst.v4)]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        time.sleep(2.0)  # a few rounds
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    (target,) = [ln for ln in out.splitlines() if ln.startswith("Target: ")]
    rounds = int(target.split(", ")[1].split()[0])
    assert 1 <= rounds < 100000
    assert any(ln.startswith("HOST:") for ln in out.splitlines())
    assert str(lab.dst.v4) in out and "Traceback" not in err


# -- the live view in a real terminal ----------------------------------------------------


class Tmux:
    """A tmux server inside a lab namespace running one command in a 150x30 terminal."""

    def __init__(self, lab: Lab, node: str, command: str) -> None:
        self.lab, self.node = lab, node
        self.sock = f"ndmon{os.getpid()}-{time.monotonic_ns()}"
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", "150", "-y", "30", command)

    def tmux(self, *args: str) -> str:
        return self.lab.exec(self.node, "tmux", "-L", self.sock, *args).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def wait_for(self, what: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if what in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{what!r} never appeared; screen:\n{text}")
            time.sleep(0.1)

    def close(self) -> None:
        self.lab.exec(self.node, "tmux", "-L", self.sock, "kill-server", check=False)


@pytest.fixture
def live(lab: Lab) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (.ci/run installs it)")
    cmd = (
        # (pytest's COLUMNS would override the terminal's width for rich)
        f"unset COLUMNS LINES; PYTHONPATH={PROJECT_ROOT} {sys.executable} -m netdiag.trace "
        "--live -n -q 16 -w 0.3 -i 0.3 "
        f"{lab.dst.v4}; echo EXIT=$?; sleep 60"
    )
    t = Tmux(lab, "src", cmd)
    try:
        yield t
    finally:
        t.close()


def _rows(screen: str) -> dict[str, list[str]]:
    out = {}
    for line in screen.splitlines():
        words = line.replace("└", " ").split()
        for i, w in enumerate(words):
            if w.startswith("198.18.") and i + 2 < len(words):
                out[w] = words[i + 1 : i + 3]  # Loss%, Snt
    return out


def test_live_view_updates_and_q_quits(live: Tmux, lab: Lab) -> None:
    first = live.wait_for("round 2,")
    rows = _rows(first)
    for addr in (lab.r1.on("src"), lab.r2a.on("r1"), lab.r2b.on("r1"), lab.dst.v4):
        assert str(addr) in rows, first
    assert "Hop" in first and "Loss%" in first and "Keys:" in first
    later = live.wait_for("round 4,")
    before, after = int(rows[str(lab.dst.v4)][1]), int(_rows(later)[str(lab.dst.v4)][1])
    assert after > before  # Snt grows: the statistics update
    live.tmux("send-keys", "p")
    assert "[PAUSED]" in live.wait_for("PAUSED")
    live.tmux("send-keys", "q")
    done = live.wait_for("EXIT=")
    assert "EXIT=0" in done and "HOST:" not in done  # q quits without a report


def test_live_view_ctrl_c_prints_the_report(live: Tmux, lab: Lab) -> None:
    live.wait_for("round 2,")
    live.tmux("send-keys", "C-c")
    done = live.wait_for("EXIT=")
    assert "EXIT=0" in done
    lines = done.splitlines()
    (head,) = [ln for ln in lines if ln.startswith("HOST:")]
    assert head.split()[2:] == ["Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev"]
    assert any(str(lab.r2b.on("r1")) in ln for ln in lines)
    assert "Keys:" not in done  # the full-screen view is gone
