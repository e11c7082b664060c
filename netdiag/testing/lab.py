"""A network-namespace lab: real hosts and routers on one Linux machine, for tests.

netdiag's own suite runs on it, and so can yours (see :mod:`netdiag.testing`): ``with Lab() as
lab:`` builds the topology, ``lab.enter("src")`` puts the current thread's new sockets in a
namespace, and everything is deleted again on exit, even after a crash of a previous run.
Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2's ``ip`` and nftables' ``nft``.

Why a lab: netdiag sends raw ICMP/UDP/TCP probes and interprets what routers
answer.  Testing that against the real network is neither safe nor
reproducible, so every test talks only to hosts inside Linux network
namespaces created here, wired together with veth pairs and *never* linked to
the host's own interfaces.  Only documentation/benchmark address space is used
(IPv4 198.18.0.0/15, IPv6 2001:db8::/32); :class:`Link` refuses anything else.

The default topology is an ECMP diamond::

            src ── r1 ──┬── r2a ──┬── r3 ── dst
                        └── r2b ──┘

    link       IPv4            IPv6             left (.1/::1)  right (.2/::2)
    1 r1-src   198.18.1.0/24   2001:db8:1::/64  r1             src
    2 r1-r2a   198.18.2.0/24   2001:db8:2::/64  r1             r2a
    3 r1-r2b   198.18.3.0/24   2001:db8:3::/64  r1             r2b
    4 r2a-r3   198.18.4.0/24   2001:db8:4::/64  r2a            r3
    5 r2b-r3   198.18.5.0/24   2001:db8:5::/64  r2b            r3
    6 r3-dst   198.18.6.0/24   2001:db8:6::/64  r3             dst

A node's *main* address (``Node.v4`` / ``Node.v6``) is its address on its first
link in that table, which is also the address it answers ICMP errors from for
probes sent by src: src 198.18.1.2, r1 198.18.1.1, r2a 198.18.2.2,
r2b 198.18.3.2, r3 198.18.4.2 (or 198.18.5.2, see :func:`expected_hops`),
dst 198.18.6.2.

r1 and r3 have equal-cost multipath routes across r2a/r2b hashed on the
5-tuple (``fib_multipath_hash_policy=3`` with the L4 fields; see
``_configure_ecmp_hash`` for why not policy 1), so the branch is a function of
addresses, protocol and ports only: flows with different ports take different
paths, and the same flow always takes the same one -- exactly what a
multipath (Paris-style) traceroute must discover and rely on.  ICMP has no
ports, so all pings between two addresses share one path.

Typical use (see ``tests/conftest.py`` for the session fixture)::

    with Lab() as lab:
        lab.exec("src", "ping", "-c1", str(lab.dst.v4))
        with lab.enter("src"):          # sockets created here live in src
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

Building the full diamond, including the reachability check, takes about
40 ms (dev VM, Linux 6.18): namespaces and veth pairs are made by two
``ip -batch`` processes, sysctls are written in-process via setns(2), and each
namespace is configured by one ``ip -n NS -batch`` process, all in parallel.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

__all__ = [
    "DIAMOND",
    "DST",
    "PROJECT_ROOT",
    "R1",
    "R2A",
    "R2B",
    "R3",
    "SRC",
    "IPAddress",
    "Iface",
    "Lab",
    "LabCommandError",
    "Link",
    "Node",
    "Topology",
    "Version",
    "cleanup_stale",
    "current_netns",
    "expected_hops",
    "netns",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Version = Literal[4, 6]
Arg = str | int | float | os.PathLike[str] | ipaddress.IPv4Address | ipaddress.IPv6Address

#: Where ``ip netns`` keeps its bind-mounted namespace handles.
NETNS_DIR = Path("/run/netns")
#: Every lab namespace is called ``ndl<pid>.<seq>-<node>``; the pid lets a later
#: run recognise (and delete) namespaces leaked by a process that died.
NS_PREFIX = "ndl"
_NS_RE = re.compile(rf"^{NS_PREFIX}(\d+)\.\d+-")
#: The directory netdiag is imported from (the repository root, or site-packages), put on
#: PYTHONPATH for :meth:`Lab.python` so the same netdiag runs inside the namespaces.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: The only address space the lab may use (see the module docstring).
ALLOWED_V4 = ipaddress.IPv4Network("198.18.0.0/15")
ALLOWED_V6 = ipaddress.IPv6Network("2001:db8::/32")

CLONE_NEWNET = 0x40000000
DEFAULT_TIMEOUT = 30.0
IFNAMSIZ = 15  # usable characters in a Linux interface name


# --------------------------------------------------------------------------- #
# Topology as data
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Iface:
    """One end of a link, seen from the node that owns it.

    Kept as data so tests can ask "which address does r2a use towards r1"
    instead of hard-coding strings.
    """

    node: str
    peer: str
    name: str  #: device name inside ``node``'s namespace, e.g. ``"to-r1"``
    v4: ipaddress.IPv4Interface
    v6: ipaddress.IPv6Interface

    def addr(self, version: Version = 4) -> IPAddress:
        """This end's address (without prefix length) for the IP ``version``."""
        return self.v4.ip if version == 4 else self.v6.ip


