"""rtnetlink route/nexthop codec (netdiag.wire.rtnetlink), fed bytes built by hand.

Layouts are the kernel uapi structs (linux/netlink.h, linux/rtnetlink.h, linux/nexthop.h). The
hex vectors are little-endian (netlink uses host byte order; the struct-built ones follow the
host); the ``REAL_*`` ones were captured from Linux 6.18 in the lab (``python`` session sending
``route_request(...)`` on an AF_NETLINK socket inside the node), so the hand layout is checked
against what a kernel really sends.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netdiag.wire.rtnetlink import (
    NHA_BLACKHOLE,
    NHA_GATEWAY,
    NHA_GROUP,
    NHA_ID,
    NHA_OIF,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    RTA_DST,
    RTA_GATEWAY,
    RTA_MULTIPATH,
    RTA_NH_ID,
    RTA_OIF,
    RTA_TABLE,
    RTA_VIA,
    RTM_F_FIB_MATCH,
    RTM_GETNEXTHOP,
    RTM_GETROUTE,
    RTM_NEWNEXTHOP,
    RTM_NEWROUTE,
    RTN_BLACKHOLE,
    RTN_LOCAL,
    RTN_UNICAST,
    RTN_UNREACHABLE,
    GroupMember,
    Nexthop,
    NexthopObject,
    Route,
    count_first_hops,
    nexthop_request,
    parse_messages,
    parse_nexthop,
    parse_route,
    route_request,
)

little_endian = pytest.mark.skipif(
    sys.byteorder != "little", reason="hex vectors are little-endian (netlink is host order)"
)

A = ipaddress.ip_address
DST4 = A("198.18.6.2")
DST6 = A("2001:db8:6::2")
GW_A, GW_B = A("198.18.2.2"), A("198.18.3.2")


# -- builders: the uapi structs, field by field ---------------------------------------------------


def nlmsg(type_: int, body: bytes, *, flags: int = 0, seq: int = 7, pid: int = 0x248F) -> bytes:
    """struct nlmsghdr: len u32 (header included), type u16, flags u16, seq u32, pid u32."""
    return struct.pack("=IHHII", 16 + len(body), type_, flags, seq, pid) + body


def attr(type_: int, value: bytes) -> bytes:
    """struct rtattr / nlattr: len u16 (header included), type u16, value, pad to 4."""
    raw = struct.pack("=HH", 4 + len(value), type_) + value
    return raw + b"\0" * (-len(raw) % 4)


def rtmsg(family: int, dst_len: int, rtype: int, *, table: int = 254, flags: int = 0) -> bytes:
    """struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type; flags u32."""
    return struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, 3, 0, rtype, flags)


def rtnexthop(ifindex: int, *attrs: bytes, weight: int = 1, flags: int = 0) -> bytes:
    """struct rtnexthop: len u16 (incl. its attributes), flags u8, hops u8 (weight-1), ifindex."""
    body = b"".join(attrs)
    return struct.pack("=HBBi", 8 + len(body), flags, weight - 1, ifindex) + body


def u32(n: int) -> bytes:
    return struct.pack("=I", n)


def nhmsg(family: int) -> bytes:
    """struct nhmsg: family, scope, protocol, resvd (u8 each); flags u32."""
    return struct.pack("=BBBBI", family, 0, 4, 0, 0)


def nlerr(err: int, seq: int = 7) -> bytes:
    """NLMSG_ERROR: struct nlmsgerr = error s32 (-errno), then the request's header."""
    request = struct.pack("=IHHII", 36, RTM_GETROUTE, NLM_F_REQUEST, seq, 0)
    return nlmsg(NLMSG_ERROR, struct.pack("=i", err) + request, seq=seq)


def route_reply(family: int, dst_len: int, rtype: int, *attrs: bytes) -> bytes:
    return nlmsg(RTM_NEWROUTE, rtmsg(family, dst_len, rtype) + b"".join(attrs))


V4 = socket.AF_INET
V6 = socket.AF_INET6

ECMP4 = route_reply(
    V4,
    24,
    RTN_UNICAST,
    attr(RTA_TABLE, u32(254)),
    attr(RTA_DST, A("198.18.6.0").packed),
    attr(
        RTA_MULTIPATH,
        rtnexthop(3, attr(RTA_GATEWAY, GW_A.packed))
        + rtnexthop(4, attr(RTA_GATEWAY, GW_B.packed), weight=3),
    ),
)

