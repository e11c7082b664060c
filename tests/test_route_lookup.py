"""RouteFinder.first_hops: the kernel's own route for a destination, asked over rtnetlink.

Lab tests compare with ``ip -j route get fibmatch`` in the same namespace (ground truth, and
``ip -j nexthop get`` for routes that point at nexthop objects). No packet is sent: a route
lookup is a kernel call. Addresses are lab addresses all the same.

The routes under test live in a small lab of their own (``h`` between two hosts ``g1``/``g2``),
so adding nexthop objects, rules and reject routes cannot disturb the shared diamond; the Lab
removes its namespaces even when a test fails.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator

import pytest
from lab import Lab, Topology

from netdiag.sock import Bind, RouteFinder
from netdiag.sock.bind import parse_address
from netdiag.wire.rtnetlink import NLM_F_MULTI, NLMSG_DONE, NLMSG_ERROR, RTM_NEWROUTE

#: h's routes: nexthop objects, multipath, on-link, reject routes, and a source-policy table
ROUTES = """\
nexthop add id 1 via 198.18.1.2 dev to-g1
nexthop add id 2 via 198.18.2.2 dev to-g2
nexthop add id 10 group 1/2
nexthop add id 20 blackhole
nexthop add id 3 via 2001:db8:1::2 dev to-g1
nexthop add id 4 via 2001:db8:2::2 dev to-g2
nexthop add id 11 group 3/4
route add 198.18.100.0/24 nhid 10
route add 198.18.101.0/24 nhid 1
route add 198.18.106.0/24 nhid 20
route add 2001:db8:100::/64 nhid 11
route add 2001:db8:101::/64 nhid 3
route add 198.18.102.0/24 dev to-g1
route add 2001:db8:102::/64 dev to-g1
route add 198.18.103.0/24 nexthop via 198.18.1.2 dev to-g1 nexthop via 198.18.2.2 dev to-g2
route add 2001:db8:103::/64 nexthop via 2001:db8:1::2 dev to-g1 nexthop via 2001:db8:2::2 dev to-g2
route add unreachable 198.18.104.0/24
route add blackhole 198.18.105.0/24
route add prohibit 198.18.108.0/24
route add unreachable 2001:db8:104::/64
route add blackhole 2001:db8:105::/64
route add 198.18.107.0/24 via inet6 2001:db8:1::2 dev to-g1
route add 198.18.109.0/24 via 198.18.1.2 dev to-g1
route add 198.18.109.0/24 table 100 \
    nexthop via 198.18.1.2 dev to-g1 nexthop via 198.18.2.2 dev to-g2
