"""Bad input (issue 6): one table over every CLI and every public constructor.

CLI: each invalid value gives exactly one line on stderr, ``prog: ...`` naming the problem, exit
status 2, nothing on stdout, no traceback -- and no socket is even opened, so nothing partial can
be sent (checked in-process by a spy on socket creation, and end to end in the lab with an
nftables counter in dst). Library: each invalid value raises a precise exception type with a
message naming the field, at construction time.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Callable
from typing import Any

import pytest
from lab import Lab

from netdiag import Bind, Knock, Knocker, Ping, Pinger, Trace, Tracer
from netdiag import sock as nsock
from netdiag.testing import UNRESOLVABLE as NO_SUCH_HOST

# -- CLI ------------------------------------------------------------------------------------------

CLI: list[tuple[str, list[str], str]] = [
    # ping
    ("ping", ["-c", "0", "127.0.0.1"], "count must be between 1"),
    ("ping", ["-c", "x", "127.0.0.1"], "count must be an integer"),
    ("ping", ["-i", "-1", "127.0.0.1"], "interval must be"),
    ("ping", ["-i", "inf", "127.0.0.1"], "interval must be"),
    ("ping", ["-W", "0", "127.0.0.1"], "timeout must be > 0"),
    ("ping", ["-s", "65508", "127.0.0.1"], "packet size must be between 0 and 65507"),
    ("ping", ["-t", "0", "127.0.0.1"], "ttl must be between 1 and 255"),
    ("ping", ["-Q", "256", "127.0.0.1"], "tos must be between 0 and 255"),
    ("ping", ["-M", "maybe", "127.0.0.1"], "invalid choice"),
    ("ping", ["-6", "127.0.0.1"], "127.0.0.1"),
    ("ping", ["-4", "::1"], "::1"),
    ("ping", ["127.0.0.1", NO_SUCH_HOST], NO_SUCH_HOST),
    ("ping", ["--rate", "10", "127.0.0.1"], "--rate needs --file"),
    ("ping", ["--file", "/nonexistent/targets"], "cannot read /nonexistent/targets"),
    ("ping", [], "required"),
    ("ping", ["--bogus", "127.0.0.1"], "unrecognized arguments"),
    # knock
    ("knock", ["127.0.0.1"], "missing port"),
    ("knock", ["127.0.0.1:0"], "invalid port 0"),
    ("knock", ["127.0.0.1:65536"], "invalid port 65536"),
    ("knock", ["127.0.0.1:http"], "invalid port 'http'"),
    ("knock", ["::1"], "missing port"),
    ("knock", ["-c", "0", "127.0.0.1:80"], "count must be between 1"),
    ("knock", ["-W", "0", "127.0.0.1:80"], "timeout must be > 0"),
    ("knock", ["-i", "nan", "127.0.0.1:80"], "interval must be"),
    ("knock", ["-6", "127.0.0.1:80"], "127.0.0.1"),
    ("knock", [f"{NO_SUCH_HOST}:80"], NO_SUCH_HOST),
    ("knock", ["a", "b", "c"], "missing port in 'a'"),
    # trace
    ("trace", ["-f", "10", "-m", "5", "127.0.0.1"], "first TTL (10) exceeds max TTL (5)"),
    ("trace", ["-I", "-p", "80", "127.0.0.1"], "-p does not apply to ICMP"),
    ("trace", ["-m", "256", "127.0.0.1"], "max_ttl must be between 1 and 255"),
    ("trace", ["-q", "0", "127.0.0.1"], "probes must be between 1 and 1024"),
    ("trace", ["-w", "0", "127.0.0.1"], "wait must be > 0"),
    ("trace", ["-N", "0", "127.0.0.1"], "probes in flight must be between 1 and 65536"),
    ("trace", ["-p", "0", "127.0.0.1"], "port must be between 1 and 65535"),
    ("trace", ["--mda", "90", "127.0.0.1"], "invalid choice"),
    ("trace", ["-I", "-T", "127.0.0.1"], "not allowed with argument"),
    ("trace", [NO_SUCH_HOST], NO_SUCH_HOST),
    ("trace", [], "required"),
    # doctor
    ("doctor", ["--bogus"], "unrecognized arguments"),
    ("doctor", ["extra"], "unrecognized arguments"),
]

MODULES = {
    "ping": "netdiag.ping.__main__",
    "knock": "netdiag.knock.__main__",
    "trace": "netdiag.trace.__main__",
    "doctor": "netdiag.doctor",
}


class _SocketOpened(BaseException):
    """Raised by the spy: a BaseException, so no ``except Exception`` in the CLI hides it."""


@pytest.mark.parametrize(
    ("tool", "args", "message"), CLI, ids=[f"{t}:{' '.join(a)}" for t, a, _ in CLI]
)
def test_cli_bad_input_is_one_line_exit_2_and_opens_no_socket(
    tool: str,
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    opened: list[tuple[Any, ...]] = []

    def spy(self: Any, *a: Any, **kw: Any) -> None:
        opened.append(a)
        raise _SocketOpened

    monkeypatch.setattr(nsock.ProbeSocket, "__init__", spy)
    mod = importlib.import_module(MODULES[tool])
    with pytest.raises(SystemExit) as exc:
        mod.main(args)
    out = capsys.readouterr()
    assert exc.value.code == 2, out
    assert opened == []
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith(f"netdiag.{tool}: "), lines[0]
    assert message in lines[0], lines[0]
    assert "Traceback" not in out.err


COUNT_FROM_SRC = """
table inet badinput {
    chain in {
        type filter hook input priority 0;
        ip saddr 198.18.1.2 counter
        ip6 saddr 2001:db8:1::2 counter
    }
}
"""


def _counted(lab: Lab) -> int:
    text = lab.exec("dst", "nft", "list", "table", "inet", "badinput").stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", text))


@pytest.mark.lab
def test_cli_bad_input_sends_nothing_on_the_wire(clean_lab: Lab) -> None:
    """End to end, the real processes in src, a valid target first and the bad value later on
    the command line: nothing reaches dst. (A control run proves the counter counts.)"""
    lab = clean_lab
    d4, d6 = str(lab.dst.v4), str(lab.dst.v6)
    lab.nft("dst", COUNT_FROM_SRC)
    bad = [
        ("netdiag.ping", [d4, d6, NO_SUCH_HOST]),
        ("netdiag.ping", ["-c", "2", "-s", "70000", d4]),
        ("netdiag.ping", ["-M", "do", "-t", "0", d6]),
        ("netdiag.knock", [f"{d4}:22", "-c", "0"]),
        ("netdiag.knock", [f"[{d6}]:99999"]),
        ("netdiag.trace", ["-f", "9", "-m", "3", d4]),
        ("netdiag.trace", ["-I", "-p", "80", d6]),
    ]
    for module, args in bad:
        out = lab.python("src", "-m", module, *args, check=False)
        assert out.returncode == 2, (module, args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert _counted(lab) == 0
    out = lab.python("src", "-m", "netdiag.ping", "-c", "1", d4, check=False)
    assert out.returncode == 0 and _counted(lab) >= 1


# -- library --------------------------------------------------------------------------------------

A4 = ipaddress.ip_address("127.0.0.1")

LIB: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("Ping addr empty", lambda: Ping(""), ValueError, "Ping.addr must not be empty"),
    ("Ping addr int", lambda: Ping(12345), TypeError, "Ping.addr must be an address"),  # type: ignore[arg-type]
    ("Ping count 0", lambda: Ping(A4, count=0), ValueError, "count must be between 1"),
    ("Ping count bool", lambda: Ping(A4, count=True), TypeError, "count must be an integer"),
    ("Ping count float", lambda: Ping(A4, count=2.0), TypeError, "count must be an integer"),  # type: ignore[arg-type]
    ("Ping interval -1", lambda: Ping(A4, interval=-1), ValueError, "interval must be"),
    ("Ping interval nan", lambda: Ping(A4, interval=float("nan")), ValueError, "interval"),
    ("Ping interval str", lambda: Ping(A4, interval="1"), TypeError, "interval must be a number"),  # type: ignore[arg-type]
    ("Ping expiry 0", lambda: Ping(A4, expiry=0), ValueError, "expiry must be more than 0"),
    ("Ping size", lambda: Ping(A4, size=65508), ValueError, "size must be between 0 and 65507"),
    ("Ping ttl 0", lambda: Ping(A4, ttl=0), ValueError, "ttl must be between 1 and 255"),
    ("Ping tos 256", lambda: Ping(A4, tos=256), ValueError, "tos must be between 0 and 255"),
    ("Ping df str", lambda: Ping(A4, df="yes"), TypeError, "df must be None, True or False"),  # type: ignore[arg-type]
    ("Knock addr", lambda: Knock("", 80), ValueError, "Knock.addr must not be empty"),
    ("Knock port 0", lambda: Knock(A4, 0), ValueError, "port must be between 1 and 65535"),
    ("Knock port str", lambda: Knock(A4, "80"), TypeError, "port must be an integer"),  # type: ignore[arg-type]
    ("Knock count", lambda: Knock(A4, 80, count=0), ValueError, "count must be between 1"),
    ("Knock expiry", lambda: Knock(A4, 80, expiry=-1), ValueError, "expiry must be"),
    ("Trace addr", lambda: Trace(""), ValueError, "Trace.addr must not be empty"),
    ("Trace proto", lambda: Trace(A4, proto="sctp"), ValueError, "proto must be 'udp'"),  # type: ignore[arg-type]
    ("Trace icmp port", lambda: Trace(A4, proto="icmp", port=80), ValueError, "port does not"),
    ("Trace ttl order", lambda: Trace(A4, first_ttl=9, max_ttl=3), ValueError, "first_ttl (9)"),
    ("Trace max_ttl", lambda: Trace(A4, max_ttl=0), ValueError, "max_ttl must be between 1"),
    ("Trace flows", lambda: Trace(A4, flows=100), ValueError, "flows must be between 1 and 64"),
    ("Trace confidence", lambda: Trace(A4, confidence=1.0), ValueError, "confidence must be"),
    ("Trace window", lambda: Trace(A4, window=0), ValueError, "window must be between 1"),
    ("Trace dns", lambda: Trace(A4, dns="yes"), TypeError, "dns must be True or False"),  # type: ignore[arg-type]
    ("Trace expiry", lambda: Trace(A4, expiry=0), ValueError, "expiry must be more than 0"),
    ("Bind v4 is v6", lambda: Bind(v4="::1"), ValueError, "Bind.v4 must be an IPv4 address"),
    ("Bind v6 is v4", lambda: Bind(v6="127.0.0.1"), ValueError, "Bind.v6 must be an IPv6"),
    ("Bind v4 junk", lambda: Bind(v4="not-an-ip"), ValueError, "not an IP address: 'not-an-ip'"),
    ("Bind v4 int", lambda: Bind(v4=1), TypeError, "expected an IP address string"),  # type: ignore[arg-type]
    ("Bind device", lambda: Bind(device="x" * 16), ValueError, "not an interface name"),
    ("Bind device /", lambda: Bind(device="a/b"), ValueError, "not an interface name"),
    ("Pinger bind", lambda: Pinger(bind="127.0.0.1"), TypeError, "bind must be a netdiag.Bind"),  # type: ignore[arg-type]
    ("Pinger privileged", lambda: Pinger(privileged="yes"), TypeError, "privileged must be"),  # type: ignore[arg-type]
    ("Pinger rcvbuf", lambda: Pinger(rcvbuf=-1), ValueError, "rcvbuf must be between"),
    ("Pinger rcvbuf str", lambda: Pinger(rcvbuf="8M"), TypeError, "rcvbuf must be an integer"),  # type: ignore[arg-type]
    ("Knocker bind", lambda: Knocker(bind=A4), TypeError, "bind must be a netdiag.Bind"),  # type: ignore[arg-type]
    ("Knocker rcvbuf", lambda: Knocker(rcvbuf=0), ValueError, "rcvbuf must be between"),
    ("Tracer bind", lambda: Tracer(bind=("::1",)), TypeError, "bind must be a netdiag.Bind"),  # type: ignore[arg-type]
    ("Tracer rcvbuf", lambda: Tracer(rcvbuf=1 << 40), ValueError, "rcvbuf must be between"),
]


@pytest.mark.parametrize(("name", "make", "exc", "message"), LIB, ids=[c[0] for c in LIB])
def test_library_bad_input_raises_a_precise_exception(
    name: str, make: Callable[[], object], exc: type[Exception], message: str
) -> None:
    with pytest.raises(Exception) as info:
        make()
    assert type(info.value) is exc, (name, info.value)
    assert message in str(info.value), (name, str(info.value))


async def test_calls_with_the_wrong_argument_type_raise_type_error() -> None:
    """Methods given something that is not their parameter object fail before any I/O (the
    objects here were never entered, so no socket exists)."""
    with pytest.raises(TypeError, match=r"expected a netdiag\.Ping"):
        async for _ in Pinger().results("127.0.0.1"):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError, match=r"expected a netdiag\.Knock"):
        async for _ in Knocker().results(("127.0.0.1", 80)):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError, match=r"expected a netdiag\.Trace"):
        async for _ in Tracer().results("127.0.0.1"):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="rate must be more than 0"):
        async for _ in Pinger().sweep(["127.0.0.1"], rate=0):
            pass