# -- captured from Linux 6.18 in the diamond lab (see the module docstring) -----------------------

#: r1: ``route_request(198.18.6.2, seq=7)`` -> 198.18.6.0/24 nexthop via 198.18.2.2 dev 3,
#: nexthop via 198.18.3.2 dev 4 (RTA_TABLE, RTA_DST, RTA_MULTIPATH)
REAL_ECMP4 = bytes.fromhex(
    "5000000018000000070000008f24000002180000fe0300010000000008000f00fe00000008000100c6120600"
    "24000900100000000300000008000500c6120202100000000400000008000500c6120302"
)
#: r1: the same for 2001:db8:6::2 (RTA_PRIORITY, RTA_MULTIPATH, RTA_CACHEINFO, RTA_PREF too)
REAL_ECMP6 = bytes.fromhex(
    "a800000018000000070000008f2400000a400000fe0300010000000008000f00fe0000001400010020010db8"
    "00060000000000000000000008000600000400003c0009001c000000030000001400050020010db800020000"
    "00000000000000021c000000040000001400050020010db800030000000000000000000224000c0000000000"
    "000000000000000000000000000000000000000000000000000000000500140000000000"
)
#: src: the default route via 198.18.1.1 dev 2 (RTA_TABLE, RTA_GATEWAY, RTA_OIF)
REAL_DEFAULT4 = bytes.fromhex(
    "3400000018000000070000008f24000002000000fe0300010000000008000f00fe00000008000500c6120101"
    "0800040002000000"
)
#: dst: its own address, table local, type local
REAL_LOCAL4 = bytes.fromhex(
    "3c00000018000000070000008f24000002200000fe02fe020000000008000f00fe00000008000100c6120602"
    "08000700c61206020800040002000000"
)
#: r1, 198.19.9.9 (no route): NLMSG_ERROR -101 (ENETUNREACH), then the request's header
REAL_ENETUNREACH = bytes.fromhex(
    "3800000002000000080000008f2400009bffffff240000001a000100080000000000000002200000000000"
    "000020000008000100c6130909"
)
#: r1 after ``ip nexthop add id 1 via 198.18.2.2 dev to-r2a``: ``nexthop_request(1, seq=9)``
REAL_NH_SINGLE = bytes.fromhex(
    "3000000068000000090000008f24000002fd0000000000000800010001000000080005000300000008000600"
    "c6120202"
)
#: r1 after ``ip nexthop add id 10 group 1/2,3``: ``nexthop_request(10, seq=9)``
REAL_NH_GROUP = bytes.fromhex(
    "4400000068000000090000008f2400000000000000000000080001000a000000060003000000000014000200"
    "0100000000000000020000000200000008000e0000000080"
)


# -- requests -----------------------------------------------------------------------------------


@little_endian
def test_route_request_v4_golden() -> None:
    """What ``ip route get fibmatch 198.18.6.2`` sends, seq 7."""
    assert route_request(DST4, seq=7) == bytes.fromhex(
        "24000000"  # nlmsg_len 36
        "1a00"  # RTM_GETROUTE (26)
        "0100"  # NLM_F_REQUEST
        "07000000"  # seq
        "00000000"  # pid: 0, the kernel fills in our port
        "02"  # rtm_family AF_INET
        "20"  # rtm_dst_len 32
        "000000000000"  # src_len, tos, table, protocol, scope, type
        "00200000"  # rtm_flags RTM_F_FIB_MATCH (0x2000)
        "0800"
        "0100"
        "c6120602"  # RTA_DST 198.18.6.2
    )


