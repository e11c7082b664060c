"""`python -m netdiag.ping` input handling: one line on stderr, exit 2, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from netdiag.cli import fmt_ms
from netdiag.testing import UNRESOLVABLE as NO_SUCH_HOST


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netdiag.ping", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


BAD = [
    (["-c", "0", "127.0.0.1"], "count must be between 1"),
    (["-c", "x", "127.0.0.1"], "count must be an integer"),
    (["-i", "-1", "127.0.0.1"], "interval must be"),
    (["-i", "nan", "127.0.0.1"], "interval must be"),
    (["-i", "99999", "127.0.0.1"], "interval must be"),
    (["-W", "0", "127.0.0.1"], "timeout must be > 0"),
    (["-s", "70000", "127.0.0.1"], "packet size must be between 0 and 65507"),
    (["-t", "0", "127.0.0.1"], "ttl must be between 1 and 255"),
    (["-t", "256", "127.0.0.1"], "ttl must be between 1 and 255"),
    (["-Q", "300", "127.0.0.1"], "tos must be between 0 and 255"),
    (["-4", "-6", "127.0.0.1"], "not allowed with argument"),
    (["-6", "127.0.0.1"], "not an IPv6 address"),
    ([NO_SUCH_HOST], NO_SUCH_HOST),
    ([], "the following arguments are required"),
    (["--bogus", "127.0.0.1"], "unrecognized arguments"),
    (["-M", "sometimes", "127.0.0.1"], "invalid choice"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    out = run(*args)
    assert out.returncode == 2, out
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("netdiag.ping: ")
    assert message in lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.privileged
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop CAP_NET_RAW with setpriv")
def test_missing_privilege_explains_the_fix() -> None:
    out = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-net_raw",
            "--bounding-set=-net_raw",
            sys.executable,
            "-m",
            "netdiag.ping",
            "-c",
            "1",
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "CAP_NET_RAW" in line and "setcap cap_net_raw+ep" in line


@pytest.mark.privileged
def test_loopback_cli_output_like_iputils() -> None:
    out = run("-c", "2", "-i", "0.05", "127.0.0.1", "::1")
    assert out.returncode == 0, out.stderr
    assert "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data." in out.stdout
    assert "PING ::1(::1) 56 data bytes" in out.stdout
    assert "64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=" in out.stdout
    assert "--- ::1 ping statistics ---" in out.stdout
    assert out.stdout.count("2 packets transmitted, 2 received, 0% packet loss") == 2


@pytest.mark.privileged
def test_csv_format() -> None:
    out = run("-c", "3", "-i", "0.02", "--csv", "127.0.0.1")
    rows = [line.split(",") for line in out.stdout.strip().splitlines()]
    assert [r[:2] for r in rows] == [["127.0.0.1", "1"], ["127.0.0.1", "2"], ["127.0.0.1", "3"]]
    assert all(r[2].isdigit() for r in rows)


def test_console_script_dispatch() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "netdiag.cli", "ping", "-c", "0", "127.0.0.1"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "count must be between" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "netdiag.cli", "frobnicate"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "unknown command" in out.stderr


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.000045, "0.045"), (0.0012345, "1.23"), (0.01234, "12.3"), (0.1234, "123")],
)
def test_rtt_formatting_like_iputils(seconds: float, text: str) -> None:
    assert fmt_ms(seconds) == text


@pytest.mark.privileged
def test_ctrl_c_prints_the_summary() -> None:
    """Like iputils: SIGINT stops pinging, the statistics still print, exit 0 if any reply."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "netdiag.ping", "-c", "1000", "-i", "0.05", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait for the header (under load, importing can take over a second: a SIGINT before
        # the CLI runs is Python's KeyboardInterrupt traceback, not what this test is about).
        assert proc.stdout is not None
        header = proc.stdout.readline()
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        out = header + out
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "--- 127.0.0.1 ping statistics ---" in out
    sent = int(out.split(" packets transmitted")[0].rsplit("\n", 1)[-1])
    assert 3 <= sent < 1000  # stopped early, and counted what it sent
