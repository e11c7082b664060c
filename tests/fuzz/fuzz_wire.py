"""Coverage-guided fuzz targets (atheris/libFuzzer) for every netdiag.wire parser.

Run one target: ``python tests/fuzz/fuzz_wire.py TARGET [libFuzzer flags]``, e.g.
``python tests/fuzz/fuzz_wire.py icmp -max_total_time=60``. Targets: ``ip``, ``icmp``,
``echo``, ``tcp``, ``knock``, ``trace``, ``rtnetlink``. A target fails (exits non-zero,
printing the input) when a parser raises: they must turn every byte string into a value or
``None`` -- except the rtnetlink parsers, whose contract is ``ValueError`` for malformed input
and ``OSError`` for a kernel error reply, and nothing else.
``tests/fuzz/test_fuzz.py`` runs each for a few seconds in CI.
"""

from __future__ import annotations

import contextlib
import sys

import atheris
import dpkt  # noqa: F401  -- heavy dependencies loaded uninstrumented: only netdiag is traced
import trio  # noqa: F401

with atheris.instrument_imports(include=["netdiag"]):
    from netdiag.wire import icmp, ip, knock, rtnetlink, tcp, trace

SRC4, SRC6 = bytes([198, 18, 6, 2]), bytes(15) + b"\x02"


def _split(data: bytes) -> tuple[int, bytes]:
    return (data[0] if data else 0), data[1:]


def fuzz_ip(data: bytes) -> None:
    ip.parse_ip(data)
    ip.parse_ipv4(data)
    ip.parse_ipv6(data)


def fuzz_icmp(data: bytes) -> None:
    flags, rest = _split(data)
    icmp.parse_icmp(rest, bool(flags & 1))
    icmp.parse_icmp4_packet(rest)


def fuzz_echo(data: bytes) -> None:
    flags, rest = _split(data)
    v6 = bool(flags & 1)
    found = icmp.classify_echo(rest, v6, SRC6 if v6 else SRC4, ip_header=bool(flags & 2))
    if found is not None:
        icmp.token_matches(found[1], b"12345678")
    if len(rest) >= 2:
        icmp.classify_echo_queued_error(v6, rest[0], rest[1], flags, SRC4, rest[2:])


def fuzz_tcp(data: bytes) -> None:
    tcp.parse_tcp(data)


def fuzz_knock(data: bytes) -> None:
    flags, rest = _split(data)
    v6 = bool(flags & 1)
    found = knock.classify_tcp(rest, v6, SRC6 if v6 else SRC4, SRC6 if v6 else None)
    if found is not None:
        knock.answers(found[1], 12345)
    found2 = knock.classify_icmp(rest, v6)
    if found2 is not None:
        knock.answers(found2[1], 12345)


def fuzz_trace(data: bytes) -> None:
    flags, rest = _split(data)
    v6 = bool(flags & 1)
    src = SRC6 if v6 else SRC4
    for found in (
        trace.classify_icmp(rest, v6, src, ip_header=bool(flags & 2)),
        trace.classify_tcp(rest, v6, src, ip_header=bool(flags & 2)),
    ):
        if found is not None:
            reply = found[1]
            _ = (reply.mark, reply.terminal, reply.from_destination)


def fuzz_rtnetlink(data: bytes) -> None:
    for parse in (rtnetlink.parse_route, rtnetlink.parse_nexthop):
        try:
            route = parse(data)
        except (ValueError, OSError):
            continue
        _ = route.first_hops
    with contextlib.suppress(ValueError):
        rtnetlink.parse_messages(data)


TARGETS = {
    "ip": fuzz_ip,
    "icmp": fuzz_icmp,
    "echo": fuzz_echo,
    "tcp": fuzz_tcp,
    "knock": fuzz_knock,
    "trace": fuzz_trace,
    "rtnetlink": fuzz_rtnetlink,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
