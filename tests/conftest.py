"""Shared pytest setup: privilege detection, marker gating and the lab fixtures (which come
from netdiag.testing, the lab users can test their own code with).

Why gate in a hook: most of netdiag needs raw sockets (``privileged``) and the
integration tests need the namespace lab (``lab``).  On a developer laptop
those tests should *skip* with a reason that says how to enable them; in CI,
where they are the point, ``NETDIAG_REQUIRE_PRIVILEGED=1`` turns every such
skip into a failure so a misconfigured runner cannot go green by skipping.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Make `import lab` work whatever pytest's import mode (importlib mode does not
# put this directory on sys.path); test modules rely on it too.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from lab import Lab

from netdiag.testing import has_raw_sockets, lab_unavailable_reason, skip_or_fail

pytest_plugins = ["netdiag.testing.pytest_plugin"]

PRIVILEGED_REASON = "needs raw sockets: run as root or give the interpreter CAP_NET_RAW"


def _gate(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is not None and not has_raw_sockets():
        skip_or_fail(PRIVILEGED_REASON)
    if item.get_closest_marker("lab") is not None:
        reason = lab_unavailable_reason()
        if reason is not None:
            skip_or_fail(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a lab fixture as ``lab`` so gating cannot be forgotten."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        uses_lab = {"lab", "clean_lab", "netdiag_lab", "netdiag_clean_lab"} & set(fixtures)
        if uses_lab and not item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.lab)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, with NETDIAG_REQUIRE_PRIVILEGED=1, fail) tests the host cannot run."""
    _gate(item)


@pytest.fixture(scope="session")
def lab(netdiag_lab: Lab) -> Lab:
    """The ECMP diamond lab (netdiag.testing's fixture), built once per session."""
    return netdiag_lab


@pytest.fixture
def clean_lab(netdiag_clean_lab: Lab) -> Lab:
    """The session lab, reset afterwards (nftables flushed, downed links restored)."""
    return netdiag_clean_lab


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


# -- network safety net ------------------------------------------------------------------------
# Lab addresses (198.18.0.0/15, 2001:db8::/32) exist only inside the lab's namespaces. A socket
# opened in the host's namespace that sends to one would leave through the host's real routes
# (it happened once, in a test that created its Tracer outside `lab.enter`). Every ProbeSocket
# remembers the network namespace it was opened in; sending to a lab address from the host's
# namespace fails the test instead of leaving the machine.

_HOST_NETNS = os.stat("/proc/self/ns/net").st_ino
_LAB_PREFIXES = ("198.18.", "198.19.", "2001:db8:")


@pytest.fixture(autouse=True, scope="session")
def _lab_traffic_stays_in_the_lab() -> Iterator[None]:
    from netdiag.sock import ProbeSocket

    original_init = ProbeSocket.__init__
    original_send = ProbeSocket.send_nowait

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._netns_ino = os.stat("/proc/thread-self/ns/net").st_ino

    def send_nowait(self: Any, data: bytes, dst: str, *args: Any, **kwargs: Any) -> int:
        if dst.startswith(_LAB_PREFIXES) and getattr(self, "_netns_ino", None) == _HOST_NETNS:
            raise AssertionError(
                f"a socket opened in the host's network namespace sent to the lab address {dst}: "
                "open netdiag objects inside `with lab.enter(node):`"
            )
        return original_send(self, data, dst, *args, **kwargs)

    ProbeSocket.__init__ = init  # type: ignore[method-assign]
    ProbeSocket.send_nowait = send_nowait  # type: ignore[method-assign]
    try:
        yield
    finally:
        ProbeSocket.__init__ = original_init  # type: ignore[method-assign]
        ProbeSocket.send_nowait = original_send  # type: ignore[method-assign]
