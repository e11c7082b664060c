"""The Tracer on the namespace lab: src -> r1 -> {r2a | r2b} -> r3 -> dst.

Hop sets are compared with the topology (``lab.expected_hops``). Why some checks are the way
they are:

* **MDA is probabilistic by design.** With two equally likely branches, the 95% rule stops after
  6 flows if all 6 took the same branch, which happens with probability 2 * 2**-6 = 1/32. So each
  run must be consistent with the rule (one router at TTL 2 => exactly 6 flows there, two =>
  at least 11), and among up to three runs with fresh flows at least one must find both routers
  (a miss then has probability 2**-15; a tracer that does not vary its flows fails every time).
* **ICMP is not spread by this kernel.** With ``fib_multipath_hash_policy=1`` Linux hashes the
  addresses, the protocol and the L4 ports found by the flow dissector; ICMP has no ports (the
  dissector reports 0), so the echo identifier and checksum do not enter the hash and every ICMP
  flow from src to dst takes the same branch. The test asserts exactly that: one router at TTL 2,
  the same one in every run. (Balancers that hash the first transport bytes -- the ones Paris
  traceroute measured -- do spread ICMP flows; the unit tests check our flows differ there.)
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import trio
from lab import Lab

from netdiag import Trace, Tracer
from netdiag.trace import TraceResult
from netdiag.wire.checksum import checksum
from netdiag.wire.trace import mda_probes

OPEN_PORT = 8080
CLOSED_PORT = 8081


@pytest.fixture(scope="module")
def listener(lab: Lab) -> Iterator[int]:
    """A TCP listener inside dst (dual-stack), for SYN-ACK answers."""
    with lab.enter("dst"):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", OPEN_PORT))
    s.listen(64)
    try:
        yield OPEN_PORT
    finally:
        s.close()


async def routes(lab: Lab, *traces: Trace) -> list[TraceResult]:
    """Run ``traces`` one after another on one Tracer whose sockets live in src."""
    with lab.enter("src"):
        async with Tracer() as t:
            return [await t.collect(tr) for tr in traces]


def check_diamond(lab: Lab, r: TraceResult, v: int) -> None:
    """Everything about a full route to dst except "both middle routers found"."""
    assert [h.ttl for h in r.hops] == [1, 2, 3, 4]
    assert r.hops[0].addrs == lab.topology.expected_hops("src", "dst", 1, v)
    for h in r.hops[1:3]:
        assert h.addrs and h.addrs <= lab.topology.expected_hops("src", "dst", h.ttl, v)
    assert r.hops[3].addrs == {lab.dst.addr(v)}
    assert r.reached and r.hops[3].reached and r.hops[3].last
    assert not any(h.last or h.reached for h in r.hops[:3])
    assert all(h.timeouts == 0 for h in r.hops)
    assert r.late == 0
    # hop 1: one probe -- the kernel's route to dst has one gateway (r1), asked over netlink
    assert len(r.hops[0].probes) == 1
    for h in r.hops[1:3]:  # the MDA stopping rule, per hop, exactly
        assert len({p.flow for p in h.probes}) == len(h.probes) == mda_probes(len(h.addrs))
    # The destination's hop gets one flow through each interface of hop 3 (no MDA there: every
    # flow through an interface that leads to the destination reaches the same host; but a
    # branch going on beside it would show). Before the adaptive reach it got 6 flows.
    assert len(r.hops[3].probes) == len(r.hops[2].addrs)
    assert {p.flow for p in r.hops[3].probes} <= {p.flow for p in r.hops[2].probes}
    # Probes: exactly the MDA's per hop -- nothing else is spent, and every probe sent is in
    # the result. The distance probe (flow 0, TTL 30) went first: a port unreachable quotes the
    # TTL it arrived with, so it is flow 0's probe at TTL 4 and nothing lies past the route;
    # a SYN-ACK, RST or echo reply quotes nothing (its own TTL only hints the distance), so
    # that probe stays at TTL 30, in ``past``.
    in_hops = sum(len(h.probes) for h in r.hops)
    assert in_hops == 1 + sum(mda_probes(len(h.addrs)) for h in r.hops[1:3]) + len(r.hops[2].addrs)
    assert r.sent == in_hops + len(r.past)
    if r.protocol == "udp":
        assert r.past == () and 0 in {p.flow for p in r.hops[3].probes}
    else:
        assert [(p.ttl, p.flow, p.destination) for p in r.past] == [(30, 0, True)]
    # the graph: every flow's path is TTL 1..its arrival, links join consecutive TTLs
    assert set(r.arrivals.values()) == {4}
    for link in r.links:
        assert link.src in r.hops[link.ttl - 1].addrs and link.dst in r.hops[link.ttl].addrs


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize(
    ("proto", "port", "answer"),
    [
        ("udp", None, "unreachable"),
        ("tcp", OPEN_PORT, "syn-ack"),
        ("tcp", CLOSED_PORT, "rst"),
    ],
)
async def test_diamond_udp_tcp(
    lab: Lab, listener: int, v: int, proto: str, port: int | None, answer: str
) -> None:
    middle = lab.topology.expected_hops("src", "dst", 2, v)
    assert middle == {lab.r2a.addr(v), lab.r2b.addr(v)}
    seen: set = set()
    for _ in range(3):
        (r,) = await routes(lab, Trace(lab.dst.addr(v), proto=proto, port=port, expiry=1.0))
        check_diamond(lab, r, v)
        assert {p.kind for p in r.hops[3].probes} == {answer}
        assert all(p.destination for p in r.hops[3].probes)
        seen |= r.hops[1].addrs
        if r.hops[1].addrs == middle:
            # 1 + 11 + 11 + 2 = 25 at the hops (scamper's tracelb: 24, see docs/trace.md),
            # TCP one more: the distance probe, past the route
            assert len(r.hops[2].addrs) == 2 and r.sent == (25 if proto == "udp" else 26)
            break
    assert seen == middle


@pytest.mark.parametrize("v", [4, 6])
async def test_diamond_icmp_one_branch(lab: Lab, v: int) -> None:
    rs = await routes(lab, *[Trace(lab.dst.addr(v), proto="icmp") for _ in range(2)])
    for r in rs:
        check_diamond(lab, r, v)
        assert len(r.hops[1].addrs) == 1
        assert {p.kind for p in r.hops[3].probes} == {"echo-reply"}
        assert r.sent == 1 + 6 + 6 + 1 + 1  # the distance probe in past
    # 12 flows with different identifiers and checksums, all on one branch: see module doc
    assert rs[0].hops[1].addrs == rs[1].hops[1].addrs


@contextlib.contextmanager
def nft(lab: Lab, node: str, ruleset: str) -> Iterator[None]:
    lab.nft(node, ruleset)
    try:
        yield
    finally:
        lab.nft_flush(node)


@pytest.mark.parametrize("v", [4, 6])
async def test_admin_prohibited_ends_with_X(lab: Lab, listener: int, v: int) -> None:
    rules = f"""
        table inet t {{
            chain forw {{
                type filter hook forward priority 0;
                ip daddr {lab.dst.v4} reject with icmp type admin-prohibited
                ip6 daddr {lab.dst.v6} reject with icmpv6 type admin-prohibited
            }}
        }}"""
    r1 = lab.r1.on("src", v)
    with nft(lab, "r1", rules):
        rs = await routes(
            lab,
            *[
                Trace(lab.dst.addr(v), proto=p, port=port, expiry=0.5)
                for p, port in (("udp", None), ("tcp", OPEN_PORT), ("icmp", None))
            ],
        )
    for r in rs:
        assert [h.ttl for h in r.hops] == [1, 2], r.protocol
        assert r.hops[0].addrs == {r1} and not r.hops[0].last
        last = r.hops[1]
        assert last.addrs == {r1} and last.mark == "!X" and last.last and not last.reached
        assert {p.mark for p in last.probes} == {"!X"}
        assert not r.reached


@pytest.mark.parametrize("v", [4, 6])
async def test_silent_hop_times_out_and_tracing_goes_on(lab: Lab, v: int) -> None:
    rules = """
        table inet t {
            chain out {
                type filter hook output priority 0;
                icmp type time-exceeded drop
                icmpv6 type time-exceeded drop
            }
        }"""
    with nft(lab, "r1", rules):
        (r,) = await routes(lab, Trace(lab.dst.addr(v), expiry=0.3, flows=8))
    h1 = r.hops[0]
    assert h1.ttl == 1 and h1.responders == () and h1.timeouts == 8 and not h1.last
    assert [h.ttl for h in r.hops] == [1, 2, 3, 4]
    for h in r.hops[1:3]:
        assert h.addrs and h.addrs <= lab.topology.expected_hops("src", "dst", h.ttl, v)
        assert h.timeouts == 0
    assert r.hops[3].addrs == {lab.dst.addr(v)} and r.reached


async def test_concurrent_traces_do_not_mix(lab: Lab, listener: int) -> None:
    r3_near_dst = lab.r3.on("dst", 4)
    jobs = [
        (Trace(lab.dst.v4, expiry=0.5, flows=12), [lab.r1.v4, None, None, lab.dst.v4]),
        (Trace(lab.dst.v4, expiry=0.5, flows=12), [lab.r1.v4, None, None, lab.dst.v4]),
        (
            Trace(lab.dst.v6, proto="tcp", port=OPEN_PORT, flows=12),
            [lab.r1.v6, None, None, lab.dst.v6],
        ),
        (Trace(lab.dst.v4, proto="icmp", flows=4), [lab.r1.v4, None, None, lab.dst.v4]),
        (Trace(lab.r1.v4, flows=4), [lab.r1.v4]),
        (Trace(lab.r1.v6, proto="icmp", flows=4), [lab.r1.v6]),
        (Trace(r3_near_dst, flows=12), [lab.r1.v4, None, r3_near_dst]),
    ]
    results: list[TraceResult | None] = [None] * len(jobs)
    with lab.enter("src"):
        async with Tracer() as t:

            async def one(i: int, tr: Trace) -> None:
                results[i] = await t.collect(tr)

            async with trio.open_nursery() as n:
                for i, (tr, _) in enumerate(jobs):
                    n.start_soon(one, i, tr)
            assert t.late == 0 and t.foreign == 0
    for (tr, want), r in zip(jobs, results, strict=True):
        assert r is not None
        assert r.target == ipaddress.ip_address(tr.addr)
        assert len(r.hops) == len(want), tr
        assert r.reached and r.hops[-1].last
        v = r.target.version
        for h, w in zip(r.hops, want, strict=True):
            assert len({p.flow for p in h.probes}) == tr.flows
            if w is not None:
                assert h.addrs == {w}
            else:  # a middle hop: one of the diamond's
                assert h.addrs <= lab.topology.expected_hops("src", "dst", h.ttl, v)


def run_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.python("src", "-m", "netdiag.trace", *args, check=False, timeout=30)


@pytest.mark.parametrize("v", [4, 6])
def test_cli_probe_economy_flags(lab: Lab, v: int) -> None:
    """The CLI's two trade-offs on the diamond (UDP, MDA 95 %, both branches found): the
    default 25 probes (hop 1 from the kernel's route, the distance probe filed at TTL 4, one
    probe at TTL 4 through each of r3's interfaces); ``--first-arrival`` 24, scamper's
    tracelb's count (TTL 4 settled by the first arrival); ``--minimize rounds`` 29 (the
    scout's 4 probes past the destination, in ``past``)."""
    want = {(): 25, ("--first-arrival",): 24, ("--minimize", "rounds"): 29}
    for flags, count in want.items():
        for _ in range(3):  # a 95 % MDA misses a branch 1 time in 32: then fewer
            p = run_cli(lab, "-n", "--json", *flags, str(lab.dst.addr(v)))
            assert p.returncode == 0, p.stderr
            doc = json.loads(p.stdout)
            assert doc["minimize"] == ("rounds" if "rounds" in flags else "probes")
            if [len(h["responders"]) for h in doc["hops"]] == [1, 2, 2, 1]:
                assert doc["sent"] == count, flags
                assert len(doc["past"]) == (4 if "rounds" in flags else 0)
                assert len(doc["hops"][3]["probes"]) == (1 if "--first-arrival" in flags else 2)
                break
        else:
            pytest.fail(f"{flags}: three traces missed a branch")


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("flag", ["-U", "-T", "-I"])
def test_cli_json_matches_topology(lab: Lab, listener: int, v: int, flag: str) -> None:
    # 16 flows per hop: both branches are found unless all 16 hash alike (2**-15)
    extra = ["-p", str(OPEN_PORT)] if flag == "-T" else []
    p = run_cli(lab, flag, *extra, "-n", "-q", "16", "-w", "0.5", "--json", str(lab.dst.addr(v)))
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["target"] == str(lab.dst.addr(v))
    assert doc["protocol"] == {"-U": "udp", "-T": "tcp", "-I": "icmp"}[flag]
    hops = doc["hops"]
    assert [h["ttl"] for h in hops] == [1, 2, 3, 4]
    assert [h["last"] for h in hops] == [False, False, False, True]
    for h in hops:
        assert len(h["probes"]) == 16
        assert {"addr", "rtt", "flow"} <= set(h["probes"][0])
        got = {ipaddress.ip_address(p["addr"]) for p in h["probes"]}
        want = lab.topology.expected_hops("src", "dst", h["ttl"], v)
        if flag == "-I" and h["ttl"] in (2, 3):
            assert len(got) == 1 and got <= want  # see the module docstring
        elif h["ttl"] == 3 and v == 6:
            assert got and got <= want  # r3 picks its IPv6 error source by route
        else:
            assert got == want, h["ttl"]


def test_cli_text_and_dns_bounded(lab: Lab) -> None:
    # Names on (no -n): the lab has no DNS, lookups must fail or time out without harm.
    p = run_cli(lab, "-q", "2", str(lab.dst.v4))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"traceroute to {lab.dst.v4} ({lab.dst.v4}), 30 hops max")
    assert [ln.split()[0] for ln in lines[1:]] == ["1", "2", "3", "4"]
    assert str(lab.r1.v4) in lines[1] and str(lab.dst.v4) in lines[4]
    assert "ms" in lines[4]


