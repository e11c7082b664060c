"""``python -m netdiag.doctor``: which diagnostics this user can run here, and how to enable the
rest.

It does not guess from the uid: it opens (and closes at once) each kind of socket the
diagnostics use, exactly as they would, and reports what the kernel said. Nothing is sent.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from . import cli
from .errors import FamilyUnavailableError, PrivilegeError
from .privilege import ping_group_advice, ping_group_range, raw_socket_advice
from .sock import ProbeSocket
from .wire.bpf import Range, echo_filter

PROG = "netdiag.doctor"
CAP_NET_RAW = 13


@dataclass(frozen=True)
class Check:
    """One capability probe: ``ok`` plus the kernel's answer when it said no."""

    name: str
    used_by: str
    ok: bool
    detail: str = ""


def _try(opener: Callable[[], ProbeSocket]) -> tuple[bool, str]:
    """Open (and close at once) one socket exactly as a diagnostic would."""
    try:
        s = opener()
    except PrivilegeError:
        return False, "permission denied"
    except FamilyUnavailableError as e:
        return False, str(e)
    except OSError as e:
        return False, e.strerror or str(e)
    s.close()
    return True, ""


def _any_socket(v6: bool) -> ProbeSocket:
    """A raw ICMP socket as a Pinger opens it, or a UDP socket when raw ones are refused:
    socket filters and timestamps are not a privilege."""
    try:
        return ProbeSocket.raw_icmp(v6, None, types=())
    except OSError:
        return ProbeSocket.udp_flow(v6, None, None)


def _try_filter(v6: bool) -> tuple[bool, str]:
    """Attach a Pinger's kernel filter (cBPF) as the Pinger would."""
    try:
        s = _any_socket(v6)
    except OSError as e:
        return False, e.strerror or str(e)
    try:
        ok = s.attach_filter(echo_filter(v6, [Range(0, 0xFF00)]))
        return ok, s.kernel_filter_error or ""
    finally:
        s.close()


def _try_tx_stamps(v6: bool) -> tuple[bool, str]:
    """Ask for kernel transmit timestamps as the Pinger does."""
    try:
        s = _any_socket(v6)
    except OSError as e:
        return False, e.strerror or str(e)
    try:
        return s.enable_tx_stamps(), ""
    finally:
        s.close()


def effective_caps() -> int | None:
    """The CapEff bitmask of this process (from /proc), or None if unreadable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def run_checks() -> list[Check]:
    checks: list[Check] = []
    udp, tcp = socket.IPPROTO_UDP, socket.IPPROTO_TCP
    for v6 in (False, True):
        fam = "IPv6" if v6 else "IPv4"
        rows: list[tuple[str, str, Callable[[], ProbeSocket]]] = [
            (f"raw ICMP ({fam})", "ping, trace -I, trace replies",
             partial(ProbeSocket.raw_icmp, v6, None, types=())),
            (f"raw UDP ({fam})", "trace -U (raw mode)",
             partial(ProbeSocket.raw_sender, v6, udp, None)),
            (f"raw TCP ({fam})", "knock, trace -T",
             partial(ProbeSocket.raw_transport, v6, tcp, None)),
            (f"ICMP datagram ({fam})", "unprivileged ping",
             partial(ProbeSocket.icmp_datagram, v6, None)),
            (f"UDP + RECVERR ({fam})", "unprivileged trace -U (UDP only)",
             partial(ProbeSocket.udp_flow, v6, None, None)),
        ]  # fmt: skip
        for name, used_by, opener in rows:
            ok, detail = _try(opener)
            checks.append(Check(name, used_by, ok, detail))
        ok, detail = _try_filter(v6)
        checks.append(
            Check(f"kernel filter ({fam})", "only own replies reach ping/knock", ok, detail)
        )
        ok, detail = _try_tx_stamps(v6)
        checks.append(Check(f"kernel TX stamps ({fam})", "ping RTTs kernel to kernel", ok, detail))
    return checks


def advice(checks: list[Check]) -> list[str]:
    """How to enable what failed, most useful first: the same words the errors use
    (:mod:`netdiag.privilege`)."""
    out: list[str] = []
    if not all(c.ok for c in checks if c.name.startswith("raw")):
        out.append(raw_socket_advice("raw sockets (all modes, knock included)"))
        if any(c.ok for c in checks if c.name.startswith("UDP + RECVERR")):
            out.append(
                "without it, traces still run over UDP (`python -m netdiag.trace "
                "--unprivileged`, chosen automatically); -I and -T need CAP_NET_RAW"
            )
    if not all(c.ok for c in checks if c.name.startswith("kernel filter")):
        out.append(
            "this kernel refused classic BPF socket filters (SO_ATTACH_FILTER): netdiag still "
            "works, but every ICMP packet the host receives reaches it and is parsed in Python"
        )
    if not all(c.ok for c in checks if c.name.startswith("kernel TX stamps")):
        out.append(
            "this kernel gives no software transmit timestamps (SO_TIMESTAMPING): ping RTTs "
            "start at the clock read before sending (PingResult.tx_kernel is False)"
        )
    dgram = [c for c in checks if c.name.startswith("ICMP datagram")]
    if not all(c.ok for c in dgram):
        out.append("unprivileged ping: " + ping_group_advice())
    return out


def parser() -> cli.Parser:
    """The command line of ``python -m netdiag.doctor`` (also rendered in the docs' CLI page)."""
    p = cli.Parser(prog=PROG, description="Report which netdiag modes this user can run.")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    cli.add_version(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args: argparse.Namespace = parser().parse_args(argv)
    return cli.guard_pipe(lambda: report(args))


def report(args: argparse.Namespace) -> int:
    """Run the checks and print them (text or ``--json``); the exit status says if ping can."""
    checks = run_checks()
    caps = effective_caps()
    has_raw = caps is not None and bool(caps >> CAP_NET_RAW & 1)
    tips = advice(checks)
    if args.json:
        cli.print_json(
            {
                "uid": os.geteuid(),
                "cap_net_raw": has_raw,
                "ping_group_range": ping_group_range(),
                "checks": [c.__dict__ for c in checks],
                "advice": tips,
            }
        )
    else:
        print(f"uid {os.geteuid()}, CAP_NET_RAW {'yes' if has_raw else 'no'}")
        width = max(len(c.name) for c in checks)
        for c in checks:
            state = "yes" if c.ok else f"no ({c.detail})"
            print(f"  {c.name:<{width}}  {state:<28} {c.used_by}")
        for tip in tips:
            print(f"to enable: {tip}")
    ping_ok = any(c.ok for c in checks if "ICMP" in c.name)
    return cli.EXIT_OK if ping_ok else cli.EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