@dataclass(frozen=True)
class Link:
    """A point-to-point veth link; ``left`` gets host 1, ``right`` host 2.

    Address ranges are validated here so no topology, however it is built,
    can put the lab on addresses outside the reserved test ranges.
    """

    left: str
    right: str
    net4: ipaddress.IPv4Network
    net6: ipaddress.IPv6Network

    def __post_init__(self) -> None:
        if not self.net4.subnet_of(ALLOWED_V4):
            raise ValueError(f"{self.net4} is outside {ALLOWED_V4}")
        if not self.net6.subnet_of(ALLOWED_V6):
            raise ValueError(f"{self.net6} is outside {ALLOWED_V6}")
        if self.left == self.right:
            raise ValueError(f"link from {self.left} to itself")

    @property
    def ends(self) -> tuple[str, str]:
        """Both node names, left first."""
        return (self.left, self.right)

    def other(self, node: str) -> str:
        """The node at the far end from ``node``."""
        if node == self.left:
            return self.right
        if node == self.right:
            return self.left
        raise KeyError(f"{node} is not on link {self.left}-{self.right}")

    def net(self, version: Version = 4) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The link's subnet for ``version``."""
        return self.net4 if version == 4 else self.net6

    def iface(self, node: str) -> Iface:
        """The :class:`Iface` of ``node`` on this link."""
        peer = self.other(node)
        host = 1 if node == self.left else 2
        name = f"to-{peer}"
        if len(name) > IFNAMSIZ:
            raise ValueError(f"interface name {name!r} longer than {IFNAMSIZ} chars")
        return Iface(
            node=node,
            peer=peer,
            name=name,
            v4=ipaddress.IPv4Interface((self.net4.network_address + host, self.net4.prefixlen)),
            v6=ipaddress.IPv6Interface((self.net6.network_address + host, self.net6.prefixlen)),
        )


@dataclass(frozen=True)
class Node:
    """A lab node (one namespace).  ``v4``/``v6`` are its main addresses."""

    name: str
    router: bool
    v4: ipaddress.IPv4Address
    v6: ipaddress.IPv6Address
    ifaces: tuple[Iface, ...]

    def addr(self, version: Version = 4) -> IPAddress:
        """Main address for ``version``."""
        return self.v4 if version == 4 else self.v6

    def iface(self, peer: str) -> Iface:
        """This node's interface on the link towards ``peer``."""
        for iface in self.ifaces:
            if iface.peer == peer:
                return iface
        raise KeyError(f"{self.name} has no link to {peer}")

    def on(self, peer: str, version: Version = 4) -> IPAddress:
        """This node's address on the link facing ``peer``."""
        return self.iface(peer).addr(version)

    def addresses(self, version: Version | None = None) -> tuple[IPAddress, ...]:
        """All of this node's link addresses (both families unless ``version``)."""
        versions: tuple[Version, ...] = (4, 6) if version is None else (version,)
        return tuple(i.addr(v) for v in versions for i in self.ifaces)


#: A route: destination prefix -> list of (gateway, device) next hops.
Route = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, list[tuple[IPAddress, str]]]


