"""Shared pytest setup: privilege detection, marker gating and the lab fixture.

Why gate in a hook: most of netdiag needs raw sockets (``privileged``) and the
integration tests need the namespace lab (``lab``).  On a developer laptop
those tests should *skip* with a reason that says how to enable them; in CI,
where they are the point, ``NETDIAG_REQUIRE_PRIVILEGED=1`` turns every such
skip into a failure so a misconfigured runner cannot go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Make `import lab` work whatever pytest's import mode (importlib mode does not
# put this directory on sys.path); test modules rely on it too.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from lab import Lab

CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21

PRIVILEGED_REASON = "needs raw sockets: run as root or give the interpreter CAP_NET_RAW"
LAB_REASON = "needs the network-namespace lab"


def _effective_caps() -> int | None:
    """CapEff bitmask of this process, or None where /proc does not tell."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return None


def _has_cap(bit: int) -> bool:
    caps = _effective_caps()
    return caps is not None and bool(caps >> bit & 1)


def privileged() -> bool:
    """True if this process may open raw sockets.

    The kernel checks CAP_NET_RAW in the effective set, not the uid, so CapEff
    decides; uid 0 counts only where capabilities cannot be read.  (A root
    container started with ``--cap-drop NET_RAW`` is therefore *not*
    privileged, which is the truth.)
    """
    caps = _effective_caps()
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
    return f"{LAB_REASON}: missing {', '.join(missing)}"


def lab_capable() -> bool:
    """True if namespaces, veths and nftables rules can be created here."""
    return lab_unavailable_reason() is None


def require_privileged_env() -> bool:
    """True when skips must become failures (CI sets NETDIAG_REQUIRE_PRIVILEGED=1)."""
    return os.environ.get("NETDIAG_REQUIRE_PRIVILEGED") == "1"


def _skip_or_fail(reason: str) -> None:
    if require_privileged_env():
        pytest.fail(f"{reason} (NETDIAG_REQUIRE_PRIVILEGED=1)", pytrace=False)
    pytest.skip(reason)


def _gate(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is not None and not privileged():
        _skip_or_fail(PRIVILEGED_REASON)
    if item.get_closest_marker("lab") is not None:
        reason = lab_unavailable_reason()
        if reason is not None:
            _skip_or_fail(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a lab fixture as ``lab`` so gating cannot be forgotten."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if ("lab" in fixtures or "clean_lab" in fixtures) and not item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.lab)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, with NETDIAG_REQUIRE_PRIVILEGED=1, fail) tests the host cannot run."""
    _gate(item)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The ECMP diamond lab, built once per session and always torn down.

    Tests may change it (nft rules, links) but must undo that; the
    ``clean_lab`` fixture does so automatically.
    """
    reason = lab_unavailable_reason()
    if reason is not None:  # also gated here in case a test forgot the marker
        _skip_or_fail(reason)
    the_lab = Lab()
    try:
        the_lab.build()
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def clean_lab(lab: Lab) -> Iterator[Lab]:
    """The session lab, reset afterwards (nftables flushed, downed links restored)."""
    try:
        yield lab
    finally:
        lab.reset()


@pytest.fixture
def dst_listener(lab: Lab) -> Iterator[int]:
    """A dual-stack TCP listener in dst (it answers SYNs with SYN-ACKs); yields its port."""
    with lab.enter("dst"):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0))
    s.listen(128)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()