@little_endian
def test_route_request_v6_with_src_and_oif_golden() -> None:
    data = route_request(DST6, seq=0x01020304, oif=5, src=A("2001:db8:1::2"), fib_match=False)
    assert data == bytes.fromhex(
        "4c000000"  # nlmsg_len 76 = 16 + rtmsg 12 + RTA_DST 20 + RTA_SRC 20 + RTA_OIF 8
        "1a00"  # RTM_GETROUTE
        "0100"  # NLM_F_REQUEST
        "04030201"  # seq 0x01020304
        "00000000"  # pid
        "0a"  # AF_INET6
        "80"  # dst_len 128
        "80"  # src_len 128
        "0000000000"  # tos, table, protocol, scope, type
        "00000000"  # rtm_flags: no RTM_F_FIB_MATCH
        "1400"
        "0100"
        "20010db8000600000000000000000002"  # RTA_DST
        "1400"
        "0200"
        "20010db8000100000000000000000002"  # RTA_SRC
        "0800"
        "0400"
        "05000000"  # RTA_OIF 5
    )


def test_route_request_header_fields() -> None:
    (msg,) = parse_messages(route_request(DST4, seq=42))
    assert (msg.type, msg.flags, msg.seq) == (RTM_GETROUTE, NLM_F_REQUEST, 42)
    assert struct.unpack_from("=I", msg.payload, 8)[0] == RTM_F_FIB_MATCH


