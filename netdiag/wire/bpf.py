"""Classic BPF socket filters: which packets the kernel lets through to a raw socket.

A raw ICMP socket receives a copy of *every* ICMP packet the host receives: another tool's
mass ping, a flood, a second netdiag. Without a filter each copy wakes the process and is
parsed in Python before being thrown away. Like iputils ping, netdiag attaches a classic BPF
program (``SO_ATTACH_FILTER``) that keeps only what can be its own -- echo replies with one of
its identifiers, ICMP errors quoting such an echo request, TCP segments to its port range -- so
the kernel drops the rest before any copy to user space.

This module is pure: the instructions are named as in ``<linux/filter.h>``, the builders return
the ``struct sock_filter`` array as bytes, and ``tests/test_bpf.py`` runs them in a small cBPF
interpreter (and attaches them to real sockets in the lab). Correctness never depends on a
filter: the classifiers and the token checks still decide what is ours, so a program that could
not be attached only costs CPU.

Where a raw socket's data starts differs by family: raw IPv4 sockets see the IP header (whose
length, IHL, varies: ``BPF_LDX|BPF_B|BPF_MSH`` loads it), raw IPv6 sockets the transport header.
Loads past the end of a packet make the kernel's interpreter return 0 (drop), so short quotes
are dropped -- every error netdiag acts on quotes at least the 8 transport bytes that hold the
identifier or the ports.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .icmp import ECHO_REPLY4, ECHO_REPLY6, ECHO_REQUEST4, ECHO_REQUEST6, ERROR_TYPES4, ERROR_TYPES6

__all__ = [
    "ACCEPT",
    "Insn",
    "Range",
    "assemble",
    "echo_filter",
    "icmp_error_port_filter",
    "insn",
    "tcp_port_filter",
    "trace_icmp_filter",
]

# -- <linux/bpf_common.h> / <linux/filter.h> ---------------------------------------------------
# instruction classes
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_RET = 0x06
BPF_MISC = 0x07
# load sizes
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10
# load modes
BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_IND = 0x40
BPF_MEM = 0x60
BPF_LEN = 0x80
BPF_MSH = 0xA0
# ALU operations
BPF_ADD = 0x00
BPF_SUB = 0x10
BPF_MUL = 0x20
BPF_DIV = 0x30
BPF_OR = 0x40
BPF_AND = 0x50
BPF_LSH = 0x60
BPF_RSH = 0x70
BPF_NEG = 0x80
# jumps
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
# operand source
BPF_K = 0x00
BPF_X = 0x08
BPF_A = 0x10  # BPF_RET only: return the accumulator
# BPF_MISC
BPF_TAX = 0x00
BPF_TXA = 0x80

#: What an accepting program returns: the number of bytes to keep (all of them).
ACCEPT = 0xFFFFFFFF
#: The kernel's limit on program length (BPF_MAXINSNS).
MAX_INSNS = 4096

#: ``struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }`` in host byte order.
_SOCK_FILTER = struct.Struct("=HBBI")


@dataclass(frozen=True, slots=True)
class Insn:
    """One instruction. ``jt``/``jf`` are relative jump offsets, or label names before
    :func:`assemble` resolves them."""

    code: int
    k: int = 0
    jt: int | str = 0
    jf: int | str = 0


def insn(code: int, k: int = 0, jt: int | str = 0, jf: int | str = 0) -> Insn:
    return Insn(code, k, jt, jf)


#: A program under construction: instructions and ``"label:"`` strings marking positions.
Source = Sequence["Insn | str"]


def assemble(source: Source) -> bytes:
    """The ``struct sock_filter`` array of ``source``: labels (strings ending in ``:``) mark
    positions, and jump fields naming a label become forward offsets. ``ValueError`` for an
    unknown or backward label, an offset over 255, or an over-long program."""
    labels: dict[str, int] = {}
    prog: list[Insn] = []
    for item in source:
        if isinstance(item, str):
            name = item.rstrip(":")
            if name in labels:
                raise ValueError(f"label {name!r} defined twice")
            labels[name] = len(prog)
        else:
            prog.append(item)
    if not prog or len(prog) > MAX_INSNS:
        raise ValueError(f"a program has 1 to {MAX_INSNS} instructions, not {len(prog)}")
    out = bytearray()
    for pc, i in enumerate(prog):
        jt, jf = (_offset(labels, pc, j) for j in (i.jt, i.jf))
        out += _SOCK_FILTER.pack(i.code, jt, jf, i.k & 0xFFFFFFFF)
    return bytes(out)


def _offset(labels: dict[str, int], pc: int, target: int | str) -> int:
    if isinstance(target, int):
        off = target
    else:
        if target not in labels:
            raise ValueError(f"unknown label {target!r}")
        off = labels[target] - pc - 1
    if not 0 <= off <= 255:
        raise ValueError(f"jump offset {off} at {pc} out of range (forward, at most 255)")
    return off


def decode(prog: bytes) -> list[Insn]:
    """The instructions of an assembled program (for tests and the interpreter)."""
    return [Insn(c, k, jt, jf) for c, jt, jf, k in _SOCK_FILTER.iter_unpack(prog)]


@dataclass(frozen=True, slots=True)
class Range:
    """Values ``v`` of a 16-bit field with ``v & mask == value``: an aligned block such as
    the identifiers of one Pinger (mask 0xFF00: 256 of them) or ``mask == 0``: all."""

    value: int
    mask: int

    def __contains__(self, v: object) -> bool:
        return isinstance(v, int) and v & self.mask == self.value


# -- helpers generating source ----------------------------------------------------------------


def _ld(size: int, mode: int, k: int = 0) -> Insn:
    return Insn(BPF_LD | size | mode, k)


def _jeq(k: int, jt: int | str = 0, jf: int | str = 0) -> Insn:
    return Insn(BPF_JMP | BPF_JEQ | BPF_K, k, jt, jf)


_ACCEPT = Insn(BPF_RET | BPF_K, ACCEPT)
_DROP = Insn(BPF_RET | BPF_K, 0)
_IHL_TO_X = Insn(BPF_LDX | BPF_B | BPF_MSH, 0)  # X = 4 * (P[0] & 0xf)


def _match16(mode: int, offset: int, ranges: Sequence[Range], tag: str) -> list[Insn | str]:
    """Accept if the 16-bit field at ``offset`` is in one of ``ranges``, else drop."""
    out: list[Insn | str] = []
    for n, r in enumerate(ranges):
        nxt = f"{tag}{n + 1}" if n + 1 < len(ranges) else "drop"
        out += [
            _ld(BPF_H, mode, offset),
            Insn(BPF_ALU | BPF_AND | BPF_K, r.mask),
            _jeq(r.value & r.mask, "accept", nxt),
        ]
        if n + 1 < len(ranges):
            out.append(f"{tag}{n + 1}:")
    if not ranges:
        out.append(_DROP)
    return out


def _dispatch_types(
    mode: int, offset: int, branches: Iterable[tuple[Iterable[int], str]]
) -> list[Insn | str]:
    """Load the ICMP type at ``offset`` and jump to the label of its branch; drop the rest."""
    out: list[Insn | str] = [_ld(BPF_B, mode, offset)]
    for types, label in branches:
        for t in types:
            out.append(_jeq(t, label, 0))
    out.append(_DROP)
    return out


_TAIL: list[Insn | str] = ["accept:", _ACCEPT, "drop:", _DROP]


def echo_filter(v6: bool, idents: Sequence[Range]) -> bytes:
    """A raw ICMP socket's filter for a Pinger: echo replies whose identifier is in one of
    ``idents``, and ICMP errors quoting an echo request with such an identifier. Everything
    else -- other tools' replies, foreign errors, garbage -- stays in the kernel.

    IPv4 (data from the IP header, any IHL; the quoted header's IHL is read too)::

        X = IHL; type = P[X]; reply: P[X+4:2] ident; error: P[X+8+9] == 1 (quoted ICMP),
        X += quoted IHL; P[X+8] == 8 (echo request); P[X+12:2] ident

    IPv6 (data from the ICMPv6 header; our requests carry no extension headers)::

        type = P[0]; reply: P[4:2] ident; error: P[14] == 58, P[48] == 128, P[52:2] ident
    """
    if v6:
        src: list[Insn | str] = _dispatch_types(
            BPF_ABS, 0, [((ECHO_REPLY6,), "reply"), (ERROR_TYPES6, "error")]
        )
        src += ["reply:", *_match16(BPF_ABS, 4, idents, "r")]
        src += [
            "error:",
            _ld(BPF_B, BPF_ABS, 8 + 6),  # quoted IPv6 next header
            _jeq(58, 0, "drop"),
            _ld(BPF_B, BPF_ABS, 8 + 40),  # quoted ICMPv6 type
            _jeq(ECHO_REQUEST6, 0, "drop"),
            *_match16(BPF_ABS, 8 + 40 + 4, idents, "e"),
        ]
    else:
        src = [_IHL_TO_X]
        src += _dispatch_types(BPF_IND, 0, [((ECHO_REPLY4,), "reply"), (ERROR_TYPES4, "error")])
        src += ["reply:", *_match16(BPF_IND, 4, idents, "r")]
        src += [
            "error:",
            *_quoted_ipv4(proto=1),
            _ld(BPF_B, BPF_IND, 8),  # quoted ICMP type
            _jeq(ECHO_REQUEST4, 0, "drop"),
            *_match16(BPF_IND, 8 + 4, idents, "e"),
        ]
    return assemble([*src, *_TAIL])


def _quoted_ipv4(proto: int) -> list[Insn | str]:
    """With X = the outer IHL at an ICMP error: drop unless the quoted IPv4 header carries
    ``proto``; then X = outer IHL + quoted IHL, so ``P[X+8]`` is the quoted transport header."""
    return [
        _ld(BPF_B, BPF_IND, 8 + 9),  # quoted protocol
        _jeq(proto, 0, "drop"),
        *_skip_quoted_ipv4(),
    ]


def _port_in(mode: int, offset: int, lo: int, hi: int) -> list[Insn | str]:
    return [
        _ld(BPF_H, mode, offset),
        Insn(BPF_JMP | BPF_JGE | BPF_K, lo, 0, "drop"),
        Insn(BPF_JMP | BPF_JGT | BPF_K, hi, "drop", "accept"),
    ]


def tcp_port_filter(v6: bool, lo: int, hi: int) -> bytes:
    """A raw TCP socket's filter: segments whose destination port is in ``lo..hi`` (the ports
    a Knocker reserves come from the kernel's ephemeral range). IPv4 data starts at the IP
    header, IPv6 at the TCP header."""
    _check_ports(lo, hi)
    if v6:
        src: list[Insn | str] = _port_in(BPF_ABS, 2, lo, hi)
    else:
        src = [_IHL_TO_X, *_port_in(BPF_IND, 2, lo, hi)]
    return assemble([*src, *_TAIL])


def icmp_error_port_filter(v6: bool, proto: int, lo: int, hi: int) -> bytes:
    """A raw ICMP socket's filter for probes of transport ``proto`` (6 TCP, 17 UDP) sent from
    ports ``lo..hi``: only ICMP errors quoting such a packet pass."""
    _check_ports(lo, hi)
    if v6:
        src: list[Insn | str] = _dispatch_types(BPF_ABS, 0, [(ERROR_TYPES6, "error")])
        src += [
            "error:",
            _ld(BPF_B, BPF_ABS, 8 + 6),
            _jeq(proto, 0, "drop"),
            *_port_in(BPF_ABS, 8 + 40, lo, hi),
        ]
    else:
        src = [_IHL_TO_X]
        src += _dispatch_types(BPF_IND, 0, [(ERROR_TYPES4, "error")])
        src += ["error:", *_quoted_ipv4(proto), *_port_in(BPF_IND, 8, lo, hi)]
    return assemble([*src, *_TAIL])


def trace_icmp_filter(v6: bool, lo: int, hi: int) -> bytes:
    """A Tracer's raw ICMP socket: echo replies whose identifier is in ``lo..hi`` (ICMP
    traces take their flow ids from the same range as the UDP/TCP flow ports), and ICMP errors
    quoting an echo request with such an identifier, or a UDP/TCP packet from ports ``lo..hi``.
    Other errors -- quoting other programs' UDP, TCP or anything else -- other programs' echo
    replies (a Pinger beside the Tracer) and every other message stay in the kernel."""
    _check_ports(lo, hi)
    if v6:
        src: list[Insn | str] = _dispatch_types(
            BPF_ABS, 0, [((ECHO_REPLY6,), "reply"), (ERROR_TYPES6, "error")]
        )
        src += [
            "reply:",
            *_port_in(BPF_ABS, 4, lo, hi),  # the identifier
            "error:",
            _ld(BPF_B, BPF_ABS, 8 + 6),  # quoted next header
            _jeq(58, "q_icmp", 0),
            _jeq(6, "q_port", 0),
            _jeq(17, "q_port", "drop"),
            "q_icmp:",
            _ld(BPF_B, BPF_ABS, 8 + 40),
            _jeq(ECHO_REQUEST6, 0, "drop"),
            *_port_in(BPF_ABS, 8 + 40 + 4, lo, hi),  # the quoted request's identifier
            "q_port:",
            *_port_in(BPF_ABS, 8 + 40, lo, hi),
        ]
    else:
        src = [_IHL_TO_X]
        src += _dispatch_types(BPF_IND, 0, [((ECHO_REPLY4,), "reply"), (ERROR_TYPES4, "error")])
        src += [
            "reply:",
            *_port_in(BPF_IND, 4, lo, hi),  # the identifier
            "error:",
            _ld(BPF_B, BPF_IND, 8 + 9),  # quoted protocol
            _jeq(1, "q_icmp", 0),
            _jeq(6, "q_port", 0),
            _jeq(17, "q_port", "drop"),
            "q_icmp:",
            *_skip_quoted_ipv4(),
            _ld(BPF_B, BPF_IND, 8),
            _jeq(ECHO_REQUEST4, 0, "drop"),
            *_port_in(BPF_IND, 8 + 4, lo, hi),  # the quoted request's identifier
            "q_port:",
            *_skip_quoted_ipv4(),
            *_port_in(BPF_IND, 8, lo, hi),
        ]
    return assemble([*src, *_TAIL])


def _skip_quoted_ipv4() -> list[Insn | str]:
    """With X = the outer IHL at an ICMP error: X = outer IHL + quoted IHL."""
    return [
        _ld(BPF_B, BPF_IND, 8),
        Insn(BPF_ALU | BPF_AND | BPF_K, 0x0F),
        Insn(BPF_ALU | BPF_LSH | BPF_K, 2),
        Insn(BPF_ALU | BPF_ADD | BPF_X),
        Insn(BPF_MISC | BPF_TAX),
    ]


def _check_ports(lo: int, hi: int) -> None:
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"not a port range: {lo}..{hi}")
