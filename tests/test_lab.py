"""Tests of the namespace lab itself.

Why: every ping/traceroute/knock integration test trusts the lab's topology,
routing, ECMP behaviour and firewall helper.  If the lab were subtly wrong
(a missing route, ICMP rate limiting, ECMP not hashing on ports, an nft rule
that silently does not match) those tests would fail -- or worse, pass --
for reasons unrelated to netdiag.  These tests pin down the lab's promises
using only standard system tools (fping, iputils ping, traceroute).

The pure data tests at the top need no privileges; the rest are marked
``lab`` and share the session lab from conftest.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from netdiag.testing.lab import (
    DIAMOND,
    DST,
    NETNS_DIR,
    PROJECT_ROOT,
    R1,
    R2A,
    R2B,
    R3,
    SRC,
    IPAddress,
    Lab,
    Link,
    Topology,
    Version,
    cleanup_stale,
    current_netns,
    expected_hops,
)

VERSIONS: tuple[Version, ...] = (4, 6)


def _ns_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _ips(text: str) -> list[IPAddress]:
    """Every IP address token in ``text`` (traceroute / ping output)."""
    found: list[IPAddress] = []
    for token in re.findall(r"[0-9a-fA-F:.]+", text):
        try:
            found.append(ipaddress.ip_address(token.rstrip(".:")))
        except ValueError:
            continue
    return found


# --------------------------------------------------------------------------- #
# Topology as data (no privileges needed)
# --------------------------------------------------------------------------- #


def test_addressing_convention() -> None:
    """Main addresses follow the documented .1-left/.2-right convention."""
    ip = ipaddress.ip_address
    assert (SRC.v4, SRC.v6) == (ip("198.18.1.2"), ip("2001:db8:1::2"))
    assert (R1.v4, R2A.v4, R2B.v4, R3.v4) == tuple(
        map(ip, ("198.18.1.1", "198.18.2.2", "198.18.3.2", "198.18.4.2"))
    )
    assert (DST.v4, DST.v6) == (ip("198.18.6.2"), ip("2001:db8:6::2"))
    assert R3.on("r2b") == ip("198.18.5.2")
    assert R1.on("r2a", 6) == ip("2001:db8:2::1")
    assert DIAMOND.addr("r2a", "r3") == ip("198.18.4.1")
    assert len(DIAMOND.all_addresses()) == 24
    for node in DIAMOND.nodes:
        assert all(len(i.name) <= 15 for i in node.ifaces)


def test_expected_hops() -> None:
    """The documented hop sets per TTL from src to dst."""
    ip = ipaddress.ip_address
    assert expected_hops(1) == {ip("198.18.1.1")}
    assert expected_hops(2) == {ip("198.18.2.2"), ip("198.18.3.2")}
    assert expected_hops(3) == {ip("198.18.4.2"), ip("198.18.5.2")}
    assert expected_hops(4) == expected_hops(9) == {ip("198.18.6.2")}
    assert expected_hops(2, 6) == {ip("2001:db8:2::2"), ip("2001:db8:3::2")}
    assert DIAMOND.hop_nodes("src", "dst") == [
        {"r1"},
        {"r2a", "r2b"},
        {"r3"},
        {"dst"},
    ]
    with pytest.raises(ValueError):
        expected_hops(0)


def test_routes_are_ecmp_across_the_diamond() -> None:
    """r1 and r3 split across both branches; hosts only have default routes."""
    routes = {str(prefix): hops for prefix, hops in DIAMOND.routes("r1", 4)}
    assert {str(gw) for gw, _ in routes["198.18.6.0/24"]} == {"198.18.2.2", "198.18.3.2"}
    routes6 = {str(prefix): hops for prefix, hops in DIAMOND.routes("r3", 6)}
    assert {str(gw) for gw, _ in routes6["2001:db8:1::/64"]} == {"2001:db8:4::1", "2001:db8:5::1"}
    assert [str(p) for p, _ in DIAMOND.routes("src", 4)] == ["0.0.0.0/0"]
    assert [str(p) for p, _ in DIAMOND.routes("dst", 6)] == ["::/0"]


def test_link_refuses_non_test_addresses() -> None:
    """Safety net: no topology can leave the reserved test ranges."""
    with pytest.raises(ValueError):
        Link("a", "b", ipaddress.IPv4Network("10.0.0.0/24"), ipaddress.IPv6Network("2001:db8::/64"))
    with pytest.raises(ValueError):
        Link("a", "b", ipaddress.IPv4Network("198.18.0.0/24"), ipaddress.IPv6Network("fd00::/64"))
    with pytest.raises(ValueError):
        Topology.create(nodes=("a", "b" * 20), links=[("a", "b" * 20)])


# --------------------------------------------------------------------------- #
# The running lab
# --------------------------------------------------------------------------- #


@pytest.mark.lab
def test_lab_built_fully(lab: Lab) -> None:
    """All namespaces exist; required sysctls raise during build, so none were lost."""
    assert lab.built
    assert lab.build_seconds is not None
    assert set(lab.skipped_sysctls) == set(DIAMOND.names)
    for name in DIAMOND.names:
        assert os.path.exists(NETNS_DIR / lab.ns(name))


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
def test_src_reaches_every_node(lab: Lab, version: Version) -> None:
    """src reaches every address of every node."""
    assert lab.unreachable("src", DIAMOND.all_addresses(version)) == []


@pytest.mark.lab
def test_every_node_reaches_every_address(lab: Lab) -> None:
    """Full mesh, both families: no missing or one-way routes anywhere."""
    failures = {
        name: missing
        for name in DIAMOND.names
        if (missing := lab.unreachable(name, DIAMOND.all_addresses()))
    }
    assert failures == {}


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
def test_reply_ttl_counts_three_routers(lab: Lab, version: Version) -> None:
    """dst's replies arrive with 64 - 3 = 61: default TTL 64 and three forwarding hops."""
    out = lab.exec("src", "ping", f"-{version}", "-c1", "-W2", lab.dst.addr(version)).stdout
    assert re.search(r"\bttl=61\b", out, re.IGNORECASE), out


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
def test_traceroute_sees_both_branches(lab: Lab, version: Version) -> None:
    """System traceroute (UDP) finds r2a and r2b at hop 2: ECMP spreads flows.

    traceroute varies the destination port per probe, so a few probes per hop
    should hit both branches; a handful of runs make a miss vanishingly rare.
    Every responder must also be one that expected_hops() predicts.
    """
    seen: dict[int, set[IPAddress]] = {}
    for _ in range(5):
        argv = f"traceroute -n -{version} -q 6 -w 1 -m 4".split()
        out = lab.exec("src", *argv, lab.dst.addr(version)).stdout
        for line in out.splitlines()[1:]:
            fields = line.split()
            ttl = int(fields[0])
            seen.setdefault(ttl, set()).update(_ips(" ".join(fields[1:])))
        if seen.get(2) == expected_hops(2, version):
            break
    for ttl, responders in seen.items():
        assert responders <= expected_hops(ttl, version), (ttl, responders)
    assert seen.get(2) == expected_hops(2, version)
    assert sorted(seen) == [1, 2, 3, 4]


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
def test_ecmp_path_is_a_function_of_the_flow(lab: Lab, version: Version) -> None:
    """Same 5-tuple -> same branch, even from a fresh (connected) socket each time.

    This is the property Paris-style traceroute depends on; it failed with
    hash policy 1 (see lab._configure_ecmp_hash).  For IPv4 it also checks
    that r3 answers from the address on the branch the probe came through.
    """
    paths: dict[int, list[list[IPAddress]]] = {}
    for sport in [*range(40000, 40008), 40000, 40001, 40002]:
        argv = f"traceroute -n -{version} -U -p 33434 --sport={sport} -q 1 -w 1 -f 2 -m 3"
        out = lab.exec("src", *argv.split(), lab.dst.addr(version)).stdout
        hops = [_ips(line)[0] for line in out.splitlines()[1:]]
        assert len(hops) == 2, out
        assert hops[0] in expected_hops(2, version)
        assert hops[1] in expected_hops(3, version)
        paths.setdefault(sport, []).append(hops)
        if version == 4:
            branch = "r2a" if hops[0] == lab.r2a.v4 else "r2b"
            assert hops[1] == lab.r3.on(branch), (sport, hops)
    for sport, runs in paths.items():
        assert all(run == runs[0] for run in runs), (sport, runs)
    branches = {runs[0][0] for runs in paths.values()}
    assert branches == expected_hops(2, version), "8 flows all hashed to one branch"


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
def test_nft_drops_chosen_echo_sequences(clean_lab: Lab, version: Version) -> None:
    """The docstring example of Lab.nft works: dst drops echo requests 2 and 4."""
    lab = clean_lab
    proto = "icmp" if version == 4 else "icmpv6"
    lab.nft(
        "dst",
        f"""
        table inet t {{
            chain in {{
                type filter hook input priority 0;
                {proto} type echo-request {proto} sequence {{ 2, 4 }} drop
            }}
        }}
        """,
    )
    argv = f"ping -{version} -c 4 -i 0.2 -W 1".split()
    proc = lab.exec("src", *argv, lab.dst.addr(version), check=False)
    answered = {int(s) for s in re.findall(r"icmp_seq=(\d+)", proc.stdout)}
    assert answered == {1, 3}, proc.stdout
    assert "4 packets transmitted, 2 received" in proc.stdout
    lab.nft_flush("dst")
    assert lab.exec("dst", "nft", "list", "ruleset").stdout.strip() == ""


