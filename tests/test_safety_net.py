"""The suite's safety net (tests/conftest.py): a socket opened in the host's network namespace
cannot send to a lab address. Checked with loopback standing in for the lab prefixes, so a
broken net would send to 127.0.0.1, never out of the machine."""

from __future__ import annotations

import conftest
import pytest

from netdiag import Ping, Pinger

pytestmark = pytest.mark.privileged


async def test_a_host_namespace_socket_cannot_send_to_the_lab(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conftest, "_LAB_PREFIXES", ("127.0.0.",))
    async with Pinger() as p:
        with pytest.raises(AssertionError, match="host's network namespace"):
            async for _ in p.results(Ping("127.0.0.1", count=1, expiry=0.2)):
                pass
        assert p.engine.stats.received == 0  # nothing left, so nothing came back
