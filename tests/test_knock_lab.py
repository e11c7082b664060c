"""Knocker against real TCP stacks: loopback (privileged) and the namespace lab (lab).

What must hold, for IPv4 and IPv6: a listening port answers open with RTTs and never gets a
connection (accept queue empty, no half-open entry left on the server, because our kernel resets
the SYN-ACK); a port without listener answers closed; an nftables drop gives filtered; an
nftables ``reject with icmp(v6) admin-prohibited`` gives that ICMP error; concurrent knocks on
one Knocker never mix; a source port is never used twice while reserved.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import socket
import time
from collections.abc import Iterator

import pytest
import trio
from lab import Lab

from netdiag import Bind, Knock, Knocker, KnockStats
from netdiag.testing import UNRESOLVABLE as NO_SUCH_HOST
from netdiag.wire.icmp import Unreach
from netdiag.wire.tcp import ACK, RST, SYN

VERSIONS = [pytest.param(4, id="v4"), pytest.param(6, id="v6")]
TABLE = "knocktest"


def _family(version: int) -> socket.AddressFamily:
    return socket.AF_INET if version == 4 else socket.AF_INET6


@contextlib.contextmanager
def listener(lab: Lab | None, addr: str, version: int) -> Iterator[tuple[socket.socket, int]]:
    """A listening TCP socket on ``addr`` (in ``dst`` when ``lab`` is given); yields it and its
    port. Non-blocking, so ``accept()`` raises BlockingIOError while the queue is empty."""
    ctx = lab.enter("dst") if lab is not None else contextlib.nullcontext()
    with ctx:
        s = socket.socket(_family(version), socket.SOCK_STREAM)
    try:
        s.bind((addr, 0))
        s.listen(16)
        s.setblocking(False)
        yield s, s.getsockname()[1]
    finally:
        s.close()


def free_port(version: int, addr: str) -> int:
    """A port nothing listens on (bound briefly, then released)."""
    with socket.socket(_family(version), socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def assert_no_connection(srv: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, _ = srv.accept()
        conn.close()


# -- loopback (cheap, privileged) ------------------------------------------------------------

LOOPBACK = [pytest.param(4, "127.0.0.1", id="v4"), pytest.param(6, "::1", id="v6")]


@pytest.mark.privileged
@pytest.mark.parametrize(("version", "addr"), LOOPBACK)
async def test_loopback_open_closed(version: int, addr: str) -> None:
    with listener(None, addr, version) as (srv, port):
        closed = free_port(version, addr)
        async with Knocker() as knocker:
            opened = await knocker.collect(Knock(addr, port, count=3, interval=0.01, expiry=2))
            shut = await knocker.collect(Knock(addr, closed, count=2, interval=0.01, expiry=2))
            rtts = [r async for r in knocker.knock(Knock(addr, port, count=2, interval=0))]
            refused = [r async for r in knocker.knock(Knock(addr, closed, count=2, interval=0))]
        assert [(r.seq, r.kind) for r in opened] == [(1, "open"), (2, "open"), (3, "open")]
        for r in opened:
            assert r.flags & (SYN | ACK | RST) == SYN | ACK
            assert r.rtt is not None and 0 < r.rtt < 2
            assert r.responder == ipaddress.ip_address(addr) and r.port == port
        assert sorted(r.kind for r in shut) == ["closed", "closed"]
        assert all(r.flags & RST and r.rtt is not None for r in shut)
        assert len(rtts) == 2 and all(isinstance(x, float) and x > 0 for x in rtts)
        assert refused == [None, None]
        assert_no_connection(srv)
        stats = KnockStats.of(opened + shut)
        assert (stats.sent, stats.open, stats.closed, stats.filtered) == (5, 3, 2, 0)
        assert stats.rtt.count == 5


@pytest.mark.privileged
async def test_loopback_ports_reserved_then_released() -> None:
    """While a probe is in flight its source port is bound (nobody else can take it); once the
    knock is over it is free again."""
    with listener(None, "127.0.0.1", 4) as (_srv, port):
        async with Knocker() as knocker:
            seen: list[int] = []
            held_during: set[tuple[int, int]] = set()
            async for r in knocker.results(Knock("127.0.0.1", port, count=20, interval=0)):
                seen.append(r.sport)
                held_during |= knocker.reserved_ports()
                with socket.socket() as probe, pytest.raises(OSError) as exc:
                    probe.bind(("127.0.0.1", r.sport))
                assert exc.value.errno == errno.EADDRINUSE
            assert knocker.reserved_ports() == set()
    assert len(seen) == 20 and len(set(seen)) == 20
    assert {p for _, p in held_during} >= set(seen[-1:])
    for p in seen:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # released: binding works again


@pytest.mark.privileged
async def test_knock_api_validation() -> None:
    with pytest.raises(ValueError, match="port"):
        Knock("127.0.0.1", 0)
    with pytest.raises(ValueError, match="port"):
        Knock("127.0.0.1", 65536)
    with pytest.raises(TypeError):
        Knock("127.0.0.1", "80")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expiry"):
        Knock("127.0.0.1", 80, expiry=0)
    async with Knocker() as knocker:
        with pytest.raises(TypeError):
            async for _ in knocker.results("127.0.0.1:80"):  # type: ignore[arg-type]
                pass


# -- the lab ---------------------------------------------------------------------------------


def dst_addr(lab: Lab, version: int) -> str:
    return str(lab.dst.addr(version))  # type: ignore[arg-type]


def wait_no_syn_recv(lab: Lab, port: int, timeout: float = 3.0) -> str:
    """Poll dst until no half-open (SYN-RECV) entry for ``port`` is left; return what ``ss``
    last showed. A server whose SYN-ACK was not reset keeps one for a minute of retransmits."""
    deadline = time.monotonic() + timeout
    while True:
        out = lab.exec("dst", "ss", "-Htan", "state", "syn-recv", f"( sport = :{port} )").stdout
        if not out.strip() or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def listen_queue(lab: Lab, port: int) -> int:
    """Recv-Q of dst's listener on ``port``: for a listening socket, its accept queue length."""
    out = lab.exec("dst", "ss", "-Hltn", f"( sport = :{port} )").stdout.split()
    assert out and out[0] == "LISTEN", out
    return int(out[1])


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
async def test_lab_open_port_half_open(clean_lab: Lab, version: int) -> None:
    lab = clean_lab
    addr = dst_addr(lab, version)
    with listener(lab, addr, version) as (srv, port), lab.enter("src"):
        # Count the resets src's kernel sends to the server's port: one per SYN-ACK.
        lab.nft(
            "src",
            f"""table inet {TABLE} {{
                chain o {{
                    type filter hook output priority 0;
                    tcp dport {port} tcp flags & rst != 0 counter name rsts
                }}
                counter rsts {{ }}
            }}""",
        )
        try:
            async with Knocker() as knocker:
                knock = Knock(addr, port, count=4, interval=0.05, expiry=2)
                results = await knocker.collect(knock)
            # The server dropped every embryonic connection: no SYN-RECV entry is left...
            syn_recv = wait_no_syn_recv(lab, port)
            rsts = lab.exec("src", "nft", "-j", "list", "counter", "inet", TABLE, "rsts").stdout
        finally:
            lab.nft_flush("src")
        assert [r.kind for r in results] == ["open"] * 4
        assert sorted(r.seq for r in results) == [1, 2, 3, 4]
        for r in results:
            assert r.rtt is not None and 0 < r.rtt < 2
            assert r.responder == ipaddress.ip_address(addr)
            assert r.ttl == 61  # dst's 64, minus r3, r2x, r1
            assert r.flags & (SYN | ACK) == SYN | ACK
        assert len({r.sport for r in results}) == 4
        # ... because src's kernel reset each SYN-ACK (no socket of its own owned the port) ...
        counter = json.loads(rsts)["nftables"][1]["counter"]
        assert counter["packets"] == 4, counter
        assert syn_recv.strip() == ""
        # ... so the application never got a connection.
        assert listen_queue(lab, port) == 0
        assert_no_connection(srv)


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
async def test_lab_closed_port(lab: Lab, version: int) -> None:
    addr = dst_addr(lab, version)
    with lab.enter("src"):
        async with Knocker() as knocker:
            results = await knocker.collect(Knock(addr, 7, count=3, interval=0.05, expiry=2))
    assert [r.kind for r in results] == ["closed"] * 3
    for r in results:
        assert r.flags & RST and r.rtt is not None and r.rtt > 0
        assert r.responder == ipaddress.ip_address(addr)
    stats = KnockStats.of(results)
    assert (stats.sent, stats.closed, stats.open, stats.filtered) == (3, 3, 0, 0)


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
async def test_lab_filtered_by_drop(clean_lab: Lab, version: int) -> None:
    lab = clean_lab
    addr = dst_addr(lab, version)
    ruleset = f"""
        table inet {TABLE} {{
            chain in {{
                type filter hook input priority 0;
                tcp dport 8082 drop
            }}
        }}"""
    try:
        lab.nft("dst", ruleset)
        with lab.enter("src"):
            async with Knocker() as knocker:
                knock = Knock(addr, 8082, count=3, interval=0.02, expiry=0.3)
                results = await knocker.collect(knock)
                rtts = [x async for x in knocker.knock(Knock(addr, 8082, count=2, expiry=0.2))]
    finally:
        lab.nft_flush("dst")
    assert [r.kind for r in results] == ["filtered"] * 3
    assert all(r.rtt is None and r.responder is None for r in results)
    assert rtts == [None, None]
    stats = KnockStats.of(results)
    assert (stats.sent, stats.filtered, stats.loss) == (3, 3, 1.0)


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
async def test_lab_admin_prohibited(clean_lab: Lab, version: int) -> None:
    lab = clean_lab
    addr = dst_addr(lab, version)
    ruleset = f"""
        table inet {TABLE} {{
            chain in {{
                type filter hook input priority 0;
                meta nfproto ipv4 tcp dport 8083 reject with icmp type admin-prohibited
                meta nfproto ipv6 tcp dport 8083 reject with icmpv6 type admin-prohibited
            }}
        }}"""
    try:
        lab.nft("dst", ruleset)
        with lab.enter("src"):
            async with Knocker() as knocker:
                results = await knocker.collect(Knock(addr, 8083, count=3, interval=0.05, expiry=2))
    finally:
        lab.nft_flush("dst")
    assert [r.kind for r in results] == ["error"] * 3
    for r in results:
        assert r.error is not None and not r.error.local
        assert r.error.unreach is Unreach.ADMIN
        assert r.error.code == (13 if version == 4 else 1)
        assert r.rtt is not None and r.rtt > 0
        assert r.responder == ipaddress.ip_address(addr)
        assert r.label == "unreachable (admin-prohibited)"
    stats = KnockStats.of(results)
    assert (stats.sent, stats.errors, stats.open, stats.filtered) == (3, 3, 0, 0)


