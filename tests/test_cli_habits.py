"""The habits of the tools netdiag imitates (issue 15): closed pipes, several knock targets,
iputils ping's flags, fping's mass-ping manners, the setcap advice that really contains the
capability, and the wording users read.

Traffic goes to loopback only (names from /etc/hosts: ``localhost`` is 127.0.0.1 both ways);
cases that need routers or a name without IPv6 run in the lab.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from lab import Lab

import netdiag
from netdiag import privilege
from netdiag.ping import PingResult
from netdiag.ping.__main__ import _line

ROOT = Path(__file__).resolve().parent.parent


def tool(
    *args: str, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- 2: a closed pipe ends the tool quietly, status 141 like iputils (SIGPIPE) -------------------


def closed_early(argv: list[str], lines: int, stdin: str | None = None) -> tuple[int, str]:
    """Start a tool, read ``lines`` lines of its output, then close the pipe as ``head`` does;
    return its exit status and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        assert proc.stdout is not None and proc.stderr is not None
        for _ in range(lines):
            assert proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        return proc.wait(timeout=30), err
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("argv", "lines", "stdin"),
    [
        pytest.param(["netdiag.ping", "-c", "5", "-i", "0.2", "127.0.0.1"], 2, None, id="ping"),
        pytest.param(["netdiag.ping", "-c", "5", "-i", "0.2", "--csv", "::1"], 1, None, id="csv"),
        pytest.param(["netdiag.ping", "-c", "2", "-i", "0.1", "--json", "::1"], 0, None, id="json"),
        pytest.param(
            ["netdiag.ping", "--file", "-", "-c", "2", "-i", "0.1"],
            0,
            "127.0.0.1\n::1\n",
            id="mass",
        ),
        pytest.param(
            ["netdiag.knock", "-c", "5", "-i", "0.2", "127.0.0.1", "9"], 2, None, id="knock"
        ),
        pytest.param(
            ["netdiag.trace", "-n", "-q", "1", "-w", "0.5", "127.0.0.1"], 0, None, id="trace"
        ),
        pytest.param(["netdiag.doctor"], 0, None, id="doctor"),
        pytest.param(["netdiag", "--help"], 0, None, id="netdiag-help"),
    ],
)
def test_closed_pipe_exits_quietly_with_141(argv: list[str], lines: int, stdin: str | None) -> None:
    rc, err = closed_early(argv, lines, stdin)
    assert (rc, err) == (141, "")


# -- 4: knock several targets, host port, -p ----------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    """An open TCP port on 127.0.0.1 (the knock's SYN-ACK; the kernel answers, nothing
    connects)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.privileged
def test_knock_several_targets_concurrently(listener: int) -> None:
    closed = closed_port()
    out = tool("netdiag.knock", "-c", "2", "-i", "0.05", f"127.0.0.1:{listener}",
               f"127.0.0.1:{closed}")  # fmt: skip
    assert out.returncode == 1, out.stderr  # one target never answered open
    assert out.stderr == ""
    assert f"KNOCK 127.0.0.1 (127.0.0.1) port {listener}: 2 SYN probes" in out.stdout
    assert f"KNOCK 127.0.0.1 (127.0.0.1) port {closed}: 2 SYN probes" in out.stdout
    assert out.stdout.count(f"127.0.0.1 port {listener} open: seq=") == 2
    assert out.stdout.count(f"127.0.0.1 port {closed} closed (RST): seq=") == 2
    assert f"--- 127.0.0.1 port {listener} knock statistics ---" in out.stdout
    assert f"--- 127.0.0.1 port {closed} knock statistics ---" in out.stdout
    assert "2 probes sent, 2 open, 0 closed" in out.stdout
    assert "2 probes sent, 0 open, 2 closed" in out.stdout
    js = json.loads(
        tool(
            "netdiag.knock", "-c", "1", "--json", f"127.0.0.1:{listener}", f"[::1]:{closed}"
        ).stdout
    )
    assert [(k["addr"], k["port"], k["stats"]["sent"]) for k in js["knocks"]] == [
        ("127.0.0.1", listener, 1),
        ("::1", closed, 1),
    ]
    assert [r["seq"] for k in js["knocks"] for r in k["results"]] == [1, 1]  # 1-based