@pytest.mark.lab
def test_enter_moves_only_this_thread_and_restores(lab: Lab) -> None:
    """enter() switches the calling thread, nests, and restores even on errors."""
    root = current_netns()
    src_ns = _ns_id(NETNS_DIR / lab.ns("src"))
    dst_ns = _ns_id(NETNS_DIR / lab.ns("dst"))
    other_thread: list[tuple[int, int]] = []
    entered = threading.Event()

    def observe() -> None:  # a thread started outside stays outside
        entered.wait(5)
        other_thread.append(current_netns())

    observer = threading.Thread(target=observe)
    observer.start()
    with lab.enter("src"):
        assert current_netns() == src_ns
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((str(lab.src.v4), 0))  # only possible inside src
        entered.set()
        observer.join()
        with lab.enter("dst"):
            assert current_netns() == dst_ns
        assert current_netns() == src_ns
    assert current_netns() == root
    assert other_thread == [root]
    sock.close()

    with pytest.raises(ZeroDivisionError), lab.enter("src"):
        _ = 1 / 0
    assert current_netns() == root

    # back in the root namespace the lab address is not local
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError) as exc:
        s.bind((str(lab.src.v4), 0))
    assert exc.value.errno == errno.EADDRNOTAVAIL


@pytest.mark.lab
@pytest.mark.parametrize("version", VERSIONS)
def test_sockets_keep_their_namespace(lab: Lab, version: Version) -> None:
    """A listener made in dst and a client made in src talk after both blocks end.

    This is how knock/benchmark tests will use the lab.
    """
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with lab.enter("dst"):
        listener = socket.create_server((str(lab.dst.addr(version)), 0), family=family)
    with lab.enter("src"):
        client = socket.socket(family, socket.SOCK_STREAM)
    with listener, client:
        client.settimeout(5)
        listener.settimeout(5)
        client.connect(listener.getsockname()[:2])
        conn, peer = listener.accept()
        with conn:
            assert ipaddress.ip_address(peer[0]) == lab.src.addr(version)
            client.sendall(b"hi")
            assert conn.recv(2) == b"hi"