@pytest.mark.lab
async def test_lab_concurrent_knocks_do_not_mix(lab: Lab) -> None:
    """Open and closed ports on dst and routers, both families, all at once on one Knocker:
    every result belongs to its own knock and has the outcome of its own port."""
    dst4, dst6 = dst_addr(lab, 4), dst_addr(lab, 6)
    with (
        listener(lab, dst4, 4) as (srv4, p4),
        listener(lab, dst6, 6) as (srv6, p6),
        lab.enter("src"),
    ):
        knocks = {
            "dst4-open": (Knock(dst4, p4, count=10, interval=0.005, expiry=2), "open"),
            "dst6-open": (Knock(dst6, p6, count=10, interval=0.005, expiry=2), "open"),
            "dst4-closed": (Knock(dst4, 9, count=10, interval=0.005, expiry=2), "closed"),
            "dst6-closed": (Knock(dst6, 9, count=10, interval=0.005, expiry=2), "closed"),
            "r1-closed": (Knock(str(lab.r1.v4), p4, count=10, interval=0.005), "closed"),
            "r3-6-closed": (Knock(str(lab.r3.v6), p6, count=10, interval=0.005), "closed"),
        }
        got: dict[str, list] = {}
        async with Knocker() as knocker:

            async def one(name: str, knock: Knock) -> None:
                got[name] = await knocker.collect(knock)

            async with trio.open_nursery() as nursery:
                for name, (knock, _) in knocks.items():
                    nursery.start_soon(one, name, knock)
            assert knocker.foreign == 0
        assert_no_connection(srv4)
        assert_no_connection(srv6)
    sports: list[tuple[int, int]] = []
    tuples: set[tuple[int, int, object, int]] = set()
    for name, (knock, expected) in knocks.items():
        results = got[name]
        assert sorted(r.seq for r in results) == list(range(1, 11)), name
        for r in results:
            assert r.kind == expected, (name, r)
            assert r.addr == ipaddress.ip_address(knock.addr) and r.port == knock.port
            assert r.responder == r.addr
            assert not r.duplicate and not r.late
            sports.append((r.addr.version, r.sport))
            tuples.add((r.addr.version, r.sport, r.addr, r.port))
    # All 60 probes were in flight together, so no 4-tuple may repeat (each knock's 10 probes
    # to its destination held 10 different ports) ...
    assert len(tuples) == 60
    # ... but probes to different destinations share reserved ports (issue 12): each family
    # needs about as many ports as one destination has probes in flight, not 30.
    assert len(set(sports)) <= 2 * 2 * 10 < 60


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
async def test_lab_bound_source_and_interface(lab: Lab, version: int) -> None:
    """With Bind the source is the bound address (no route lookup) or the interface's."""
    addr = dst_addr(lab, version)
    src = lab.src.addr(version)  # type: ignore[arg-type]
    with lab.enter("src"):
        for bind in (Bind.source(src), Bind(device="to-r1")):
            async with Knocker(bind) as knocker:
                results = await knocker.collect(Knock(addr, 7, count=2, interval=0.01))
            assert [r.kind for r in results] == ["closed", "closed"], bind