@pytest.mark.privileged
def test_knock_host_port_and_hping3_p(listener: int) -> None:
    # two words, the second all digits: one target "host port", as before
    out = tool("netdiag.knock", "-c", "1", "127.0.0.1", str(listener))
    assert out.returncode == 0, out.stderr
    assert f"port {listener} open: seq=1 time=" in out.stdout  # one target: no host prefix
    # hping3's -p: the words are hosts, a bare IPv6 address included
    out = tool("netdiag.knock", "-c", "1", "-p", str(listener), "127.0.0.1", "localhost")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(f"port {listener} knock statistics") == 2
    assert "--- localhost port" in out.stdout
    closed = closed_port()
    out = tool("netdiag.knock", "-c", "1", "-p", str(closed), "::1")
    assert out.returncode == 1 and f"port {closed} closed (RST): seq=1" in out.stdout


def test_knock_target_parsing() -> None:
    from netdiag.knock.__main__ import parse_targets

    assert parse_targets(["h", "80"]) == [("h", 80)]
    assert parse_targets(["a:1", "[::1]:2", "b:3"]) == [("a", 1), ("::1", 2), ("b", 3)]
    assert parse_targets(["a", "::1", "[::2]", "c:9"], port=7) == [
        ("a", 7), ("::1", 7), ("::2", 7), ("c", 9),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="missing port in 'a'"):
        parse_targets(["a", "b"])


# -- 7: the setcap advice, followed ---------------------------------------------------------------


def test_advice_never_grants_the_shared_interpreter() -> None:
    text = privilege.raw_socket_advice()
    assert "CAP_NET_RAW" in text and "root" in text
    own = privilege.own_interpreter()
    if own is None:  # a symlinked venv or the system python: the --copies recipe
        assert (
            "venv --copies" in text and "setcap cap_net_raw+ep ~/.netdiag-venv/bin/python3" in text
        )
        assert f"setcap cap_net_raw+ep {os.path.realpath(sys.executable)}" not in text
    else:
        assert f"setcap cap_net_raw+ep {own}" in text
    # One wording everywhere: the exception, the Tracer's message and doctor take it from here.
    assert str(netdiag.PrivilegeError()) == text
    readme = (ROOT / "README.md").read_text()
    recipe = privilege.setcap_recipe()
    for step in (recipe[0], recipe[2], recipe[3]):
        assert step in readme
    assert "bin/pip install" in readme


@pytest.mark.privileged
@pytest.mark.skipif(
    shutil.which("setpriv") is None or shutil.which("setcap", path="/usr/sbin:/sbin:" +
                                                     os.environ.get("PATH", "")) is None,
    reason="setpriv (util-linux) or setcap (libcap2-bin) missing",
)  # fmt: skip
def test_setcap_on_a_copies_venv_lets_an_unprivileged_user_ping() -> None:
    """The README's recipe, followed: a ``--copies`` venv, setcap on its python3, and an
    unprivileged user (nobody) pings 127.0.0.1 over raw sockets with it -- and not before."""
    setcap = shutil.which("setcap", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    assert setcap is not None
    tmp = tempfile.mkdtemp(prefix="netdiag-setcap-", dir="/tmp")
    try:
        os.chmod(tmp, 0o755)
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--copies", "--without-pip", str(venv)],
                       check=True)  # fmt: skip
        py = venv / "bin" / "python3"
        assert py.is_file() and not py.is_symlink()
        # netdiag, trio and dpkt from this checkout and its venv (instead of a pip install)
        path = [str(ROOT), str(Path(trio.__file__).parent.parent)]
        env = ["env", f"PYTHONPATH={':'.join(path)}", str(py)]
        # The user: nobody -- unless this checkout is not readable by others (a clone under a
        # 0700 home); then root without root's powers (securebits noroot: capabilities come
        # only from file capabilities, as for any user), which can still read its files.
        who = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*who, *env, "-c", "import netdiag"], capture_output=True)
        if probe.returncode != 0:
            who = ["setpriv", "--securebits=+noroot,+noroot_locked", "--inh-caps=-all",
                   "--ambient-caps=-all", "--bounding-set=-all,+net_raw"]  # fmt: skip
        argv = [*who, *env, "-m", "netdiag.ping", "--privileged", "-c", "1", "127.0.0.1"]

        def ping() -> subprocess.CompletedProcess[str]:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30)

        before = ping()
        assert before.returncode == 2, before.stdout + before.stderr
        # run from a --copies venv, the advice names that venv's own python
        assert f"`sudo setcap cap_net_raw+ep {py}` (this venv's own copy" in before.stderr
        subprocess.run([setcap, "cap_net_raw+ep", str(py)], check=True)
        after = ping()
        assert after.returncode == 0, after.stderr
        assert "1 packets transmitted, 1 received" in after.stdout
        # the shared interpreter did not get it
        base = os.path.realpath(sys.executable)
        getcap = subprocess.run([setcap.replace("setcap", "getcap"), base],
                                capture_output=True, text=True)  # fmt: skip
        assert "cap_net_raw" not in getcap.stdout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- 8: ping's habits ------------------------------------------------------------------------------