@dataclass(frozen=True)
class Topology:
    """Nodes and links of a lab, plus the routing derived from them.

    Routes are computed, not written by hand: each router gets, for every
    subnet it is not attached to, all next hops on a shortest path (so equal
    cost paths become ECMP routes automatically); hosts with a single link
    get default routes.  Hosts never forward, so they are never transit.
    """

    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    _by_name: Mapping[str, Node] = field(repr=False, compare=False, default_factory=dict)
    #: ``{router: {target: (peer, ...)}}``: the router sends traffic for ``target``'s subnets
    #: to these peers, whatever their distance -- unequal-cost multipath (branches of different
    #: lengths), which shortest-path routing never produces.
    overrides: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        nodes: Sequence[str],
        links: Sequence[tuple[str, str]],
        routers: Iterable[str] = (),
        overrides: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    ) -> Topology:
        """Build a topology; link *i* (1-based) gets 198.18.i.0/24 and 2001:db8:i::/64.

        ``overrides`` (``{router: {target: peers}}``) replaces a router's shortest-path next
        hops toward ``target``'s subnets (used for branches of unequal length)."""
        if len(links) > 255:
            raise ValueError("at most 255 links")
        router_set = set(routers)
        built = tuple(
            Link(
                left,
                right,
                ipaddress.IPv4Network(f"198.18.{i}.0/24"),
                ipaddress.IPv6Network(f"2001:db8:{i:x}::/64"),
            )
            for i, (left, right) in enumerate(links, start=1)
        )
        seen_pairs: set[frozenset[str]] = set()
        for link in built:
            pair = frozenset(link.ends)
            if pair in seen_pairs:
                raise ValueError(f"duplicate link {link.left}-{link.right}")
            seen_pairs.add(pair)
            for end in link.ends:
                if end not in nodes:
                    raise ValueError(f"link endpoint {end} is not a node")
        unknown = router_set - set(nodes)
        if unknown:
            raise ValueError(f"unknown routers {sorted(unknown)}")
        node_objs = []
        for name in nodes:
            ifaces = tuple(link.iface(name) for link in built if name in link.ends)
            if not ifaces:
                raise ValueError(f"node {name} has no links")
            node_objs.append(
                Node(name, name in router_set, ifaces[0].v4.ip, ifaces[0].v6.ip, ifaces)
            )
        fixed = {
            r: {t: tuple(peers) for t, peers in targets.items()}
            for r, targets in (overrides or {}).items()
        }
        for r, targets in fixed.items():
            if r not in router_set:
                raise ValueError(f"override for {r}, which is not a router")
            for peers in targets.values():
                for peer in peers:
                    if frozenset((r, peer)) not in seen_pairs:
                        raise ValueError(f"override: {peer} is not a neighbour of {r}")
        return cls(tuple(node_objs), built, {n.name: n for n in node_objs}, fixed)

    # -- lookups -------------------------------------------------------------

    def node(self, name: str) -> Node:
        """The :class:`Node` called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no node {name!r} in topology") from None

    @property
    def names(self) -> tuple[str, ...]:
        """Node names in declaration order."""
        return tuple(n.name for n in self.nodes)

    def link(self, a: str, b: str) -> Link:
        """The link between ``a`` and ``b`` (either order)."""
        for link in self.links:
            if {a, b} == set(link.ends):
                return link
        raise KeyError(f"no link between {a} and {b}")

    def addr(self, node: str, peer: str, version: Version = 4) -> IPAddress:
        """Address of ``node`` on its link facing ``peer``."""
        return self.node(node).on(peer, version)

    def neighbours(self, name: str) -> list[str]:
        """Directly linked nodes of ``name``."""
        return [i.peer for i in self.node(name).ifaces]

    def all_addresses(self, version: Version | None = None) -> list[IPAddress]:
        """Every address configured anywhere in the lab."""
        return [a for n in self.nodes for a in n.addresses(version)]

    # -- routing -------------------------------------------------------------

    def _distances(self, targets: Iterable[str]) -> dict[str, int]:
        """Hop distance of every node to the nearest of ``targets``.

        Only routers forward, so the BFS expands through routers (and the
        targets themselves) but not through hosts.
        """
        dist = {t: 0 for t in targets}
        queue = deque(dist)
        while queue:
            u = queue.popleft()
            if dist[u] > 0 and not self.node(u).router:
                continue
            for v in self.neighbours(u):
                if v not in dist:
                    dist[v] = dist[u] + 1
                    queue.append(v)
        return dist

    def routes(self, name: str, version: Version) -> list[Route]:
        """Routes to install in ``name`` (connected subnets excluded)."""
        node = self.node(name)
        if not node.router and len(node.ifaces) == 1:
            iface = node.ifaces[0]
            peer = self.node(iface.peer)
            default = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
            return [(default, [(peer.on(name, version), iface.name)])]
        routes: list[Route] = []
        for link in self.links:
            if name in link.ends:
                continue
            forced = [p for e in link.ends for p in self.overrides.get(name, {}).get(e, ())]
            if forced:
                routes.append(
                    (
                        link.net(version),
                        [(self.node(p).on(name, version), node.iface(p).name) for p in forced],
                    )
                )
                continue
            gateways = [e for e in link.ends if self.node(e).router]
            if not gateways:
                continue  # a host-host link elsewhere: unreachable by design
            dist = self._distances(gateways)
            if name not in dist:
                continue
            hops = [
                (self.node(peer).on(name, version), node.iface(peer).name)
                for peer in self.neighbours(name)
                if dist.get(peer) == dist[name] - 1 and (self.node(peer).router or dist[peer] == 0)
            ]
            routes.append((link.net(version), hops))
        return routes

    def paths(self, src: str, dst: str, version: Version = 4) -> list[list[str]]:
        """Every node sequence a packet from ``src`` to ``dst`` may take, following the routes
        this topology installs (ECMP and overrides alike): the ground truth for multipath
        traces on unequal branches, where :meth:`hop_nodes` (shortest paths) does not apply."""
        target = self.node(dst).addr(version)
        out: list[list[str]] = []

        def walk(path: list[str]) -> None:
            here = path[-1]
            if here == dst:
                out.append(path[1:])
                return
            if len(path) > 64:
                raise ValueError(f"routing loop from {src} to {dst}: {path}")
            for prefix, hops in self.routes(here, version):
                if target in prefix:
                    peers = {
                        p
                        for p in self.neighbours(here)
                        for gw, _ in hops
                        if self.node(p).on(here, version) == gw
                    }
                    for p in sorted(peers):
                        walk([*path, p])
                    return
            if dst in self.neighbours(here):
                walk([*path, dst])

        walk([src])
        return out

    def hop_nodes(self, src: str, dst: str) -> list[frozenset[str]]:
        """Nodes on shortest src->dst paths; element k is what TTL k+1 reaches."""
        from_src = self._distances([src])
        to_dst = self._distances([dst])
        total = from_src[dst]
        return [
            frozenset(
                n
                for n in self.names
                if from_src.get(n) == k and k + to_dst.get(n, total + 1) == total
            )
            for k in range(1, total + 1)
        ]

    def expected_hops(
        self, src: str, dst: str, ttl: int, version: Version = 4
    ) -> frozenset[IPAddress]:
        """Addresses that may answer a probe from ``src`` to ``dst`` sent with ``ttl``.

        A router answers from its address on the link the probe arrived on
        (IPv4: routers set ``icmp_errors_use_inbound_ifaddr=1``).  For IPv6
        Linux has no such knob and picks the source from the interface the
        *error* leaves by, which for a router with ECMP back to src (r3) can
        be either of its src-facing addresses -- the set covers both.  (In
        this lab the v6 answer happens to match the ingress branch too,
        because r1 and r3 share hash seed and nexthop order and the error's
        route is hashed on the offending packet; do not rely on that.)
        TTLs at or beyond the path length reach ``dst`` itself.
        """
        if ttl < 1:
            raise ValueError("ttl must be >= 1")
        layers = self.hop_nodes(src, dst)
        if ttl >= len(layers):
            return frozenset({self.node(dst).addr(version)})
        prev = layers[ttl - 2] if ttl >= 2 else frozenset({src})
        return frozenset(
            self.node(n).on(p, version)
            for n in layers[ttl - 1]
            for p in self.neighbours(n)
            if p in prev
        )


#: The ECMP diamond described in the module docstring.
DIAMOND = Topology.create(
    nodes=("src", "r1", "r2a", "r2b", "r3", "dst"),
    routers=("r1", "r2a", "r2b", "r3"),
    links=(
        ("r1", "src"),
        ("r1", "r2a"),
        ("r1", "r2b"),
        ("r2a", "r3"),
        ("r2b", "r3"),
        ("r3", "dst"),
    ),
)
SRC, R1, R2A, R2B, R3, DST = DIAMOND.nodes


def expected_hops(ttl: int, version: Version = 4) -> frozenset[IPAddress]:
    """Diamond hop sets from src to dst, as a traceroute should see them.

    TTL1 {r1 198.18.1.1}, TTL2 {r2a 198.18.2.2, r2b 198.18.3.2},
    TTL3 {r3 198.18.4.2 or 198.18.5.2 depending on the path}, TTL>=4 {dst
    198.18.6.2}; IPv6 likewise with 2001:db8:N::x.
    """
    return DIAMOND.expected_hops("src", "dst", ttl, version)


# --------------------------------------------------------------------------- #
# Namespace plumbing
# --------------------------------------------------------------------------- #

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    """setns(fd, CLONE_NEWNET) for the calling thread (os.setns is 3.12+)."""
    native = getattr(os, "setns", None)
    if native is not None:
        native(fd, CLONE_NEWNET)
        return
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(CLONE_NEWNET)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def current_netns() -> tuple[int, int]:
    """(st_dev, st_ino) identifying the calling thread's network namespace."""
    st = os.stat("/proc/thread-self/ns/net")
    return (st.st_dev, st.st_ino)