@pytest.mark.lab
async def test_lab_knocker_in_wrong_namespace_is_refused(lab: Lab) -> None:
    with lab.enter("src"):
        async with Knocker() as knocker:
            with lab.enter("r1"), pytest.raises(RuntimeError, match="namespace"):
                await knocker.collect(Knock(dst_addr(lab, 4), 7, count=1))


# -- the CLI in the lab ----------------------------------------------------------------------


def knock_cli(lab: Lab, *args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = lab.python("src", "-m", "netdiag.knock", *args, check=False, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
def test_cli_open(lab: Lab, version: int) -> None:
    addr = dst_addr(lab, version)
    with listener(lab, addr, version) as (srv, port):
        target = f"[{addr}]:{port}" if version == 6 else f"{addr}:{port}"
        rc, out, err = knock_cli(lab, "-c", "3", "-i", "0.05", target)
        assert rc == 0, err
        lines = out.splitlines()
        assert lines[0].startswith(f"KNOCK {addr} ({addr}) port {port}")
        probe_lines = [ln for ln in lines if ln.startswith(f"port {port} ")]
        assert len(probe_lines) == 3
        for seq, ln in enumerate(sorted(probe_lines, key=lambda s: s.split("seq=")[1]), 1):
            assert ln.startswith(f"port {port} open: seq={seq} time=") and ln.endswith(" ms")
        assert "3 probes sent, 3 open, 0 closed, 0 filtered" in out
        assert "rtt min/avg/max/mdev = " in out
        assert err == ""
        assert_no_connection(srv)


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
def test_cli_closed_and_host_port_form(lab: Lab, version: int) -> None:
    addr = dst_addr(lab, version)
    rc, out, err = knock_cli(lab, f"-{version}", "-c", "2", "-i", "0.05", addr, "7")
    assert rc == 1, err
    assert out.count("port 7 closed (RST): seq=") == 2
    assert "2 probes sent, 0 open, 2 closed, 0 filtered" in out


@pytest.mark.lab
def test_cli_filtered_and_admin_prohibited(clean_lab: Lab) -> None:
    lab = clean_lab
    addr = dst_addr(lab, 4)
    ruleset = f"""
        table inet {TABLE} {{
            chain in {{
                type filter hook input priority 0;
                tcp dport 8082 drop
                tcp dport 8083 reject with icmpx type admin-prohibited
            }}
        }}"""
    try:
        lab.nft("dst", ruleset)
        rc, out, err = knock_cli(lab, "-c", "2", "-i", "0.05", "-W", "0.3", f"{addr}:8082")
        assert rc == 1, err
        assert out.count("port 8082 filtered (timeout): seq=") == 2
        assert "2 probes sent, 0 open, 0 closed, 2 filtered" in out
        assert "rtt min" not in out
        v6 = dst_addr(lab, 6)
        rc, out, err = knock_cli(lab, "-c", "2", "-i", "0.05", "--json", f"[{v6}]:8083")
        assert rc == 1, err
        doc = json.loads(out)
        assert doc["port"] == 8083 and doc["addr"] == v6
        assert [r["kind"] for r in doc["results"]] == ["error", "error"]
        assert {r["error"]["unreach"] for r in doc["results"]} == {"admin-prohibited"}
        assert doc["stats"]["errors"] == 2 and doc["stats"]["sent"] == 2
    finally:
        lab.nft_flush("dst")


@pytest.mark.lab
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["198.18.6.2:0"], "invalid port 0"),
        (["198.18.6.2:65536"], "invalid port 65536"),
        (["198.18.6.2"], "missing port"),
        (["2001:db8:6::2"], "missing port"),
        (["198.18.6.2:"], "missing port"),
        ([f"{NO_SUCH_HOST}:80"], NO_SUCH_HOST),
        (["-c", "0", "198.18.6.2:80"], "count"),
        (["-6", "198.18.6.2:80"], "not an IPv6 address"),
    ],
)
def test_cli_bad_input(lab: Lab, args: list[str], message: str) -> None:
    rc, out, err = knock_cli(lab, *args)
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