rule add from 198.18.2.1 table 100
route add 198.18.110.0/25 dev to-g1
route add 198.18.110.0/24 nexthop via 198.18.2.2 dev to-g2 nexthop via 198.18.2.3 dev to-g2
route add 2001:db8:110::/65 dev to-g1
route add 2001:db8:110::/64 nexthop via 2001:db8:2::2 dev to-g2 nexthop via 2001:db8:2::3 dev to-g2
"""


@pytest.fixture(scope="module")
def vee() -> Iterator[Lab]:
    """h with links to g1 (198.18.1.0/24, 2001:db8:1::/64) and g2 (.2), plus ROUTES in h."""
    topology = Topology.create(nodes=("h", "g1", "g2"), links=[("h", "g1"), ("h", "g2")])
    with Lab(topology) as lab:
        lab.exec("h", "ip", "-batch", "-", input=ROUTES)
        yield lab


def truth(lab: Lab, node: str, dst: str, *extra: str) -> int | None:
    """First hops according to iproute2 in ``node``: ``ip -j route get fibmatch dst ...``."""
    proc = lab.exec(node, "ip", "-j", "route", "get", "fibmatch", dst, *extra, check=False)
    if proc.returncode != 0:
        return None  # no route, unreachable, blackhole (IPv4 answers those with an error)
    (route,) = json.loads(proc.stdout)
    kind = route.get("type", "unicast")
    if kind == "local":
        return 1
    if kind != "unicast":
        return None
    if "nhid" in route:
        out = lab.exec(node, "ip", "-j", "nexthop", "get", "id", str(route["nhid"])).stdout
        (nh,) = json.loads(out)
        if nh.get("blackhole"):
            return None
        return len(nh["group"]) if "group" in nh else 1
    return len(route.get("nexthops", ())) or 1


CASES = [
    # (destination, expected first hops, why)
    ("198.18.100.1", 2, "nexthop-object group 1/2"),
    ("2001:db8:100::1", 2, "IPv6 nexthop-object group 3/4"),
    ("198.18.101.1", 1, "single nexthop object"),
    ("2001:db8:101::1", 1, "single IPv6 nexthop object"),
    ("198.18.106.1", None, "blackhole nexthop object"),
    ("198.18.102.1", 1, "on-link"),
    ("2001:db8:102::1", 1, "IPv6 on-link"),
    ("198.18.103.1", 2, "classic multipath"),
    ("2001:db8:103::1", 2, "IPv6 classic multipath"),
    ("198.18.104.1", None, "unreachable"),
    ("198.18.105.1", None, "blackhole"),
    ("198.18.108.1", None, "prohibit"),
    ("2001:db8:104::1", None, "IPv6 unreachable"),
    ("2001:db8:105::1", None, "IPv6 blackhole"),
    ("198.18.107.1", 1, "IPv4 via an IPv6 gateway"),
    ("198.18.109.1", 1, "main table (source not bound)"),
    ("198.18.1.1", 1, "local address"),
    ("2001:db8:2::1", 1, "local IPv6 address"),
    ("198.19.0.1", None, "no route at all"),
    ("2001:db8:ffff::1", None, "no IPv6 route at all"),
]


@pytest.mark.privileged
@pytest.mark.lab
@pytest.mark.parametrize(("dst", "expected", "why"), CASES, ids=[c[2] for c in CASES])
def test_first_hops_match_iproute2(vee: Lab, dst: str, expected: int | None, why: str) -> None:
    with vee.enter("h"):
        finder = RouteFinder(parse_address(dst).version == 6)
    try:
        assert finder.first_hops(dst) == expected, why
    finally:
        finder.close()
    assert truth(vee, "h", dst) == expected, f"iproute2 disagrees with the case table: {why}"


@pytest.mark.privileged
@pytest.mark.lab
def test_bound_source_follows_policy_routing(vee: Lab) -> None:
    """``from 198.18.2.1`` selects table 100 (ECMP) by rule: RTA_SRC must reach the kernel."""
    with vee.enter("h"):
        bound = RouteFinder(False, Bind(v4="198.18.2.1"))
        unbound = RouteFinder(False)
    try:
        assert bound.first_hops("198.18.109.1") == 2
        assert unbound.first_hops("198.18.109.1") == 1
    finally:
        bound.close()
        unbound.close()
    assert truth(vee, "h", "198.18.109.1", "from", "198.18.2.1") == 2


@pytest.mark.privileged
@pytest.mark.lab
@pytest.mark.parametrize("dst", ["198.18.103.1", "2001:db8:103::1", "198.18.100.1"])
def test_bound_device_counts_only_its_paths(vee: Lab, dst: str) -> None:
    """With SO_BINDTODEVICE the kernel uses the path on that device, not a hash over all."""
    v6 = ":" in dst
    with vee.enter("h"):
        finder = RouteFinder(v6, Bind(device="to-g2"))
        free = RouteFinder(v6)
    try:
        assert finder.first_hops(dst) == 1
        assert free.first_hops(dst) == 2
    finally:
        finder.close()
        free.close()


@pytest.mark.privileged
@pytest.mark.lab
def test_nexthop_group_is_resolved_without_compat_mode(vee: Lab) -> None:
    """With nexthop_compat_mode=0 the route carries only RTA_NH_ID: the group must be asked."""
    vee.exec("h", "sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0")
    try:
        shown = json.loads(
            vee.exec("h", "ip", "-j", "route", "get", "fibmatch", "198.18.100.1").stdout
        )
        assert "nexthops" not in shown[0] and shown[0]["nhid"] == 10
        with vee.enter("h"):
            finder = RouteFinder(False)
        try:
            assert finder.first_hops("198.18.100.1") == 2
        finally:
            finder.close()
    finally:
        vee.exec("h", "sysctl", "-qw", "net.ipv4.nexthop_compat_mode=1")


@pytest.mark.privileged
@pytest.mark.lab
@pytest.mark.parametrize("dst", ["198.18.110.1", "2001:db8:110::1"])
def test_bound_device_selects_the_route(vee: Lab, dst: str) -> None:
    """A more specific route via another device does not apply to a socket bound to to-g2:
    the lookup must carry RTA_OIF, as the bound socket's own lookups do."""
    v6 = ":" in dst
    with vee.enter("h"):
        finder = RouteFinder(v6, Bind(device="to-g2"))
        free = RouteFinder(v6)
    try:
        assert free.first_hops(dst) == 1  # the on-link /25 (/65)
        assert finder.first_hops(dst) == 2  # the /24 (/64): two gateways on to-g2
    finally:
        finder.close()
        free.close()
    assert truth(vee, "h", dst, "oif", "to-g2") == 2


# -- the diamond ---------------------------------------------------------------------------------


@pytest.mark.privileged
@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(("node", "expected"), [("src", 1), ("r1", 2), ("r3", 1), ("dst", 1)])
def test_diamond(lab: Lab, node: str, expected: int, version: int) -> None:
    """src has one gateway (r1); r1 splits over r2a/r2b; r3 is on dst's link; dst is dst."""
    dst = lab.dst.v4 if version == 4 else lab.dst.v6
    with lab.enter(node):
        finder = RouteFinder(version == 6)
    try:
        assert finder.first_hops(dst) == expected  # asked outside: the socket stays in `node`
    finally:
        finder.close()
    assert truth(lab, node, str(dst)) == expected


