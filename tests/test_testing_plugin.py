"""netdiag.testing is usable from someone else's test suite: a project that only loads the
plugin gets a working lab fixture (its own, torn down after its session)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netdiag.testing import lab_unavailable_reason

pytestmark = pytest.mark.lab

USER_TEST = """
import trio
from netdiag import Ping, Pinger

pytest_plugins = ["netdiag.testing.pytest_plugin"]


def test_pings_dst_from_src(netdiag_clean_lab):
    lab = netdiag_clean_lab

    async def main():
        with lab.enter("src"):
            pinger = Pinger()
            async with pinger:
                return [rtt async for rtt in pinger.ping(Ping(lab.dst.v4, count=2, interval=0))]

    rtts = trio.run(main)
    assert len(rtts) == 2 and all(r is not None for r in rtts)
"""


def test_a_user_project_gets_the_lab_fixture(tmp_path: Path) -> None:
    assert lab_unavailable_reason() is None
    (tmp_path / "test_user.py").write_text(USER_TEST)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