def test_cli_unreached_exit_1(lab: Lab) -> None:
    p = run_cli(lab, "-n", "-q", "1", "-m", "2", str(lab.dst.v4))
    assert p.returncode == 1
    assert len(p.stdout.splitlines()) == 3


@pytest.mark.parametrize(
    "args",
    [
        ["-q", "0", "198.18.6.2"],
        ["-I", "-p", "80", "198.18.6.2"],
        ["-f", "5", "-m", "4", "198.18.6.2"],
        ["--mda", "90", "198.18.6.2"],
        ["-q", "3", "--mda", "99", "198.18.6.2"],
        ["-w", "-1", "198.18.6.2"],
        ["-4", "2001:db8:6::2"],
        [],
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args: list[str]) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "netdiag.trace", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr


class SlowResponder:
    """A user-space stand-in for dst's port-unreachable, answering each UDP probe ``delay``
    seconds late: dst binds the probe port (so its kernel stays silent) and a thread sends the
    ICMP error itself, quoting the probe exactly as the kernel would."""

    def __init__(self, lab: Lab, port: int, delay: float) -> None:
        with lab.enter("dst"):
            self.hold = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.raw_udp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
            self.raw_icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.hold.bind(("0.0.0.0", port))
        self.raw_udp.settimeout(0.05)
        self.port, self.delay = port, delay
        self.stop = threading.Event()
        self.answered = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 10  # bounded whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                pkt, (src, _) = self.raw_udp.recvfrom(2048)
            except TimeoutError:
                continue
            ihl = (pkt[0] & 0x0F) * 4
            if struct.unpack_from("!H", pkt, ihl + 2)[0] != self.port:
                continue
            body = struct.pack("!BBHI", 3, 3, 0, 0) + pkt[: ihl + 8]
            ck = checksum(body)
            msg = body[:2] + struct.pack("!H", ck) + body[4:]
            threading.Timer(self.delay, self._send, (msg, src)).start()

    def _send(self, msg: bytes, src: str) -> None:
        if not self.stop.is_set():
            self.raw_icmp.sendto(msg, (src, 0))
            self.answered += 1

    def __enter__(self) -> SlowResponder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2)
        for s in (self.hold, self.raw_udp, self.raw_icmp):
            s.close()


