"""The exporter's configuration and CLI: every bad input is one line naming file, key and
problem, and exit 2; a bad reload keeps the old jobs running; the example config loads."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from netdiag.exporter.config import ConfigError, load, parse_target

ROOT = Path(__file__).resolve().parents[1]
GOOD_PING = '[[ping]]\nname = "p"\ntargets = ["127.0.0.1"]\n'

BAD = [
    # (TOML, key the error must name, words of the problem)
    ('[[ping]]\nname = "p"\ntargets = ["127.0.0.1"]\nintervall = 1\n', "ping[0].intervall",
     "unknown key"),
    ("[exporter]\nmax_rate = 10\nspeed = 1\n", "exporter.speed", "unknown key"),
    ("[pingg]\n", "pingg", "unknown key"),
    ('[[ping]]\nname = "p"\ntargets = ["127.0.0.1"]\ncount = "4"\n', "ping[p].count",
     "must be an integer"),
    ('[[ping]]\nname = "p"\ntargets = ["127.0.0.1"]\nevery = "10s"\n', "ping[p].every",
     "must be a number"),
    ('[[ping]]\nname = "p"\ntargets = "127.0.0.1"\n', "ping[p].targets", "array"),
    ('[[ping]]\nname = "p"\ntargets = ["198.18.6.300"]\n', "ping[p].targets[0]",
     "not an IP address or host name"),
    ('[[ping]]\nname = "p"\ntargets = ["bad host"]\n', "ping[p].targets[0]",
     "not an IP address or host name"),
    ('[[ping]]\nname = "p"\ntargets = [""]\n', "ping[p].targets[0]", "not an address"),
    ('[[knock]]\nname = "k"\ntargets = ["127.0.0.1:0"]\n', "knock[k].targets[0]",
     "between 1 and 65535"),
    ('[[knock]]\nname = "k"\ntargets = ["127.0.0.1"]\nport = 0\n', "knock[k].port",
     "between 1 and 65535"),
    ('[[knock]]\nname = "k"\ntargets = ["127.0.0.1"]\n', "knock[k].targets[0]", "no port"),
    ('[[trace]]\nname = "t"\ntargets = ["127.0.0.1"]\nport = 99999\n', "trace[t].port",
     "between 1 and 65535"),
    ('[[trace]]\nname = "t"\ntargets = ["127.0.0.1"]\nproto = "sctp"\n', "trace[t].proto",
     "must be"),
    ('[[trace]]\nname = "t"\ntargets = ["127.0.0.1"]\nminimize = "time"\n',
     "trace[t].minimize", "must be"),
    ('[[trace]]\nname = "t"\ntargets = ["127.0.0.1"]\nstop_at_first_arrival = 1\n',
     "trace[t].stop_at_first_arrival", "true or false"),
    (GOOD_PING + '[[trace]]\nname = "p"\ntargets = ["127.0.0.1"]\n', "trace[p].name",
     "duplicate job name"),
    (GOOD_PING + GOOD_PING, "ping[p].name", "duplicate job name"),
    ('[[ping]]\nname = "p"\ntargets = ["127.0.0.1", "127.0.0.1"]\n', "ping[p].targets",
     "listed twice"),
    ('[[ping]]\nname = "p"\ntargets = ["127.0.0.1"]\nevery = 0\n', "ping[p].every", "> 0"),
    ('[[ping]]\nname = "p"\ntargets = ["127.0.0.1"]\nevery = 1\ncount = 10\ninterval = 1\n',
     "ping[p].every", "longer than every"),
    ('[[ping]]\nname = "p"\ntargets = ["127.0.0.1"]\nlabels = { job = "x" }\n',
     "ping[p].labels.job", "sets itself"),
    ('[[ping]]\nname = "p"\ntargets = ["127.0.0.1"]\nlabels = { site = 3 }\n',
     "ping[p].labels.site", "must be a string"),
    ('[[ping]]\ntargets = ["127.0.0.1"]\n', "ping[0].name", "is required"),
    ('[[module]]\nname = "m"\nkind = "dig"\n', "module[0].kind", "must be"),
    ("[[ping]\n", "", "not valid TOML"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "problem"), BAD)
def test_bad_config_is_one_line_naming_file_key_and_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    assert f": {key}: " in msg if key else True
    assert problem in msg


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


def test_targets_parse() -> None:
    assert parse_target("198.18.6.2", False) == ("198.18.6.2", 0)
    assert parse_target("dst.lab", False) == ("dst.lab", 0)
    assert parse_target("[2001:db8:6::2]:22", True) == ("2001:db8:6::2", 22)
    assert parse_target("2001:db8:6::2", True) == ("2001:db8:6::2", 0)
    assert parse_target("dst:443", True) == ("dst", 443)
    assert parse_target("[2001:db8:6::2]", False) == ("2001:db8:6::2", 0)
    for bad in ("1.2.3.4:x", "[::1", "-bad-", "a..b", "[dst]"):
        with pytest.raises(ValueError):
            parse_target(bad, True)


def test_trace_jobs_choose_the_probe_economy(tmp_path: Path) -> None:
    """``minimize`` and ``stop_at_first_arrival`` reach the Trace each round runs."""
    from netdiag.exporter.runner import trace_of

    path = tmp_path / "t.toml"
    path.write_text(
        '[[trace]]\nname = "t"\ntargets = ["127.0.0.1"]\nminimize = "rounds"\n'
        "stop_at_first_arrival = true\n"
    )
    (job,) = load(path).jobs
    trace = trace_of("127.0.0.1", job.options)  # type: ignore[arg-type]
    assert trace.minimize == "rounds" and trace.stop_at_first_arrival
    path.write_text('[[trace]]\nname = "t"\ntargets = ["127.0.0.1"]\n')
    (job,) = load(path).jobs
    trace = trace_of("127.0.0.1", job.options)  # type: ignore[arg-type]
    assert trace.minimize == "probes" and not trace.stop_at_first_arrival


def test_example_config_loads() -> None:
    cfg = load(ROOT / "examples" / "exporter.toml")
    kinds = {j.kind for j in cfg.jobs}
    assert kinds == {"ping", "trace", "knock"}
    assert {m.kind for m in cfg.modules} >= {"ping"}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netdiag.exporter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(("text", "key", "problem"), [BAD[0], BAD[6], BAD[10], BAD[14]])
def test_cli_bad_config_exits_2_with_one_line(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    proc = _cli("--config", str(path), "--listen", "127.0.0.1:1")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert key in lines[0] and problem in lines[0] and str(path) in lines[0]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--ping", "bad host"],
        ["--knock", "127.0.0.1"],
        ["--knock", "127.0.0.1:0"],
        ["--ping", "127.0.0.1", "--listen", "127.0.0.1"],
        ["--ping", "127.0.0.1", "--listen", "127.0.0.1:0"],
        ["--ping", "127.0.0.1", "--max-rate", "0"],
        ["--ping", "127.0.0.1", "--every", "0.5"],
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(args: list[str]) -> None:
    proc = _cli(*args)
    assert proc.returncode == 2, proc
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("netdiag-exporter: ")


def test_missing_extra_says_how_to_install() -> None:
    code = (
        "import sys; sys.modules['hypercorn'] = None\n"
        "from netdiag.exporter.__main__ import main\n"
        "main(['--ping', '127.0.0.1'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "netdiag-exporter: the exporter needs its extra packages: pip install 'netdiag[exporter]'"
    )


def test_netdiag_exporter_command_is_registered() -> None:
    proc = subprocess.run([sys.executable, "-m", "netdiag.cli", "exporter", "--help"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0 and "--max-rate" in proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return str(r.read().decode())


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample ``name{labels...}`` in exposition ``text``."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(fn, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        time.sleep(0.1)


@pytest.mark.privileged
def test_bad_reload_keeps_old_jobs_and_good_reload_applies(tmp_path: Path) -> None:
    """SIGHUP with a broken file: logged, counted, old jobs go on; a fixed file is applied."""
    path = tmp_path / "exporter.toml"
    path.write_text('[[ping]]\nname = "lo"\ntargets = ["127.0.0.1"]\nevery = 0.5\n'
                    'count = 1\nexpiry = 0.3\n')  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "netdiag.exporter", "--config", str(path),
         "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (sample(scrape(port), "netdiag_rounds_total", check="lo") or 0) >= 1)
        path.write_text('[[ping]]\nname = "lo"\ntargets = ["127.0.0.1"]\nevery = "often"\n')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: sample(scrape(port), "netdiag_config_reloads_total", result="failure"))
        text = scrape(port)
        assert sample(text, "netdiag_config_last_reload_successful") == 0
        before = sample(text, "netdiag_rounds_total", check="lo") or 0
        wait_for(lambda: (sample(scrape(port), "netdiag_rounds_total", check="lo") or 0)
                 >= before + 2)  # fmt: skip
        # a good reload: job renamed -> the old series go, the new one runs
        path.write_text('[[ping]]\nname = "lo2"\ntargets = ["::1"]\nevery = 0.5\n'
                        'count = 1\nexpiry = 0.3\n')  # fmt: skip
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: sample(scrape(port), "netdiag_rounds_total", check="lo2"))
        text = scrape(port)
        assert sample(text, "netdiag_rounds_total", check="lo") is None
        assert sample(text, "netdiag_config_reloads_total", result="success") == 1
        assert scrape(port, "/-/ready").startswith("Ready")
        assert scrape(port, "/-/healthy").startswith("Healthy")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        err = proc.stderr.read() if proc.stderr else ""
        assert "reload failed, keeping the running configuration" in err
        assert "ping[lo].every" in err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.privileged
def test_ndjson_prints_every_result_as_one_json_line() -> None:
    import json

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "netdiag.exporter", "--ping", "127.0.0.1", "--knock",
         "127.0.0.1:1", "--every", "2", "--ndjson", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (sample(scrape(port), "netdiag_rounds_total", check="cli-ping") or 0) >= 2)
        wait_for(lambda: sample(scrape(port), "netdiag_rounds_total", check="cli-knock"))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    docs = [json.loads(line) for line in out.splitlines()]
    pings = [d for d in docs if d["diagnostic"] == "ping"]
    knocks = [d for d in docs if d["diagnostic"] == "knock"]
    assert len(pings) >= 8 and all(d["check"] == "cli-ping" for d in pings)  # 4 per round
    assert {d["result"]["kind"] for d in pings} == {"reply"}
    assert knocks and knocks[0]["target"] == "127.0.0.1:1"
    assert knocks[0]["result"]["kind"] == "closed"
