"""Test your own code built on netdiag against real hosts, routers and firewalls.

:class:`~netdiag.testing.lab.Lab` builds a topology of Linux network namespaces joined by veth
pairs -- by default the ECMP diamond netdiag's own suite uses, ``src - r1 - {r2a | r2b} - r3 -
dst`` -- with routers forwarding, 5-tuple ECMP hashing, and nftables in every node for loss and
filtering. It only uses 198.18.0.0/15 and 2001:db8::/32, never links to the host's interfaces,
and deletes every namespace it made, even those a crashed run left behind.

With pytest, load the fixtures in your ``conftest.py``::

    pytest_plugins = ["netdiag.testing.pytest_plugin"]

    def test_my_monitor_sees_the_diamond(netdiag_lab):
        with netdiag_lab.enter("src"):
            ...  # sockets opened here live in src; netdiag_lab.dst.v4 is the target

Needs root (the lab is built with ``ip netns``) and ``nft``; :func:`lab_unavailable_reason`
says what is missing, and the fixtures skip with that reason (or fail, when
``NETDIAG_REQUIRE_PRIVILEGED=1`` says the tests must run).
"""

from __future__ import annotations

import os
import shutil

from ..doctor import effective_caps
from .lab import DIAMOND, Lab, Topology

__all__ = [
    "DIAMOND",
    "UNRESOLVABLE",
    "Lab",
    "Topology",
    "has_raw_sockets",
    "lab_unavailable_reason",
    "require_privileged",
    "skip_or_fail",
]

#: A host name that fails to resolve without a single DNS query leaving the machine: its first
#: label is longer than the 63 characters DNS allows, so the IDNA codec refuses it before any
#: lookup. Tests of "unknown host" errors use it, since the host's resolver is outside.
UNRESOLVABLE = "x" * 64 + ".invalid"

CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21


def _has_cap(bit: int) -> bool:
    caps = effective_caps()
    return caps is not None and bool(caps >> bit & 1)


def has_raw_sockets() -> bool:
    """True if this process may open raw sockets.

    The kernel checks CAP_NET_RAW in the effective set, not the uid, so CapEff decides; uid 0
    counts only where capabilities cannot be read. (A root container started with
    ``--cap-drop NET_RAW`` is therefore *not* privileged, which is the truth.)
    """
    caps = effective_caps()
    if caps is None:
        return os.geteuid() == 0
    return bool(caps >> CAP_NET_RAW & 1)


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot be built here, or None if it can."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (euid 0)")
    if not _has_cap(CAP_SYS_ADMIN):
        missing.append("CAP_SYS_ADMIN")
    missing += [f"`{tool}` on PATH" for tool in ("ip", "nft") if shutil.which(tool) is None]
    if not missing:
        return None
    return f"needs the network-namespace lab: missing {', '.join(missing)}"


def require_privileged() -> bool:
    """True when privileged tests must run rather than skip (``NETDIAG_REQUIRE_PRIVILEGED=1``,
    as netdiag's CI sets it)."""
    return os.environ.get("NETDIAG_REQUIRE_PRIVILEGED") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the running pytest test, or fail it when :func:`require_privileged` says the
    privileged tests must run (so a misconfigured CI cannot go green by skipping)."""
    import pytest  # only tests call this; the package itself never needs pytest

    if require_privileged():
        pytest.fail(f"{reason} (NETDIAG_REQUIRE_PRIVILEGED=1)", pytrace=False)
    pytest.skip(reason)