async def test_late_reply_not_credited_to_another_probe(lab: Lab) -> None:
    """Trace A's probes to dst expire (0.15 s) before dst's answers come (0.4 s). Trace B to
    the same target starts right after A, so A's stragglers arrive while B's probes to dst are
    in flight. They must be counted late, never credited to B, whose own answers (0.4 s late
    but within B's 1 s expiry) give B its RTTs."""
    port = 33500
    with SlowResponder(lab, port, 0.4) as resp, lab.enter("src"):
        async with Tracer() as t:
            a = await t.collect(Trace(lab.dst.v4, port=port, expiry=0.15, flows=2, max_ttl=4))
            b = await t.collect(Trace(lab.dst.v4, port=port, expiry=1.0, flows=2, max_ttl=4))
            await trio.sleep(0.5)  # let B's lingering keys see anything still on its way
            late, foreign = t.late, t.foreign
    assert not a.reached and a.hops[-1].timeouts == 2 and a.hops[-1].ttl == 4
    assert b.reached and b.hops[-1].addrs == {lab.dst.v4}
    rtts = [p.rtt for p in b.hops[-1].probes]
    assert len(rtts) == 2 and all(r is not None and 0.35 < r < 1.0 for r in rtts)
    assert late == 2 and foreign == 0  # exactly A's two stragglers
    assert resp.answered == 4