def test_route_request_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        route_request("198.18.6.2", seq=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same family"):
        route_request(DST4, seq=1, src=A("2001:db8::1"))
    with pytest.raises(ValueError, match="sequence"):
        route_request(DST4, seq=-1)
    with pytest.raises(ValueError, match="interface index"):
        route_request(DST4, seq=1, oif=-3)


@little_endian
def test_nexthop_request_golden() -> None:
    assert nexthop_request(10, seq=9) == bytes.fromhex(
        "20000000"  # nlmsg_len 32 = 16 + nhmsg 8 + NHA_ID 8
        "6a00"  # RTM_GETNEXTHOP (106)
        "0100"  # NLM_F_REQUEST
        "09000000"  # seq
        "00000000"  # pid
        "00000000"
        "00000000"  # struct nhmsg: AF_UNSPEC, scope, protocol, resvd; flags
        "0800"
        "0100"
        "0a000000"  # NHA_ID 10
    )
    assert parse_messages(nexthop_request(1, seq=1))[0].type == RTM_GETNEXTHOP
    with pytest.raises(ValueError):
        nexthop_request(0, seq=1)


# -- route replies ------------------------------------------------------------------------------


def test_ecmp_route() -> None:
    route = parse_route(ECMP4)
    assert route == Route(
        family=V4,
        type="unicast",
        table=254,
        dst=ipaddress.ip_network("198.18.6.0/24"),
        nexthops=(Nexthop(GW_A, 3, 1), Nexthop(GW_B, 4, 3)),
    )
    assert route.first_hops == 2


@little_endian
def test_real_kernel_replies() -> None:
    ecmp4 = parse_route(REAL_ECMP4)
    assert ecmp4.nexthops == (Nexthop(GW_A, 3), Nexthop(GW_B, 4))
    assert (ecmp4.type, ecmp4.table, str(ecmp4.dst), ecmp4.first_hops) == (
        "unicast",
        254,
        "198.18.6.0/24",
        2,
    )
    ecmp6 = parse_route(REAL_ECMP6)
    assert ecmp6.nexthops == (Nexthop(A("2001:db8:2::2"), 3), Nexthop(A("2001:db8:3::2"), 4))
    assert (str(ecmp6.dst), ecmp6.first_hops) == ("2001:db8:6::/64", 2)
    default = parse_route(REAL_DEFAULT4)
    assert (str(default.dst), default.gateway, default.oif, default.nexthops) == (
        "0.0.0.0/0",
        A("198.18.1.1"),
        2,
        (),
    )
    assert default.first_hops == 1
    local = parse_route(REAL_LOCAL4)
    # 254: with no custom rules, IPv4 merges the local table into main (fib_has_custom_rules)
    assert (local.type, local.table, local.first_hops) == ("local", 254, 1)
    with pytest.raises(OSError) as exc:
        parse_route(REAL_ENETUNREACH)
    assert exc.value.errno == errno.ENETUNREACH


def test_hand_layout_matches_captured_bytes() -> None:
    """The builders above produce exactly what the kernel sent (modulo header fields)."""
    if sys.byteorder != "little":
        pytest.skip("captured bytes are little-endian")
    built = route_reply(
        V4,
        24,
        RTN_UNICAST,
        attr(RTA_TABLE, u32(254)),
        attr(RTA_DST, A("198.18.6.0").packed),
        attr(
            RTA_MULTIPATH,
            rtnexthop(3, attr(RTA_GATEWAY, GW_A.packed))
            + rtnexthop(4, attr(RTA_GATEWAY, GW_B.packed)),
        ),
    )
    # the kernel's rtmsg says protocol 3 (boot), scope 0, and table 254: as built
    assert built == REAL_ECMP4


def test_single_gateway_and_on_link_routes() -> None:
    gw = parse_route(
        route_reply(V4, 0, RTN_UNICAST, attr(RTA_GATEWAY, GW_A.packed), attr(RTA_OIF, u32(2)))
    )
    assert (gw.gateway, gw.oif, gw.first_hops) == (GW_A, 2, 1)
    assert str(gw.dst) == "0.0.0.0/0"
    onlink = parse_route(route_reply(V6, 64, RTN_UNICAST, attr(RTA_OIF, u32(6))))
    assert (onlink.gateway, onlink.oif, onlink.first_hops) == (None, 6, 1)


def test_v4_route_via_v6_gateway() -> None:
    via = struct.pack("=H", V6) + A("2001:db8:1::2").packed  # struct rtvia
    route = parse_route(route_reply(V4, 24, RTN_UNICAST, attr(RTA_VIA, via)))
    assert route.gateway == A("2001:db8:1::2")
    mp = attr(RTA_MULTIPATH, rtnexthop(2, attr(RTA_VIA, via)) + rtnexthop(3))
    route = parse_route(route_reply(V4, 24, RTN_UNICAST, mp))
    assert route.nexthops == (Nexthop(A("2001:db8:1::2"), 2), Nexthop(None, 3))
    assert route.first_hops == 2  # one router, plus the on-link path (the destination)


@pytest.mark.parametrize(
    ("rtype", "name"),
    [(RTN_BLACKHOLE, "blackhole"), (RTN_UNREACHABLE, "unreachable"), (8, "prohibit"), (9, "throw")],
)
def test_routes_that_lead_nowhere_have_unknown_first_hops(rtype: int, name: str) -> None:
    route = parse_route(route_reply(V4, 24, rtype))
    assert (route.type, route.first_hops) == (name, None)


def test_unknown_route_type_is_named_by_number() -> None:
    assert parse_route(route_reply(V4, 24, 42)).type == "type42"


def test_local_route_is_one_hop() -> None:
    assert parse_route(route_reply(V6, 128, RTN_LOCAL, attr(RTA_OIF, u32(1)))).first_hops == 1


@pytest.mark.parametrize(("err", "code"), [(-errno.ENETUNREACH, errno.ENETUNREACH), (-22, 22)])
def test_error_reply_raises_oserror_with_errno(err: int, code: int) -> None:
    with pytest.raises(OSError) as exc:
        parse_route(nlerr(err))
    assert exc.value.errno == code
    with pytest.raises(OSError):
        parse_nexthop(nlerr(-errno.ENOENT))


@pytest.mark.parametrize("err", [-(2**31), -4096])
def test_error_reply_with_an_impossible_errno_is_malformed(err: int) -> None:
    """No errno is beyond the kernel's MAX_ERRNO (4095): -2**31 (found by the fuzzer) made
    ``os.strerror`` raise OverflowError; it is a ValueError like any malformed reply."""
    for parse in (parse_route, parse_nexthop):
        with pytest.raises(ValueError, match="impossible errno"):
            parse(nlerr(err))
    with pytest.raises(OSError) as exc:
        parse_route(nlerr(-4095))
    assert exc.value.errno == 4095


def test_ack_is_not_a_route() -> None:
    with pytest.raises(ValueError, match="acknowledgement"):
        parse_route(nlerr(0))


def test_wrong_message_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="RTM_NEWROUTE"):
        parse_route(nlmsg(RTM_NEWNEXTHOP, nhmsg(V4) + attr(NHA_ID, u32(1))))
    with pytest.raises(ValueError, match="RTM_NEWNEXTHOP"):
        parse_nexthop(ECMP4)