async def test_knock_sweep_over_hosts_and_ports(lab: Lab) -> None:
    """One sweep, one sender task: an open port, a closed port, on two hosts, both families."""
    from netdiag import Knocker

    with lab.enter("dst"):
        listeners = []
        for fam, addr in ((socket.AF_INET, str(lab.dst.v4)), (socket.AF_INET6, str(lab.dst.v6))):
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.bind((addr, 8443))
            s.listen(64)
            s.setblocking(False)
            listeners.append(s)
    try:
        pairs = [(lab.dst.v4, 8443), (lab.dst.v4, 8444), (lab.dst.v6, 8443), (lab.dst.v6, 8444)]
        with lab.enter("src"):
            async with Knocker() as knocker:
                results = [r async for r in knocker.sweep(pairs, count=2, interval=0.05)]
                assert knocker.engine.table == {}
        kinds = {(str(r.addr), r.port, r.seq): r.kind for r in results}
        for addr in (lab.dst.v4, lab.dst.v6):
            for seq in (1, 2):
                assert kinds[(str(addr), 8443, seq)] == "open"
                assert kinds[(str(addr), 8444, seq)] == "closed"
        for s in listeners:
            with pytest.raises(BlockingIOError):
                s.accept()
    finally:
        for s in listeners:
            s.close()
