"""Start-up (issue 12): the ping CLI loads neither the Tracer, nor the Knocker, nor dpkt, so
``python -m netdiag.ping`` starts in what trio and the Pinger cost; ``netdiag`` still offers
every public name (PEP 562 lazy attributes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import netdiag

HEAVY = ("netdiag.trace", "netdiag.knock", "dpkt")

REPORT = """
import json, sys
{body}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "dpkt" or m in {heavy})))
"""


def _loaded(body: str) -> list[str]:
    code = REPORT.format(body=body, heavy=repr(set(HEAVY)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_ping_cli_loads_no_tracer_knocker_or_dpkt() -> None:
    assert _loaded("import netdiag.ping.__main__") == []


@pytest.mark.privileged
def test_running_the_ping_cli_loads_no_tracer_knocker_or_dpkt() -> None:
    body = (
        "from netdiag.ping.__main__ import main\n"
        "rc = main(['-c', '1', '-q', '::1'])\n"
        "assert rc == 0, rc"
    )
    assert _loaded(body) == []


def test_the_public_names_still_resolve_and_load_on_use() -> None:
    assert "Tracer" in dir(netdiag) and "Tracer" in netdiag.__all__
    assert set(netdiag.__all__) <= set(dir(netdiag))
    for name in netdiag.__all__:
        assert getattr(netdiag, name) is not None, name
    assert _loaded("from netdiag import Tracer") == ["netdiag.trace"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        netdiag.Nope  # noqa: B018