def test_multiple_messages_in_one_datagram() -> None:
    data = ECMP4 + nlmsg(3, struct.pack("=i", 0))  # + NLMSG_DONE
    assert [m.type for m in parse_messages(data)] == [RTM_NEWROUTE, 3]
    assert parse_route(data).first_hops == 2
    assert parse_messages(b"") == []


# -- nexthop objects ----------------------------------------------------------------------------


def test_nexthop_objects() -> None:
    single = parse_nexthop(
        nlmsg(
            RTM_NEWNEXTHOP,
            nhmsg(V4)
            + attr(NHA_ID, u32(1))
            + attr(NHA_OIF, u32(3))
            + attr(NHA_GATEWAY, GW_A.packed),
        )
    )
    assert single == NexthopObject(1, V4, 3, GW_A)
    assert single.first_hops == 1
    group = parse_nexthop(
        nlmsg(
            RTM_NEWNEXTHOP,
            nhmsg(0)
            + attr(NHA_ID, u32(10))
            + attr(NHA_GROUP, struct.pack("=IBBH", 1, 0, 0, 0) + struct.pack("=IBBH", 2, 2, 1, 0)),
        )
    )
    # nexthop_grp weight is weight-1 with weight_high as the high byte (Linux >= 6.12)
    assert group.group == (GroupMember(1, 1), GroupMember(2, 259))
    assert group.first_hops == 2
    hole = parse_nexthop(
        nlmsg(RTM_NEWNEXTHOP, nhmsg(V4) + attr(NHA_ID, u32(5)) + attr(NHA_BLACKHOLE, b""))
    )
    assert (hole.blackhole, hole.first_hops) == (True, None)


@little_endian
def test_real_nexthop_replies() -> None:
    assert parse_nexthop(REAL_NH_SINGLE) == NexthopObject(1, V4, 3, GW_A)
    group = parse_nexthop(REAL_NH_GROUP)
    assert group.group == (GroupMember(1, 1), GroupMember(2, 3))
    assert group.first_hops == 2


def test_nexthop_reply_needs_an_id() -> None:
    with pytest.raises(ValueError, match="NHA_ID"):
        parse_nexthop(nlmsg(RTM_NEWNEXTHOP, nhmsg(V4) + attr(NHA_OIF, u32(3))))


# -- first hops of routes that point at nexthop objects ----------------------------------------


NH_ROUTE = Route(family=V4, type="unicast", table=254, nh_id=10)
GROUP = NexthopObject(10, group=(GroupMember(1), GroupMember(2)))
MEMBERS = (NexthopObject(1, V4, 3, GW_A), NexthopObject(2, V4, 4, GW_B))


def test_nh_id_route_is_unknown_until_resolved() -> None:
    route = parse_route(route_reply(V4, 24, RTN_UNICAST, attr(RTA_NH_ID, u32(10))))
    assert (route.nh_id, route.first_hops) == (10, None)
    assert count_first_hops(route, nexthop=GROUP) == 2
    assert count_first_hops(route, nexthop=MEMBERS[0]) is None  # not the route's object
    assert count_first_hops(Route(V4, "unicast", 254, nh_id=1), nexthop=MEMBERS[0]) == 1


def test_nh_id_route_with_compat_nexthops_still_needs_the_object() -> None:
    """nexthop_compat_mode copies the paths into the route; the object stays authoritative."""
    mp = attr(RTA_MULTIPATH, rtnexthop(3, attr(RTA_GATEWAY, GW_A.packed)))
    route = parse_route(route_reply(V4, 24, RTN_UNICAST, attr(RTA_NH_ID, u32(10)), mp))
    assert route.first_hops is None
    assert count_first_hops(route, nexthop=GROUP) == 2


def test_bound_interface_counts_only_its_paths() -> None:
    route = parse_route(ECMP4)
    assert count_first_hops(route, oif=3) == 1
    assert count_first_hops(route, oif=9) is None
    assert count_first_hops(NH_ROUTE, oif=4, nexthop=GROUP, members=MEMBERS) == 1
    assert count_first_hops(NH_ROUTE, oif=4, nexthop=GROUP) is None  # members unresolved
    assert count_first_hops(NH_ROUTE, oif=4, nexthop=GROUP, members=MEMBERS[:1]) is None