@pytest.mark.privileged
def test_ping_names_like_iputils() -> None:
    by_name = tool("netdiag.ping", "-c", "1", "localhost")
    assert by_name.returncode == 0, by_name.stderr
    assert "64 bytes from localhost (127.0.0.1): icmp_seq=1 ttl=64 time=" in by_name.stdout
    numeric = tool("netdiag.ping", "-c", "1", "-n", "localhost")
    assert "64 bytes from 127.0.0.1: icmp_seq=1" in numeric.stdout
    literal = tool("netdiag.ping", "-c", "1", "127.0.0.1")  # an address: no lookup at all
    assert "64 bytes from 127.0.0.1: icmp_seq=1" in literal.stdout
    short = tool("netdiag.ping", "-c", "1", "127.1")  # inet_aton's short form is numeric too
    assert "PING 127.1 (127.0.0.1)" in short.stdout
    assert "64 bytes from 127.0.0.1: icmp_seq=1" in short.stdout


def test_what_counts_as_a_host_without_asking_a_resolver() -> None:
    from netdiag.ping.__main__ import _NAME, _is_numeric

    assert all(_NAME.match(h) for h in ("bücher.example", "a-b_c.d", "[::1]", "fe80::1%lo"))
    assert not any(_NAME.match(h) for h in ("a b", "!!", "x/y", ""))
    assert _is_numeric("127.1") and _is_numeric("0") and _is_numeric("::")
    assert not _is_numeric("300.1.2.3") and not _is_numeric("localhost")