@pytest.mark.lab
def test_set_link_down_and_up(clean_lab: Lab) -> None:
    """A downed link stops traffic over it; bringing it up restores everything."""
    lab = clean_lab
    targets = [lab.r2a.v4, lab.r2a.v6]
    lab.set_link("r1", "r2a", up=False)
    assert lab.unreachable("r1", targets, retries=0) == targets
    lab.set_link("r1", "r2a", up=True)
    assert lab.unreachable("r1", targets) == []
    for name in ("src", "r2a", "r1"):
        assert lab.unreachable(name, DIAMOND.all_addresses()) == [], name


@pytest.mark.lab
def test_python_runs_inside_node_with_project_on_path(lab: Lab) -> None:
    """Lab.python() runs this interpreter in the namespace, with the repo importable."""
    code = "import os, sys; print(os.stat('/proc/self/ns/net').st_ino); print(sys.path)"
    out = lab.python("dst", "-c", code, env={"NETDIAG_LAB_PROBE": "1"}).stdout.splitlines()
    assert int(out[0]) == _ns_id(NETNS_DIR / lab.ns("dst"))[1]
    assert str(PROJECT_ROOT) in out[1]
    env_out = lab.python(
        "src",
        "-c",
        "import os; print(os.environ['NETDIAG_LAB_PROBE'])",
        env={"NETDIAG_LAB_PROBE": "yes"},
    ).stdout
    assert env_out.strip() == "yes"


def _tiny_topology() -> Topology:
    return Topology.create(nodes=("a", "b"), links=[("a", "b")])


@pytest.mark.lab
def test_second_lab_builds_and_closes_cleanly() -> None:
    """A further Lab in the same process gets its own names and leaves nothing behind."""
    tiny = Lab(_tiny_topology())
    with tiny:
        assert tiny.prefix.startswith(f"ndl{os.getpid()}.")
        assert os.path.exists(NETNS_DIR / tiny.ns("a"))
        b = tiny.node("b")
        assert tiny.unreachable("a", [b.v4, b.v6]) == []
    assert not [p for p in NETNS_DIR.iterdir() if p.name.startswith(tiny.prefix + "-")]
    tiny.close()  # idempotent


class _FailingLab(Lab):
    def _create_links(self) -> None:
        raise RuntimeError("simulated failure mid-build")


@pytest.mark.lab
def test_failed_build_cleans_up() -> None:
    """Namespaces made before a build error are deleted before it propagates."""
    broken = _FailingLab(_tiny_topology())
    with pytest.raises(RuntimeError, match="simulated"):
        broken.build()
    assert not [p for p in NETNS_DIR.iterdir() if p.name.startswith(broken.prefix + "-")]


@pytest.mark.lab
def test_cleanup_stale_removes_dead_runs_only(lab: Lab) -> None:
    """Namespaces of a dead pid are removed; those of live processes are kept."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    stale = f"ndl{pid_max + 1}.0-src"  # no process can have this pid
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in cleanup_stale()
        assert not (NETNS_DIR / stale).exists()
        assert (NETNS_DIR / lab.ns("src")).exists()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, check=False)
