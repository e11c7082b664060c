"""ICMP extensions end to end (issue 13): a router that answers expiring probes with
time-exceeded messages carrying an RFC 4950 MPLS label stack, as an MPLS LSR does, and the
trace shows the stack per probe, per responder, in ``--json`` and in the text
(``[MPLS: L=24008,E=0,S=1,T=1]``, as ``traceroute -e`` and mtr show it).

Linux routers do not do that, so the lab's r1 is made to: nftables drops every packet from src
to dst that arrives with TTL / hop limit 1 (in prerouting, before the forwarding code would
answer), and a responder process in r1 reads those packets from an AF_PACKET socket on the
src-facing interface and answers each from a raw socket with a time-exceeded built byte by
byte: RFC 4884 section 4.1 (IPv4: length of the quote in 32-bit words in byte 5, quote padded
to 128 bytes) or 4.2 (IPv6: in 64-bit words in byte 4), then the extension structure (section
7: version 2, checksum) with one MPLS object (RFC 4950 section 7: class 1, c-type 1, label 20
bits, TC 3, S 1, TTL 8). Raw sockets only: the datagram mode's error queue does not carry the
extensions (tested too: it still gets the hops, without labels).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from lab import Lab

from netdiag import Trace, Tracer
from netdiag.testing.lab import Topology

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

LINE = Topology.create(
    nodes=("src", "r1", "r2", "dst"),
    routers=("r1", "r2"),
    links=(("r1", "src"), ("r1", "r2"), ("r2", "dst")),
)
LABELS = ((24008, 0, 0, 1), (16001, 5, 1, 1))  # label, TC, S, TTL: a two-entry stack

RESPONDER = textwrap.dedent(
    """
    import socket, struct, sys, time
    IFACE, SRC4, DST4, SRC6, DST6 = sys.argv[1:6]
    LABELS = %(labels)r

    def csum(b):
        if len(b) %% 2:
            b += b"\\0"
        s = sum(struct.unpack("!%%dH" %% (len(b) // 2), b))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF

    def extension():
        stack = b"".join(
            struct.pack("!I", l << 12 | tc << 9 | s << 8 | ttl) for l, tc, s, ttl in LABELS
        )
        obj = struct.pack("!HBB", 4 + len(stack), 1, 1) + stack  # RFC 4950 section 7
        ext = struct.pack("!BBH", 2 << 4, 0, 0) + obj  # RFC 4884 section 7, version 2
        return ext[:2] + struct.pack("!H", csum(ext)) + ext[4:]

    pk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    pk.bind((IFACE, 0))
    pk.settimeout(0.2)
    raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    src4, dst4 = socket.inet_aton(SRC4), socket.inet_aton(DST4)
    src6 = socket.inet_pton(socket.AF_INET6, SRC6)
    dst6 = socket.inet_pton(socket.AF_INET6, DST6)
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    answered = 0
    while time.monotonic() < deadline and answered < 2000:
        try:
            frame, addr = pk.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        eth = struct.unpack_from("!H", frame, 12)[0]
        ip = frame[14:]
        if eth == 0x0800 and ip[12:16] == src4 and ip[16:20] == dst4 and ip[8] == 1:
            quote = ip[:128].ljust(128, b"\\0")  # RFC 4884 4.1: padded to 128 bytes
            body = struct.pack("!BBHBBH", 11, 0, 0, 0, 128 // 4, 0) + quote + extension()
            msg = body[:2] + struct.pack("!H", csum(body)) + body[4:]
            raw4.sendto(msg, (SRC4, 0))
            answered += 1
        elif eth == 0x86DD and ip[8:24] == src6 and ip[24:40] == dst6 and ip[7] == 1:
            quote = ip[:128].ljust(128, b"\\0")  # RFC 4884 4.2: length in 64-bit words
            msg = struct.pack("!BBHBBH", 3, 0, 0, 128 // 8, 0, 0) + quote + extension()
            raw6.sendto(msg, (SRC6, 0))  # the kernel fills the ICMPv6 checksum
            answered += 1
    """
) % {"labels": LABELS}


@pytest.fixture(scope="module")
def mpls_lab() -> Iterator[Lab]:
    with Lab(LINE) as lab:
        lab.nft(
            "r1",
            f"""
            table inet expire {{
                chain pre {{
                    type filter hook prerouting priority -300;
                    ip saddr {lab.src.v4} ip daddr {lab.dst.v4} ip ttl 1 drop
                    ip6 saddr {lab.src.v6} ip6 daddr {lab.dst.v6} ip6 hoplimit 1 drop
                }}
            }}""",
        )
        iface = lab.topology.node("r1").iface("src").name
        argv = [
            "ip", "netns", "exec", lab.ns("r1"), sys.executable, "-c", RESPONDER,
            iface, str(lab.src.v4), str(lab.dst.v4), str(lab.src.v6), str(lab.dst.v6),
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            yield lab
        finally:
            proc.kill()
            proc.wait(timeout=10)


WANT = "[MPLS: L=24008,E=0,S=0,T=1/L=16001,E=5,S=1,T=1]"


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("proto", ["udp", "tcp", "icmp"])
async def test_mpls_label_stack_per_probe_and_responder(mpls_lab: Lab, v: int, proto: str) -> None:
    lab = mpls_lab
    with lab.enter("src"):
        async with Tracer(privileged=True) as t:
            r = await t.collect(
                Trace(lab.dst.addr(v), proto=proto, port=8081 if proto == "tcp" else None)
            )  # type: ignore[arg-type]
    h1 = r.hops[0]
    assert h1.addrs == {lab.topology.addr("r1", "src", v)}  # type: ignore[arg-type]
    assert h1.probes and all(
        tuple((e.label, e.tc, int(e.s), e.ttl) for e in p.mpls) == LABELS for p in h1.probes
    )
    (stack,) = h1.responders[0].mpls
    assert "/".join(map(str, stack)) == WANT[len("[MPLS: ") : -1]
    # no other hop has labels: the real routers answer without extensions
    assert all(not p.mpls for h in r.hops[1:] for p in h.probes)
    assert r.reached


def test_mpls_in_text_and_json(mpls_lab: Lab) -> None:
    lab = mpls_lab
    dst = str(lab.dst.v4)
    text = lab.exec("src", sys.executable, "-m", "netdiag.trace", "-n", dst).stdout.splitlines()
    assert WANT in text[1] and "MPLS" not in "".join(text[2:])
    doc = json.loads(
        lab.exec("src", sys.executable, "-m", "netdiag.trace", "-n", "--json", dst).stdout
    )
    p = doc["hops"][0]["probes"][0]
    assert p["mpls"] == [
        {"label": 24008, "tc": 0, "s": False, "ttl": 1},
        {"label": 16001, "tc": 5, "s": True, "ttl": 1},
    ]
    assert doc["hops"][0]["responders"][0]["mpls"] == [p["mpls"]]


async def test_datagram_mode_has_no_extensions_but_the_hop(mpls_lab: Lab) -> None:
    lab = mpls_lab
    with lab.enter("src"):
        async with Tracer(privileged=False) as t:
            r = await t.collect(Trace(lab.dst.addr(4), proto="udp"))
    assert r.hops[0].addrs == {lab.topology.addr("r1", "src", 4)}
    assert all(not p.mpls for p in r.hops[0].probes) and r.reached