@pytest.mark.privileged
def test_ping_timestamps_version_and_local_host() -> None:
    out = tool("netdiag.ping", "-D", "-c", "2", "-i", "0.05", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("PING 0 (127.0.0.1) 56(84) bytes of data.")
    stamped = [ln for ln in out.stdout.splitlines() if "bytes from" in ln]
    assert len(stamped) == 2
    assert all(re.match(r"^\[\d+\.\d{6}\] 64 bytes from 127\.0\.0\.1: icmp_seq=", ln)
               for ln in stamped)  # fmt: skip
    out = tool("netdiag.ping", "-c", "1", "::")
    assert out.returncode == 0 and "64 bytes from ::1: icmp_seq=1" in out.stdout
    out = tool("netdiag.ping", "-V")
    assert (
        out.returncode == 0
        and out.stdout.strip() == f"netdiag.ping (netdiag) {netdiag.__version__}"
    )


@pytest.mark.privileged
def test_ping_deadline() -> None:
    # -w alone: no count, the deadline ends it; answered, so exit 0
    out = tool("netdiag.ping", "-w", "0.5", "-i", "0.1", "127.0.0.1")
    assert out.returncode == 0, out.stderr
    assert "packets transmitted" in out.stdout
    # -w with -c: the second request would leave after the deadline, so 1 of 3 replies: exit 1
    out = tool("netdiag.ping", "-w", "0.5", "-c", "3", "-i", "30", "127.0.0.1")
    assert out.returncode == 1
    assert "1 packets transmitted, 1 received" in out.stdout
    # -w with -c reached before the deadline: exit 0 at once
    out = tool("netdiag.ping", "-w", "30", "-c", "2", "-i", "0.05", "127.0.0.1")
    assert out.returncode == 0 and "2 packets transmitted, 2 received" in out.stdout


def test_outstanding_line() -> None:
    a = ipaddress.ip_address("127.0.0.1")
    timeout = PingResult(3, a, "timeout")
    assert _line(timeout) is None  # iputils prints nothing without -O
    assert _line(timeout, outstanding=True) == "no answer yet for icmp_seq=3"


def test_f_is_not_silently_a_target_file() -> None:
    out = tool("netdiag.ping", "-f", "127.0.0.1")
    assert out.returncode == 2 and out.stdout == ""
    assert "flood" in out.stderr and "--file" in out.stderr and len(out.stderr.splitlines()) == 1
    assert "--file" in tool("netdiag.ping", "--help").stdout


@pytest.mark.privileged
def test_mass_ping_like_fping(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    targets.write_text("127.0.0.1\nnot a host!\n\nlocalhost\n::1  # comment\n::1\n300.1.2.3\n")
    out = tool("netdiag.ping", "--file", str(targets), "-i", "0.05")
    err = out.stderr.splitlines()
    assert f"netdiag.ping: {targets}:2: not a host!: not a host name or address; skipped" in err
    assert f"netdiag.ping: {targets}:7: 300.1.2.3: not a host name or address; skipped" in err
    assert (
        f"netdiag.ping: {targets}:4: localhost (127.0.0.1) repeats 127.0.0.1 ({targets}:1); "
        "pinged once" in err
    )
    assert f"netdiag.ping: {targets}:6: ::1 repeats ::1 ({targets}:5); pinged once" in err
    assert len(err) == 4
    lines = out.stdout.splitlines()
    # -c defaults to 1 in mass ping (fping); names as written
    assert lines[0].startswith("127.0.0.1 : xmt/rcv/%loss = 1/1/0%, min/avg/max = ")
    assert lines[1].startswith("::1       : xmt/rcv/%loss = 1/1/0%")
    assert lines[2].startswith("2 targets, 2 alive, 2 sent, 2 received")
    assert out.returncode == 2  # fping: some targets could not be used
    # names stay names; --rate alone still sends one request per target
    out = tool("netdiag.ping", "--file", "-", "--rate", "100", stdin="localhost\n::1\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("localhost : xmt/rcv/%loss = 1/1/0%")
    # garbage only: nothing left to ping
    out = tool("netdiag.ping", "--file", "-", stdin="!!\n")
    assert out.returncode == 2 and out.stderr.endswith("netdiag.ping: no usable targets\n")


def test_rate_help_and_wording() -> None:
    out = tool("netdiag.ping", "--file", "-", "--rate", "0", stdin="127.0.0.1\n")
    assert out.returncode == 2
    assert "rate must be > 0 and <= 10000000 requests per second, got 0" in out.stderr
    assert "seconds" not in out.stderr
    help_text = " ".join(tool("netdiag.ping", "--help").stdout.split())
    assert "per second in total, over all targets" in help_text
    assert "each target still gets -c requests (default 1)" in help_text


# -- netdiag --help, python -m netdiag ---------------------------------------------------------


def test_netdiag_help_and_python_m() -> None:
    out = tool("netdiag", "--help")
    assert out.returncode == 0
    for cmd in ("ping", "trace", "knock", "doctor"):
        assert re.search(rf"^  {cmd} +\S", out.stdout, re.M), out.stdout
    out = tool("netdiag", "ping", "-c", "0", "127.0.0.1")
    assert out.returncode == 2 and "count must be between" in out.stderr
    out = tool("netdiag", "--version")
    assert out.stdout.strip() == f"netdiag {netdiag.__version__}"
    for sub in ("knock", "trace", "doctor"):
        out = tool(f"netdiag.{sub}", "--version")
        assert out.returncode == 0 and netdiag.__version__ in out.stdout


# -- 10: ping -6 on a name without an IPv6 address -------------------------------------------


def test_name_without_ipv6_says_so(lab: Lab) -> None:
    """In a lab namespace, so the AAAA query that /etc/hosts cannot answer goes nowhere."""
    out = lab.exec("src", sys.executable, "-m", "netdiag.ping", "-6", "-c", "1", "localhost",
                   check=False, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == "netdiag.ping: localhost has no IPv6 address (only 127.0.0.1)"


# -- 8: mass ping shows ICMP errors per target, as fping does (lab) ---------------------------


def test_mass_ping_reports_icmp_errors_per_target(clean_lab: Lab) -> None:
    lab = clean_lab
    lab.nft(
        "r3",
        """
        table inet t {
            chain fw {
                type filter hook forward priority 0;
                icmp type echo-request reject with icmp type admin-prohibited
            }
        }""",
    )
    dst4, r1 = lab.dst.v4, lab.r1.on("src", 4)
    out = lab.exec("src", sys.executable, "-m", "netdiag.ping", "--file", "-", "-W", "1",
                   input=f"{dst4}\n{r1}\n", check=False, timeout=60)  # fmt: skip
    assert out.returncode == 1  # dst never answered
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("ICMP ")]
    assert len(errors) == 1, out.stderr
    assert re.match(rf"^ICMP .*[Pp]rohibited.* from \S+ for ICMP Echo sent to {dst4}$", errors[0])
    assert re.search(rf"^{dst4} +: xmt/rcv/%loss = 1/0/100%$", out.stdout, re.M), out.stdout
    assert re.search(rf"^{r1} +: xmt/rcv/%loss = 1/1/0%, min/avg/max = ", out.stdout, re.M)
    quiet = lab.exec("src", sys.executable, "-m", "netdiag.ping", "--file", "-", "-q", "-W", "1",
                     input=f"{dst4}\n", check=False, timeout=60)  # fmt: skip
    assert "ICMP " not in quiet.stderr  # fping -q: no ICMP error lines either


# -- 8: trace, the traceroute / tcptraceroute way ----------------------------------------------


@pytest.mark.privileged
def test_trace_destination_rtts_and_tcp_state(listener: int) -> None:
    out = tool("netdiag.trace", "-n", "-q", "4", "-T", "-p", str(listener), "127.0.0.1")
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[1]
    assert line.startswith(" 1  127.0.0.1 [open]  ")
    assert line.count(" ms") == 4  # one RTT per probe, as traceroute -q 4 shows
    closed = closed_port()
    out = tool("netdiag.trace", "-n", "-T", "-p", str(closed), "127.0.0.1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith(" 1  127.0.0.1 [closed]  ")
    out = tool("netdiag.trace", "-n", "127.0.0.1")  # UDP: no TCP state to show
    assert "[open]" not in out.stdout and "[closed]" not in out.stdout


# -- 9: API consistency -----------------------------------------------------------------------


def test_timeout_keyword_names_expiry() -> None:
    for make in (
        lambda: netdiag.Ping("127.0.0.1", timeout=1),
        lambda: netdiag.Knock("127.0.0.1", 80, timeout=1),
        lambda: netdiag.Trace("127.0.0.1", timeout=1),
    ):
        with pytest.raises(TypeError, match=r"has no 'timeout'.* expiry="):
            make()
    assert netdiag.Ping("127.0.0.1", expiry=1.5).expiry == 1.5


def test_stats_repr_summarises() -> None:
    s = netdiag.PingStats()
    for i in range(1, 1001):
        s.rtt.add(i / 1e6)
    text = repr(s)
    assert "RttStats(count=1000, min=1e-06, avg=0.0005005, max=0.001, mdev=" in text
    assert len(text) < 200  # not a thousand floats
    assert "RttStats(count=0)" in repr(netdiag.KnockStats())


@pytest.mark.privileged
async def test_diagnostic_reprs() -> None:
    pinger = netdiag.Pinger()
    assert repr(pinger) == "<Pinger not open (outside async with), privileged=None>"
    async with pinger:
        assert re.fullmatch(r"<Pinger mode=raw families=IPv4,IPv6 in_flight=0>", repr(pinger))
        seen: list[str] = []
        async for r in pinger.results(netdiag.Ping("127.0.0.1", count=2, interval=0.05)):
            if r.seq == 1:  # the second request is still to come or in flight
                seen.append(repr(pinger))
        # request 1's key stays registered after its reply (so a duplicate is recognised)
        assert re.fullmatch(r"<Pinger mode=raw families=IPv4,IPv6 in_flight=[1-9]\d*>", seen[0])
    async with netdiag.Tracer() as tracer:
        assert repr(tracer).startswith("<Tracer mode=raw families=IPv4")
    async with netdiag.Knocker() as knocker:
        assert repr(knocker).startswith("<Knocker families=IPv4")
