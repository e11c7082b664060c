"""pytest fixtures for the namespace lab: ``pytest_plugins = ["netdiag.testing.pytest_plugin"]``.

``netdiag_lab`` builds the ECMP diamond once per session and always tears it down;
``netdiag_clean_lab`` is the same lab, reset after each test (nftables flushed in every node,
downed links brought up). Both skip with the reason when the lab cannot be built here, or fail
instead when ``NETDIAG_REQUIRE_PRIVILEGED=1``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import lab_unavailable_reason, skip_or_fail
from .lab import Lab

__all__ = ["netdiag_clean_lab", "netdiag_lab"]


@pytest.fixture(scope="session")
def netdiag_lab() -> Iterator[Lab]:
    """The ECMP diamond lab, built once per session and always torn down. Tests may change it
    (nft rules, links) but must undo that; ``netdiag_clean_lab`` does so automatically."""
    reason = lab_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    the_lab = Lab()
    try:
        the_lab.build()
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def netdiag_clean_lab(netdiag_lab: Lab) -> Iterator[Lab]:
    """The session lab, reset afterwards (nftables flushed, downed links restored)."""
    try:
        yield netdiag_lab
    finally:
        netdiag_lab.reset()