def test_duplicate_paths_count_once() -> None:
    route = Route(
        V4,
        "unicast",
        254,
        nexthops=(Nexthop(GW_A, 3), Nexthop(GW_A, 3), Nexthop(None, 3), Nexthop(None, 4)),
    )
    assert route.first_hops == 2


# -- malformed input: ValueError, never IndexError/struct.error ----------------------------------


@pytest.mark.parametrize("good", [ECMP4, REAL_ECMP6, REAL_NH_GROUP, REAL_ENETUNREACH])
def test_every_truncation_is_a_value_error(good: bytes) -> None:
    parse = parse_nexthop if good[4] == RTM_NEWNEXTHOP else parse_route
    for n in range(len(good)):
        with pytest.raises(ValueError):
            parse(good[:n])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (nlmsg(RTM_NEWROUTE, b"\x02\x18"), "rtmsg"),
        (nlmsg(RTM_NEWROUTE, rtmsg(V4, 33, 1)), "prefix length"),
        (nlmsg(RTM_NEWROUTE, rtmsg(7, 0, 1)), "family"),
        (route_reply(V4, 24, 1, attr(RTA_DST, b"\xc6\x12\x06")), "RTA_DST"),
        (route_reply(V4, 24, 1, attr(RTA_GATEWAY, DST6.packed)), "RTA_GATEWAY"),
        (route_reply(V4, 24, 1, attr(RTA_OIF, b"\x01\x00")), "RTA_OIF"),
        (route_reply(V4, 24, 1, attr(RTA_VIA, b"\x0a")), "RTA_VIA"),
        (route_reply(V4, 24, 1, struct.pack("=HH", 2, RTA_OIF)), "attribute length"),
        (route_reply(V4, 24, 1, struct.pack("=HH", 64, RTA_OIF) + u32(1)), "attribute length"),
        (route_reply(V4, 24, 1, b"\x08\x00"), "attribute header"),
        (route_reply(V4, 24, 1, attr(RTA_MULTIPATH, b"\x08\x00\x00\x00")), "rtnexthop"),
        (
            route_reply(V4, 24, 1, attr(RTA_MULTIPATH, struct.pack("=HBBi", 4, 0, 0, 3))),
            "rtnexthop",
        ),
        (
            route_reply(V4, 24, 1, attr(RTA_MULTIPATH, struct.pack("=HBBi", 40, 0, 0, 3))),
            "rtnexthop",
        ),
        (
            route_reply(V4, 24, 1, attr(RTA_MULTIPATH, rtnexthop(3, attr(RTA_GATEWAY, b"\x01")))),
            "RTA_GATEWAY",
        ),
        (nlmsg(RTM_NEWNEXTHOP, b"\x02"), "nhmsg"),
        (
            nlmsg(RTM_NEWNEXTHOP, nhmsg(0) + attr(NHA_ID, u32(1)) + attr(NHA_GROUP, b"\x01" * 12)),
            "NHA_GROUP",
        ),
        (
            nlmsg(
                RTM_NEWNEXTHOP, nhmsg(V6) + attr(NHA_ID, u32(1)) + attr(NHA_GATEWAY, GW_A.packed)
            ),
            "NHA_GATEWAY",
        ),
        (nlmsg(NLMSG_ERROR, b"\xff\xff"), "error"),
        (struct.pack("=IHHII", 8, RTM_NEWROUTE, 0, 0, 0), "length"),
        (b"", "empty"),
    ],
)
def test_malformed_is_a_value_error(data: bytes, match: str) -> None:
    parse = parse_nexthop if len(data) > 5 and data[4] == RTM_NEWNEXTHOP else parse_route
    with pytest.raises(ValueError, match=match):
        parse(data)


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_value_or_os_error(data: bytes) -> None:
    for parse in (parse_route, parse_nexthop):
        with contextlib.suppress(ValueError, OSError):
            parse(data)


@given(st.binary(min_size=1, max_size=120), st.sampled_from([RTM_NEWROUTE, RTM_NEWNEXTHOP]))
def test_random_payloads_raise_only_value_error(body: bytes, type_: int) -> None:
    """A well-framed message with garbage inside: the attribute walkers must hold."""
    with contextlib.suppress(ValueError):
        (parse_route if type_ == RTM_NEWROUTE else parse_nexthop)(nlmsg(type_, body))