@contextlib.contextmanager
def netns(path: str | os.PathLike[str]) -> Iterator[None]:
    """Move the *current thread* into the network namespace at ``path``.

    The thread's previous namespace is restored on exit, also on exceptions,
    and nesting works because each level remembers its own predecessor.
    Sockets created inside keep their namespace after the block ends, which
    is the whole point: create netdiag's sockets "in src" and use them later
    from ordinary code.  Only this thread moves -- in trio, any task that runs
    while you ``await`` inside the block would be in the namespace too, so
    prefer creating sockets inside and awaiting outside.  Threads *started*
    inside inherit the namespace for good (that includes worker threads that
    ``trio.to_thread`` happens to spawn then and later reuses), so do not
    start threads or thread-pool work inside the block.
    """
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(saved)
        finally:
            os.close(saved)
    finally:
        os.close(target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lab_namespaces() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(NS_PREFIX))
    except FileNotFoundError:
        return []


def _delete_namespaces(names: Iterable[str]) -> None:
    """Delete namespaces with one ``ip -force -batch`` (keeps going on errors)."""
    names = list(names)
    if not names:
        return
    script = "".join(f"netns del {n}\n" for n in names)
    subprocess.run(
        ["ip", "-force", "-batch", "-"], input=script, text=True, capture_output=True, check=False
    )
    for name in names:  # belt and braces: the handle must not survive
        handle = NETNS_DIR / name
        if handle.exists():
            subprocess.run(["umount", "-l", str(handle)], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                handle.unlink()


def cleanup_stale() -> list[str]:
    """Delete lab namespaces whose creating process no longer exists.

    Protects against runs killed before their atexit hook (SIGKILL, OOM,
    power loss).  Returns the names deleted.
    """
    stale = []
    for name in _lab_namespaces():
        m = _NS_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            stale.append(name)
    _delete_namespaces(stale)
    return stale


class LabCommandError(subprocess.CalledProcessError):
    """A failed lab command whose message includes its output, for readable failures."""

    def __str__(self) -> str:
        out = (self.stdout or "").strip()
        err = (self.stderr or "").strip()
        cmd = " ".join(map(str, self.cmd)) if isinstance(self.cmd, list) else str(self.cmd)
        return f"`{cmd}` exited {self.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def _run(
    argv: Sequence[Arg],
    *,
    check: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    args = [str(a) for a in argv]
    proc = subprocess.run(
        args,
        input=input,
        text=True,
        capture_output=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        cwd=cwd,
        check=False,
    )
    if check and proc.returncode != 0:
        raise LabCommandError(proc.returncode, args, proc.stdout, proc.stderr)
    return proc


# sysctls: (path under /proc/sys, value, required).  Optional ones are skipped
# when absent or not writable in a namespace (they vary across kernels).
_COMMON_SYSCTLS: tuple[tuple[str, str, bool], ...] = (
    # routers and dst answer bursts of probes; rate limiting would look like loss
    ("net/ipv4/icmp_ratelimit", "0", True),
    ("net/ipv6/icmp/ratelimit", "0", True),
    ("net/ipv4/icmp_msgs_per_sec", "1000000", False),
    ("net/ipv4/icmp_msgs_burst", "1000000", False),
    ("net/ipv4/ip_default_ttl", "64", True),
    ("net/ipv6/conf/all/hop_limit", "64", True),
    ("net/ipv6/conf/default/hop_limit", "64", True),
    # no autoconfiguration surprises, addresses usable immediately
    ("net/ipv6/conf/all/accept_ra", "0", True),
    ("net/ipv6/conf/default/accept_ra", "0", True),
    ("net/ipv6/conf/all/accept_dad", "0", True),
    ("net/ipv6/conf/default/accept_dad", "0", True),
    # so set_link(down) does not throw IPv6 addresses away
    ("net/ipv6/conf/all/keep_addr_on_down", "1", False),
    ("net/ipv6/conf/default/keep_addr_on_down", "1", False),
    # ECMP makes paths asymmetric; reverse-path filtering would drop that
    ("net/ipv4/conf/all/rp_filter", "0", True),
    ("net/ipv4/conf/default/rp_filter", "0", True),
)
_ROUTER_SYSCTLS: tuple[tuple[str, str, bool], ...] = (
    ("net/ipv4/ip_forward", "1", True),
    ("net/ipv6/conf/all/forwarding", "1", True),
    ("net/ipv6/conf/default/forwarding", "1", True),
    # time-exceeded from the interface the probe came in on (see expected_hops)
    ("net/ipv4/icmp_errors_use_inbound_ifaddr", "1", True),
)


# ECMP hashing.  Policy 1 ("L4") short-circuits to skb->hash when the packet
# carries a socket's l4 hash, and that survives the veth hop into r1: any
# *connected* UDP socket or TCP socket in src gets a random per-socket
# sk_txhash, so its packets took a random branch regardless of ports (seen
# with traceroute, which connects one socket per probe).  Policy 3 (custom
# fields, Linux >= 5.12 for v4 and v6) always dissects the headers; the fields
# below are the 5-tuple, i.e. what policy 1 means on a real router.  A fixed
# seed (Linux >= 6.11) makes "which flow takes which branch" reproducible
# between runs.
_HASH_FIELDS_5TUPLE = "0x37"  # src ip | dst ip | ip proto | src port | dst port
_HASH_SEED = "1"


def _configure_ecmp_hash() -> list[str]:
    """Set 5-tuple multipath hashing (policy 3, else 1); return optional knobs skipped."""
    skipped = _write_sysctls([("net/ipv4/fib_multipath_hash_seed", _HASH_SEED, False)])
    for family in ("ipv4", "ipv6"):
        fields_ok = not _write_sysctls(
            [(f"net/{family}/fib_multipath_hash_fields", _HASH_FIELDS_5TUPLE, False)]
        )
        policy = "3" if fields_ok else "1"
        try:
            _write_sysctls([(f"net/{family}/fib_multipath_hash_policy", policy, True)])
        except OSError:
            if policy == "1":
                raise
            fields_ok = False
            _write_sysctls([(f"net/{family}/fib_multipath_hash_policy", "1", True)])
        if not fields_ok:
            skipped.append(f"net/{family}/fib_multipath_hash_policy=3 (used 1)")
    return skipped


def _write_sysctls(settings: Iterable[tuple[str, str, bool]]) -> list[str]:
    """Write sysctls in the current thread's namespace; return optional ones skipped."""
    skipped = []
    for path, value, required in settings:
        try:
            with open(f"/proc/sys/{path}", "w") as f:
                f.write(value)
        except OSError:
            if required:
                raise
            skipped.append(path)
    return skipped


# --------------------------------------------------------------------------- #
# The lab
# --------------------------------------------------------------------------- #

_open_labs: set[Lab] = set()
_open_lock = threading.Lock()
_seq = 0


def _close_open_labs() -> None:
    for lab in list(_open_labs):
        lab.close()


atexit.register(_close_open_labs)


class Lab:
    """A running set of namespaces implementing a :class:`Topology`.

    ``build()`` creates everything (first deleting stale namespaces of dead
    runs) and waits until the hosts reach each other; ``close()`` deletes
    every namespace again and is idempotent.  Failures during build clean up
    before re-raising, and an atexit hook closes labs a test run forgot.
    """

    def __init__(self, topology: Topology = DIAMOND, *, prefix: str | None = None) -> None:
        """Describe a lab; nothing is created until :meth:`build`.

        ``prefix`` overrides the ``ndl<pid>.<seq>`` namespace prefix; a custom
        one is not recognised by :func:`cleanup_stale`, so avoid it in tests.
        """
        global _seq
        self.topology = topology
        if prefix is None:
            with _open_lock:
                prefix = f"{NS_PREFIX}{os.getpid()}.{_seq}"
                _seq += 1
        self.prefix = prefix
        self.built = False
        self.skipped_sysctls: dict[str, list[str]] = {}
        self.build_seconds: float | None = None
        self._down: set[frozenset[str]] = set()

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "built" if self.built else "not built"
        return f"<Lab {self.prefix} {state} nodes={list(self.topology.names)}>"

    def build(self, *, ready_timeout: float = 5.0) -> Self:
        """Create namespaces, links, addresses and routes; wait for reachability."""
        if self.built:
            return self
        start = time.monotonic()
        cleanup_stale()
        with _open_lock:
            _open_labs.add(self)
        try:
            self._create_namespaces()
            self._configure_sysctls()
            self._create_links()
            self._configure_nodes(self.topology.names)
            self.built = True
            self.wait_ready(timeout=ready_timeout)
        except BaseException:
            self.close()
            raise
        self.build_seconds = time.monotonic() - start
        return self

    def close(self) -> None:
        """Delete all of this lab's namespaces (safe to call repeatedly)."""
        self.built = False
        try:
            _delete_namespaces(n for n in _lab_namespaces() if n.startswith(self.prefix + "-"))
        finally:
            with _open_lock:
                _open_labs.discard(self)

    def _create_namespaces(self) -> None:
        script = "".join(f"netns add {self.ns(n)}\n" for n in self.topology.names)
        _run(["ip", "-batch", "-"], input=script)

    def _configure_sysctls(self) -> None:
        # before any veth exists, so "default" settings apply to every link
        for node in self.topology.nodes:
            settings = _COMMON_SYSCTLS + (_ROUTER_SYSCTLS if node.router else ())
            with self.enter(node.name):
                skipped = _write_sysctls(settings)
                if node.router:
                    skipped += _configure_ecmp_hash()
                self.skipped_sysctls[node.name] = skipped

    def _create_links(self) -> None:
        # Each end is created directly inside its namespace: the pair never
        # exists in the host namespace.
        lines = []
        for link in self.topology.links:
            a, b = link.iface(link.left), link.iface(link.right)
            lines.append(
                f"link add {a.name} netns {self.ns(link.left)} type veth "
                f"peer name {b.name} netns {self.ns(link.right)}\n"
            )
        _run(["ip", "-batch", "-"], input="".join(lines))

    def _node_script(self, name: str) -> str:
        """Idempotent ``ip -batch`` config of one node (re-run by set_link up)."""
        node = self.topology.node(name)
        lines = ["link set lo up"]
        for iface in node.ifaces:
            lines += [
                f"link set {iface.name} up",
                f"addr replace {iface.v4} dev {iface.name}",
                f"addr replace {iface.v6} dev {iface.name} nodad",
            ]
        for version in (4, 6):
            for prefix, hops in self.topology.routes(name, version):
                if len(hops) == 1:
                    gw, dev = hops[0]
                    lines.append(f"route replace {prefix} via {gw} dev {dev}")
                elif hops:
                    nh = " ".join(f"nexthop via {gw} dev {dev}" for gw, dev in hops)
                    lines.append(f"route replace {prefix} {nh}")
        return "".join(line + "\n" for line in lines)

    def _configure_nodes(self, names: Iterable[str]) -> None:
        procs = []
        for name in names:
            p = subprocess.Popen(
                ["ip", "-n", self.ns(name), "-batch", "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append((p, self._node_script(name)))
        errors = []
        for p, script in procs:
            out, err = p.communicate(script, timeout=DEFAULT_TIMEOUT)
            if p.returncode != 0:
                errors.append(LabCommandError(p.returncode, p.args, out, err))
        if errors:
            raise errors[0]

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until the first host reaches every other host (v4 and v6).

        The first probes also resolve ARP/ND along the way, so tests do not
        see a slow or lost first packet.
        """
        hosts = [n for n in self.topology.nodes if not n.router]
        if len(hosts) < 2:
            return
        first = hosts[0]
        targets = [h.addr(v) for h in hosts[1:] for v in (4, 6)]
        deadline = time.monotonic() + timeout
        while True:
            missing = self.unreachable(first.name, targets)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"lab not ready: {first.name} cannot reach {missing}")
            time.sleep(0.05)

    # -- node access -----------------------------------------------------------

    def ns(self, node: str) -> str:
        """Full namespace name of ``node`` (for ``ip netns exec`` etc.)."""
        self.topology.node(node)  # validate
        return f"{self.prefix}-{node}"

    def node(self, name: str) -> Node:
        """The :class:`Node` called ``name``."""
        return self.topology.node(name)

    @property
    def nodes(self) -> tuple[Node, ...]:
        """All nodes in declaration order."""
        return self.topology.nodes

    # Shortcuts for the default diamond (AttributeError-free only there).
    @property
    def src(self) -> Node:
        """The probing host of the diamond."""
        return self.node("src")

    @property
    def r1(self) -> Node:
        """Router next to src."""
        return self.node("r1")

    @property
    def r2a(self) -> Node:
        """Upper ECMP branch router."""
        return self.node("r2a")

    @property
    def r2b(self) -> Node:
        """Lower ECMP branch router."""
        return self.node("r2b")

    @property
    def r3(self) -> Node:
        """Router next to dst."""
        return self.node("r3")

    @property
    def dst(self) -> Node:
        """The probed host of the diamond."""
        return self.node("dst")

    def enter(self, node: str) -> contextlib.AbstractContextManager[None]:
        """Move the current thread into ``node``'s namespace; see :func:`netns`."""
        return netns(NETNS_DIR / self.ns(node))

    # -- running things --------------------------------------------------------

    def exec(
        self,
        node: str,
        *argv: Arg,
        check: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``node`` (``ip netns exec``), text output captured.

        ``env`` replaces the environment when given (default: inherit).
        Raises :class:`LabCommandError` on non-zero exit when ``check``.
        """
        return _run(
            ["ip", "netns", "exec", self.ns(node), *argv],
            check=check,
            timeout=timeout,
            input=input,
            env=env,
            cwd=cwd,
        )

    def python(
        self,
        node: str,
        *args: Arg,
        check: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run this interpreter inside ``node``, e.g. ``python("src", "-m", "netdiag.ping")``.

        The current environment is passed through, updated with ``env``, and
        the repository root is prepended to PYTHONPATH so the working tree's
        netdiag is what runs.
        """
        full_env = {**os.environ, **(env or {})}
        paths = [str(PROJECT_ROOT), *filter(None, full_env.get("PYTHONPATH", "").split(":"))]
        full_env["PYTHONPATH"] = ":".join(paths)
        return self.exec(
            node,
            sys.executable,
            *args,
            check=check,
            timeout=timeout,
            input=input,
            env=full_env,
            cwd=cwd,
        )

    def unreachable(
        self, node: str, targets: Iterable[IPAddress], *, timeout_ms: int = 300, retries: int = 2
    ) -> list[IPAddress]:
        """Those ``targets`` that do not answer ping from ``node`` (fast, parallel)."""
        targets = list(targets)
        if not targets:
            return []
        if shutil.which("fping"):
            proc = self.exec(
                node, "fping", "-u", "-r", retries, "-t", timeout_ms, *targets, check=False
            )
            if proc.returncode not in (0, 1):
                raise LabCommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
            bad = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
            return [t for t in targets if str(t) in bad]
        wait = str(max(1, round(timeout_ms * (retries + 1) / 1000)))
        procs = [
            (
                t,
                subprocess.Popen(
                    ["ip", "netns", "exec", self.ns(node), "ping", "-c1", "-W", wait, str(t)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
            for t in targets
        ]
        return [t for t, p in procs if p.wait() != 0]

    # -- firewall ----------------------------------------------------------------

    def nft(self, node: str, ruleset: str) -> None:
        """Load an nftables ruleset (``nft -f -``) in ``node``.

        Example -- make dst drop echo requests with sequence numbers 2 and 4::

            lab.nft("dst", '''
                table inet t {
                    chain in {
                        type filter hook input priority 0;
                        icmp type echo-request icmp sequence { 2, 4 } drop
                        icmpv6 type echo-request icmpv6 sequence { 2, 4 } drop
                    }
                }''')

        On one line, nft 1.0.6 wants a ``;`` after each closing brace but the
        last (``... drop; }; }``); multi-line rulesets avoid the trap.  Undo
        with :meth:`nft_flush` (or :meth:`reset`).
        """
        self.exec(node, "nft", "-f", "-", input=ruleset)

    def nft_flush(self, node: str) -> None:
        """Remove every nftables table/rule in ``node``."""
        self.exec(node, "nft", "flush", "ruleset")

    # -- faults --------------------------------------------------------------

    def set_link(self, node_a: str, node_b: str, up: bool) -> None:
        """Take the link between two nodes down (both ends) or back up.

        The kernel drops routes through a downed interface, so bringing it up
        re-applies both nodes' full configuration.  Other nodes keep their
        routes: like a real network without a routing protocol, traffic that
        they send towards the dead link is lost.
        """
        link = self.topology.link(node_a, node_b)
        state = "up" if up else "down"
        for end in link.ends:
            _run(["ip", "-n", self.ns(end), "link", "set", link.iface(end).name, state])
        key = frozenset(link.ends)
        if up:
            self._configure_nodes(link.ends)
            self._down.discard(key)
        else:
            self._down.add(key)

    def reset(self) -> None:
        """Undo test-made changes: flush nftables everywhere, bring downed links up."""
        procs = [
            subprocess.Popen(
                ["ip", "netns", "exec", self.ns(n), "nft", "flush", "ruleset"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for n in self.topology.names
        ]
        for p in procs:
            p.wait()
        for key in list(self._down):
            a, b = sorted(key)
            self.set_link(a, b, up=True)
