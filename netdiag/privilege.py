"""The one place that says what a refused socket needs and how to allow it.

:class:`~netdiag.errors.PrivilegeError`, the Tracer's "-I/-T need raw sockets", the ping
fallback's ``ping_group_range`` message, ``python -m netdiag.doctor`` and the docs all give this
advice, so it cannot drift apart.

Why not ``sudo setcap cap_net_raw+ep "$(readlink -f .venv/bin/python)"``: a venv's ``python`` is
a symlink to the shared base interpreter, so the capability would go to *every* script that
interpreter ever runs. The capability belongs on a binary that runs netdiag only: the python of a
``--copies`` venv is a copy of the interpreter, so ``setcap`` on it grants CAP_NET_RAW to that
venv's programs and nothing else. ``tests/test_cli_habits.py`` follows the recipe and pings as an
unprivileged user with it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = [
    "VENV",
    "own_interpreter",
    "ping_group_advice",
    "ping_group_range",
    "raw_socket_advice",
    "setcap_recipe",
]

#: Where the recipe puts the dedicated venv (any path works).
VENV = "~/.netdiag-venv"


def own_interpreter() -> str | None:
    """This interpreter's path if it is a venv's own copy (``venv --copies``), so ``setcap``
    on it reaches only this venv; ``None`` for a symlinked venv or a system interpreter."""
    exe = sys.executable
    if not exe or sys.prefix == sys.base_prefix or os.path.islink(exe):
        return None
    prefix = os.path.realpath(sys.prefix) + os.sep
    return exe if os.path.realpath(exe).startswith(prefix) else None


def _source() -> str:
    """What ``pip install`` should install: this checkout, or the package by name."""
    root = Path(__file__).resolve().parent.parent
    return str(root) if (root / "pyproject.toml").is_file() else "netdiag"


def setcap_recipe(venv: str = VENV) -> list[str]:
    """The commands that give CAP_NET_RAW to netdiag alone: a ``--copies`` venv (its python is
    a file of its own, not a symlink to the shared interpreter) and ``setcap`` on that copy."""
    return [
        f"python3 -m venv --copies {venv}",
        f"{venv}/bin/pip install {_source()}",
        f"sudo setcap cap_net_raw+ep {venv}/bin/python3",
        f"{venv}/bin/python3 -m netdiag ping 127.0.0.1",
    ]


def raw_socket_advice(what: str = "raw sockets") -> str:
    """One line: ``what`` needs CAP_NET_RAW, and the two ways to get it without granting it
    to every script of the system's Python."""
    own = own_interpreter()
    if own is not None:
        grant = f"`sudo setcap cap_net_raw+ep {own}` (this venv's own copy of the interpreter)"
    else:
        steps = setcap_recipe()
        grant = (
            f"give it to a Python of netdiag's own: `{' && '.join(steps[:3])}`, then run "
            f"`{VENV}/bin/python3 -m netdiag ...` (a --copies venv: setcap on a symlinked "
            f"venv's python would reach every script of {os.path.realpath(sys.executable)})"
        )
    return f"{what} need CAP_NET_RAW: run as root (sudo), or {grant}"


def ping_group_range() -> tuple[int, int] | None:
    """``net.ipv4.ping_group_range``: the gids allowed ICMP datagram sockets (``None`` if
    unreadable). It governs IPv6 ICMP datagram sockets too."""
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return None


def ping_group_advice() -> str:
    """One line: why ICMP datagram sockets were refused, and how to allow them."""
    lo, hi = ping_group_range() or (1, 0)
    groups = sorted({os.getgid(), *os.getgroups()})
    return (
        f"ICMP datagram sockets need one of your groups {groups} in net.ipv4.ping_group_range "
        f"(now {lo} {hi}): `sudo sysctl -w net.ipv4.ping_group_range='0 2147483647'`"
    )