@pytest.mark.privileged
def test_closed_finder_answers_none(lab: Lab) -> None:
    with lab.enter("r1"):
        finder = RouteFinder(False)
    finder.close()
    finder.close()
    assert finder.first_hops(lab.dst.v4) is None


# -- the reply loop, against a scripted socket ------------------------------------------------


class ScriptedNetlink:
    """Stands in for the netlink socket: answers each request with ``script(seq)``."""

    def __init__(self, script: object) -> None:
        self.script = script
        self.replies: list[bytes] = []
        self.requests: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.requests.append(data)
        seq = struct.unpack_from("=I", data, 8)[0]
        self.replies.extend(self.script(seq))  # type: ignore[operator]
        return len(data)

    def recv(self, bufsize: int) -> bytes:
        if not self.replies:
            raise TimeoutError("timed out")
        return self.replies.pop(0)

    def settimeout(self, value: float) -> None:
        pass

    def close(self) -> None:
        pass


PORT = 4242


def msg(type_: int, body: bytes, seq: int, *, flags: int = 0, pid: int = PORT) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), type_, flags, seq, pid) + body


def reply_body(oif: int) -> bytes:
    """A unicast on-link route (rtmsg + RTA_OIF), AF_INET."""
    return struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 3, 0, 1, 0) + struct.pack(
        "=HHI", 8, 4, oif
    )


def multipath_body() -> bytes:
    """A two-path route: RTA_MULTIPATH with two gatewayed rtnexthops."""
    nhs = b"".join(
        struct.pack("=HBBi", 16, 0, 0, i) + struct.pack("=HH", 8, 5) + bytes([198, 18, i, 2])
        for i in (1, 2)
    )
    return (
        struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 3, 0, 1, 0)
        + struct.pack("=HH", 4 + len(nhs), 9)
        + nhs
    )


def scripted(script: object) -> RouteFinder:
    finder = RouteFinder(False)
    finder._netlink.close()  # type: ignore[union-attr]
    finder._netlink = ScriptedNetlink(script)  # type: ignore[assignment]
    finder._portid = PORT
    return finder


def test_stale_and_foreign_replies_are_skipped() -> None:
    """A late reply to an earlier request (old seq) or another socket's (pid) is not ours."""
    finder = scripted(
        lambda seq: [
            msg(RTM_NEWROUTE, multipath_body(), seq - 1),
            msg(RTM_NEWROUTE, multipath_body(), seq, pid=PORT + 1)
            + msg(RTM_NEWROUTE, reply_body(3), seq),
        ]
    )
    try:
        assert finder.first_hops("198.18.6.1") == 1
    finally:
        finder.close()


def test_multi_part_reply_is_read_to_done() -> None:
    finder = scripted(
        lambda seq: [
            msg(RTM_NEWROUTE, multipath_body(), seq, flags=NLM_F_MULTI),
            msg(RTM_NEWROUTE, reply_body(3), seq, flags=NLM_F_MULTI),
            msg(NLMSG_DONE, b"\0\0\0\0", seq, flags=NLM_F_MULTI),
        ]
    )
    try:
        assert finder.first_hops("198.18.6.1") == 2  # the first part is the answer
        assert finder._netlink.replies == []  # type: ignore[union-attr]
    finally:
        finder.close()


@pytest.mark.parametrize(
    "script",
    [
        lambda seq: [msg(NLMSG_ERROR, struct.pack("=i", -101) + b"\0" * 16, seq)],
        lambda seq: [],  # silence: the timeout
        lambda seq: [msg(RTM_NEWROUTE, b"\x02\x18", seq)],  # malformed
        lambda seq: [b"\x01\x02\x03"],  # not even a header
        lambda seq: [msg(NLMSG_DONE, b"\0\0\0\0", seq, flags=NLM_F_MULTI)],  # empty multi-part
    ],
    ids=["ENETUNREACH", "timeout", "malformed", "garbage", "empty"],
)
def test_any_fault_is_none(script: object) -> None:
    finder = scripted(script)
    try:
        assert finder.first_hops("198.18.6.1") is None
    finally:
        finder.close()


def test_each_request_gets_a_new_sequence_number() -> None:
    finder = scripted(lambda seq: [msg(RTM_NEWROUTE, reply_body(3), seq)])
    try:
        assert [finder.first_hops("198.18.6.1") for _ in range(3)] == [1, 1, 1]
        seqs = [struct.unpack_from("=I", r, 8)[0] for r in finder._netlink.requests]  # type: ignore[union-attr]
        assert len(set(seqs)) == 3
    finally:
        finder.close()
