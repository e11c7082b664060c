"""The classic BPF filters (netdiag.wire.bpf), run in a small cBPF interpreter written here from
the kernel's semantics, and against the Python classifiers they must never contradict: every
packet the classifier would credit to one of our identifiers passes the filter (no false drop);
foreign replies, foreign errors and garbage do not."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netdiag.ping.idents import IdentPool
from netdiag.wire import bpf
from netdiag.wire.bpf import Range, echo_filter, icmp_error_port_filter, tcp_port_filter
from netdiag.wire.checksum import checksum
from netdiag.wire.icmp import build_echo, classify_echo, echo_payload
from netdiag.wire.ip import build_ipv4_header

# -- the interpreter -----------------------------------------------------------------------


def run(prog: bytes, pkt: bytes) -> int:
    """What the kernel's cBPF interpreter returns for ``pkt``: 0 drops, anything else keeps
    that many bytes. A load past the end of the packet ends the program with 0, as in the
    kernel. Only the instructions netdiag emits (and their close relatives) are supported."""
    insns = bpf.decode(prog)
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        i = insns[pc]
        cls, code, k = i.code & 0x07, i.code, i.k
        pc += 1
        if cls in (bpf.BPF_LD, bpf.BPF_LDX):
            mode, size = code & 0xE0, code & 0x18
            if mode == bpf.BPF_IMM:
                v = k
            elif mode == bpf.BPF_LEN:
                v = len(pkt)
            elif mode == bpf.BPF_MEM:
                v = mem[k]
            elif mode == bpf.BPF_MSH:
                if k >= len(pkt):
                    return 0
                v = (pkt[k] & 0x0F) * 4
            else:
                off = k + (x if mode == bpf.BPF_IND else 0)
                n = {bpf.BPF_W: 4, bpf.BPF_H: 2, bpf.BPF_B: 1}[size]
                if off + n > len(pkt):
                    return 0
                v = int.from_bytes(pkt[off : off + n], "big")
            if cls == bpf.BPF_LD:
                a = v
            else:
                x = v
        elif cls == bpf.BPF_ST:
            mem[k] = a
        elif cls == bpf.BPF_STX:
            mem[k] = x
        elif cls == bpf.BPF_ALU:
            op, src = code & 0xF0, x if code & bpf.BPF_X else k
            if op == bpf.BPF_ADD:
                a = a + src
            elif op == bpf.BPF_SUB:
                a = a - src
            elif op == bpf.BPF_MUL:
                a = a * src
            elif op == bpf.BPF_DIV:
                if src == 0:
                    return 0
                a = a // src
            elif op == bpf.BPF_OR:
                a = a | src
            elif op == bpf.BPF_AND:
                a = a & src
            elif op == bpf.BPF_LSH:
                a = a << src
            elif op == bpf.BPF_RSH:
                a = a >> src
            elif op == bpf.BPF_NEG:
                a = -a
            else:
                raise AssertionError(f"unknown ALU op {code:#x}")
            a &= 0xFFFFFFFF
        elif cls == bpf.BPF_JMP:
            op, src = code & 0xF0, x if code & bpf.BPF_X else k
            if op == bpf.BPF_JA:
                pc += k
                continue
            cond = {
                bpf.BPF_JEQ: a == src,
                bpf.BPF_JGT: a > src,
                bpf.BPF_JGE: a >= src,
                bpf.BPF_JSET: bool(a & src),
            }[op]
            pc += int(i.jt) if cond else int(i.jf)
        elif cls == bpf.BPF_RET:
            return a if code & bpf.BPF_A else k
        elif cls == bpf.BPF_MISC:
            if code & 0xF8 == bpf.BPF_TAX:
                x = a
            else:
                a = x
        if pc >= len(insns):
            raise AssertionError("fell off the end of the program")


# -- packets -------------------------------------------------------------------------------

ME = bytes([198, 18, 1, 2])
TARGET = bytes([198, 18, 6, 2])
ROUTER = bytes([198, 18, 1, 1])
ME6 = ipaddress.IPv6Address("2001:db8:1::2").packed
TARGET6 = ipaddress.IPv6Address("2001:db8:6::2").packed
OURS = Range(0x4A00, 0xFF00)


def _ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, options: bytes = b"") -> bytes:
    hdr = bytearray(build_ipv4_header(src, dst, proto, len(payload) + len(options)))
    if options:
        hdr[0] = 0x40 | (20 + len(options)) // 4
        hdr[10:12] = b"\0\0"
        hdr = hdr + options
        hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + payload


def _icmp(typ: int, code: int, rest: bytes) -> bytes:
    msg = bytes([typ, code, 0, 0]) + rest
    return msg[:2] + checksum(msg).to_bytes(2, "big") + msg[4:]


def echo_reply4(ident: int, options: bytes = b"") -> bytes:
    icmp = bytearray(build_echo(ident, 1, echo_payload(b"tok12345", 56)))
    icmp[0] = 0
    return _ipv4(TARGET, ME, 1, bytes(icmp), options)


def request4(ident: int, options: bytes = b"") -> bytes:
    return _ipv4(ME, TARGET, 1, build_echo(ident, 1, echo_payload(b"tok12345", 56)), options)


def error4(quoted: bytes, typ: int = 11, outer_options: bytes = b"") -> bytes:
    return _ipv4(ROUTER, ME, 1, _icmp(typ, 0, b"\0" * 4 + quoted), outer_options)


def ipv6(src: bytes, dst: bytes, nxt: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), nxt, 64) + src + dst + payload


def echo_reply6(ident: int) -> bytes:
    msg = bytearray(build_echo(ident, 1, echo_payload(b"tok12345", 56), v6=True))
    msg[0] = 129
    return bytes(msg)


def error6(quoted: bytes, typ: int = 3) -> bytes:
    return _icmp(typ, 0, b"\0" * 4 + quoted)


OPTS = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL: a 24-byte IPv4 header


# -- echo filter ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", [b"", OPTS])
def test_echo_filter_v4_passes_our_replies_only(options: bytes) -> None:
    prog = echo_filter(False, [OURS])
    assert run(prog, echo_reply4(0x4A17, options))
    assert run(prog, echo_reply4(0x4AFF, options))
    assert not run(prog, echo_reply4(0x4B17, options))
    assert not run(prog, echo_reply4(0x0017, options))
    assert not run(prog, request4(0x4A17, options))  # our own request looped back


@pytest.mark.parametrize("outer", [b"", OPTS])
@pytest.mark.parametrize("inner", [b"", OPTS])
@pytest.mark.parametrize("typ", [3, 4, 5, 11, 12])
def test_echo_filter_v4_errors_quoting_our_requests(outer: bytes, inner: bytes, typ: int) -> None:
    prog = echo_filter(False, [OURS])
    ours = request4(0x4A01, inner)
    hdr = 20 + len(inner)
    assert run(prog, error4(ours[: hdr + 8], typ, outer))  # RFC 792's minimum quote
    assert run(prog, error4(ours, typ, outer))
    assert not run(prog, error4(request4(0x1201, inner)[: hdr + 8], typ, outer))
    assert not run(prog, error4(ours[: hdr + 5], typ, outer))  # no identifier quoted
    udp = _ipv4(ME, TARGET, 17, struct.pack("!HHHH", 0x4A01, 0x4A01, 8, 0), inner)
    assert not run(prog, error4(udp, typ, outer))
    reply = echo_reply4(0x4A01, inner)
    assert not run(prog, error4(reply[: hdr + 8], typ, outer))  # quotes a reply, not a request


def test_echo_filter_v4_drops_other_types_and_garbage() -> None:
    prog = echo_filter(False, [OURS])
    ts = _ipv4(TARGET, ME, 1, _icmp(14, 0, b"\x4a\x17\0\1" + b"\0" * 12))
    assert not run(prog, ts)
    assert not run(prog, b"")
    assert not run(prog, b"\x45")


def test_echo_filter_v6() -> None:
    prog = echo_filter(True, [OURS])
    assert run(prog, echo_reply6(0x4A00))
    assert not run(prog, echo_reply6(0x4900))
    request = build_echo(0x4A33, 7, echo_payload(b"tok12345", 56), v6=True)
    assert not run(prog, request)
    quoted = ipv6(ME6, TARGET6, 58, request)
    for typ in (1, 2, 3, 4):
        assert run(prog, error6(quoted, typ))
        assert run(prog, error6(quoted[:48]))  # header + 8 bytes of ICMPv6
    assert not run(prog, error6(quoted[:45]))
    foreign = ipv6(ME6, TARGET6, 58, build_echo(0x1133, 7, b"x" * 8, v6=True))
    assert not run(prog, error6(foreign))
    assert not run(prog, error6(ipv6(ME6, TARGET6, 17, struct.pack("!HHHH", 0x4A33, 1, 8, 0))))
    assert not run(prog, _icmp(135, 0, b"\0" * 20))  # neighbour solicitation: not ours


def test_several_ranges_and_none() -> None:
    prog = echo_filter(False, [Range(0x1200, 0xFF00), Range(0x3400, 0xFC00)])
    assert run(prog, echo_reply4(0x12AA))
    assert run(prog, echo_reply4(0x37AA))
    assert not run(prog, echo_reply4(0x38AA))
    everything = echo_filter(False, [Range(0, 0)])
    assert run(everything, echo_reply4(0xBEEF))
    nothing = echo_filter(True, [])
    assert not run(nothing, echo_reply6(0x4A00))


@settings(max_examples=300)
@given(
    ident=st.integers(0, 0xFFFF),
    prefix=st.integers(0, 0xFF),
    bits=st.integers(0, 16),
    v6=st.booleans(),
    error=st.booleans(),
    quote=st.integers(8, 64),
)
def test_no_false_drops_against_the_classifier(
    ident: int, prefix: int, bits: int, v6: bool, error: bool, quote: int
) -> None:
    """Whatever the Python classifier credits to an identifier of the range passes; what it
    credits to any other identifier does not."""
    mask = 0xFFFF & ~((1 << bits) - 1)
    rng = Range((prefix << 8) & mask, mask)
    prog = echo_filter(v6, [rng])
    if v6:
        request = build_echo(ident, 5, echo_payload(b"tok12345", 56), v6=True)
        pkt = error6(ipv6(ME6, TARGET6, 58, request)[: 40 + quote]) if error else echo_reply6(ident)
        found = classify_echo(pkt, True, TARGET6, ip_header=False)
    else:
        pkt = error4(request4(ident)[: 20 + quote]) if error else echo_reply4(ident)
        found = classify_echo(pkt, False, TARGET, ip_header=True)
    assert found is not None
    assert bool(run(prog, pkt)) == (found[0][1] in rng)


@settings(max_examples=300)
@given(data=st.binary(max_size=120), v6=st.booleans())
def test_garbage_passing_the_filter_could_be_ours(data: bytes, v6: bool) -> None:
    """Never raises; and anything random that passes has one of our identifiers where a reply
    keeps it (the filter is a superset of ours, never of everything)."""
    prog = echo_filter(v6, [OURS])
    if run(prog, data):
        ihl = 0 if v6 else (data[0] & 0x0F) * 4
        typ = data[ihl]
        if typ == (129 if v6 else 0):
            assert int.from_bytes(data[ihl + 4 : ihl + 6], "big") in OURS


# -- port filters --------------------------------------------------------------------------


def test_tcp_port_filter() -> None:
    lo, hi = 32768, 60999
    for v6 in (False, True):
        prog = tcp_port_filter(v6, lo, hi)
        for port, ok in ((lo, True), (hi, True), (45000, True), (lo - 1, False), (hi + 1, False)):
            seg = struct.pack("!HHIIBBHHH", 443, port, 1, 2, 0x50, 0x12, 100, 0, 0)
            pkt = seg if v6 else _ipv4(TARGET, ME, 6, seg, OPTS)
            assert bool(run(prog, pkt)) is ok, (v6, port)


def test_icmp_error_port_filter() -> None:
    prog4 = icmp_error_port_filter(False, 6, 40000, 40100)
    syn = struct.pack("!HHI", 40050, 443, 1)
    assert run(prog4, error4(_ipv4(ME, TARGET, 6, syn, OPTS), 3))
    assert not run(prog4, error4(_ipv4(ME, TARGET, 17, syn), 3))
    assert not run(prog4, error4(_ipv4(ME, TARGET, 6, struct.pack("!HHI", 39999, 443, 1)), 3))
    assert not run(prog4, echo_reply4(40050))
    prog6 = icmp_error_port_filter(True, 6, 40000, 40100)
    assert run(prog6, error6(ipv6(ME6, TARGET6, 6, syn), 1))
    assert not run(prog6, error6(ipv6(ME6, TARGET6, 6, struct.pack("!HHI", 1, 443, 1)), 1))


# -- the assembler and the identifier pool -------------------------------------------------


def test_assembler_resolves_labels_and_rejects_bad_programs() -> None:
    prog = bpf.assemble(
        [bpf.insn(bpf.BPF_LD | bpf.BPF_B | bpf.BPF_ABS, 0), bpf.insn(0x15, 1, "yes", 0),
         bpf.insn(bpf.BPF_RET, 0), "yes:", bpf.insn(bpf.BPF_RET, 7)]
    )  # fmt: skip
    assert len(prog) == 4 * 8
    assert bpf.decode(prog)[1].jt == 1
    assert run(prog, b"\x01") == 7 and run(prog, b"\x02") == 0
    with pytest.raises(ValueError, match="unknown label"):
        bpf.assemble([bpf.insn(0x15, 1, "nowhere", 0)])
    with pytest.raises(ValueError, match="instructions"):
        bpf.assemble([])
    with pytest.raises(ValueError, match="port range"):
        tcp_port_filter(False, 10, 5)


def test_ident_pool_grows_and_stays_one_block() -> None:
    import random

    pool = IdentPool(bits=2, rng=random.Random(1))
    grown: list[Range] = []
    pool.on_grow = grown.append
    target = b"\x7f\0\0\1"
    got = [pool.allocate(target) for _ in range(4)]
    assert len(set(got)) == 4 and all(g in pool.range for g in got) and not grown
    fifth = pool.allocate(target)  # the block is full for this target: it grows, 4 -> 16
    assert grown == [pool.range] and pool.bits == 4
    assert fifth not in got and all(g in pool.range for g in [*got, fifth])
    other = pool.allocate(b"\x7f\0\0\2")  # other targets share identifiers freely
    assert other in pool.range
    assert not pool.claim(target, got[0]) and pool.claim(b"\x7f\0\0\3", got[0])
    assert not pool.claim(b"\x7f\0\0\3", (pool.base ^ 0x8000) & 0xFFFF)  # outside the block
    pool.release(target, got[0])
    assert pool.claim(target, got[0])


def test_a_refused_filter_leaves_the_socket_working_and_doctor_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from netdiag import doctor
    from netdiag.sock import ProbeSocket

    s = ProbeSocket.udp_flow(False, None, None)
    try:
        bogus = struct.pack("=HBBI", 0xFFFF, 0, 0, 0)  # no such instruction: EINVAL
        assert not s.attach_filter(bogus)
        assert not s.kernel_filter and s.kernel_filter_error
        assert s.attach_filter(echo_filter(False, [OURS]))
        assert s.kernel_filter and s.kernel_filter_error is None
    finally:
        s.close()
    monkeypatch.setattr(doctor, "_try_filter", lambda v6: (False, "Invalid argument"))
    tips = [t for t in doctor.advice(doctor.run_checks()) if "BPF" in t]
    assert len(tips) == 1 and "still works" in tips[0]


def test_trace_icmp_filter() -> None:
    lo, hi = 61000, 65535
    for options in (b"", OPTS):
        prog = bpf.trace_icmp_filter(False, lo, hi)
        udp = struct.pack("!HHHH", 61005, 33434, 8, 0)
        assert run(prog, error4(_ipv4(ME, TARGET, 17, udp, options)))
        assert run(prog, error4(_ipv4(ME, TARGET, 6, struct.pack("!HHI", 65535, 80, 1), options)))
        assert run(prog, error4(request4(61005, options)[: 20 + len(options) + 8]))
        assert run(prog, echo_reply4(61005, options))  # ICMP traces' ids: the ports' range
        assert run(prog, echo_reply4(hi, options)) and run(prog, echo_reply4(lo, options))
        # a Pinger's (or another program's) echoes beside the Tracer stay in the kernel
        assert not run(prog, echo_reply4(0x1234, options))
        assert not run(prog, echo_reply4(lo - 1, options))
        assert not run(prog, error4(request4(0x1234, options)[: 20 + len(options) + 8]))
        foreign_udp = struct.pack("!HHHH", 40000, 33434, 8, 0)
        assert not run(prog, error4(_ipv4(ME, TARGET, 17, foreign_udp, options)))
        assert not run(prog, error4(echo_reply4(0x1234, options)[: 20 + len(options) + 8]))
        assert not run(prog, error4(_ipv4(ME, TARGET, 47, udp, options)))  # GRE: never ours
    prog6 = bpf.trace_icmp_filter(True, lo, hi)
    assert run(prog6, error6(ipv6(ME6, TARGET6, 17, struct.pack("!HHHH", 61000, 1, 8, 0))))
    assert not run(prog6, error6(ipv6(ME6, TARGET6, 17, struct.pack("!HHHH", 60999, 1, 8, 0))))
    request6 = build_echo(61099, 1, b"x" * 8, v6=True)
    assert run(prog6, error6(ipv6(ME6, TARGET6, 58, request6)))
    assert run(prog6, echo_reply6(61099))
    assert not run(prog6, error6(ipv6(ME6, TARGET6, 58, build_echo(0x99, 1, b"x" * 8, v6=True))))
    assert not run(prog6, echo_reply6(0x99))
    assert not run(prog6, _icmp(128, 0, b"\0" * 8))  # an echo request to us: not a trace's
