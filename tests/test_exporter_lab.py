"""The exporter against a real Prometheus, in the lab.

The exporter and a Prometheus server (Debian's ``prometheus`` binary, its own temporary config
and data directory, scrape interval 1 s) both run in the lab's ``src`` namespace, on its
loopback. After ~15 s of scraping, the test asks *Prometheus's* query API -- not the exporter --
and checks what a user's dashboards and alerts would see:

- ping RTT histogram counts grow; the last-round loss is exactly the 1 in 4 echo requests that
  nftables drops in dst (``numgen inc mod 4 == 0 drop``: every round of 4 loses exactly one);
- the trace's hop series show the diamond (r1, then r2a and r2b, then r3's two interfaces,
  then dst); removing one ECMP branch in r1 increments the path-change counter and the hop
  series follow (TTL 2 becomes r2a alone);
- knocks report open (a listener), closed (RST), filtered (dropped) and unreachable (rejected
  with admin-prohibited) as dst's listener and nft rules dictate;
- a ``/probe`` scrape job with blackbox_exporter's relabel_configs gives probe_success 1 for a
  live target and 0 for one whose echo requests dst drops.

One Prometheus run serves every assertion; every wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import Lab, expected_hops

pytestmark = [pytest.mark.privileged]

ROOT = Path(__file__).resolve().parents[1]
DST4 = "198.18.6.2"
DST6 = "2001:db8:6::2"
R3 = "198.18.4.2"
FILTERED, REJECTED, CLOSED = 23, 24, 22


def _free_port(lab: Lab) -> int:
    with lab.enter("src"):
        s = socket.socket()
    with s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(lab: Lab, url: str, timeout: float = 5.0) -> bytes:
    with lab.enter("src"):  # the socket is made in src, where both servers listen
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as r:
            return bytes(r.read())


def _wait(what: str, fn: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Prom:
    """Prometheus's HTTP API, from inside src."""

    def __init__(self, lab: Lab, port: int) -> None:
        self.lab, self.port = lab, port

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"http://127.0.0.1:{self.port}/api/v1/query?{urllib.parse.urlencode(params)}"
        doc = json.loads(_get(self.lab, url))
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def values(self, expr: str, key: str, at: float | None = None) -> dict[str, float]:
        return {r["metric"].get(key, ""): float(r["value"][1]) for r in self.query(expr, at)}

    def hops(self, window: str | None = None) -> dict[int, set[str]]:
        sel = 'netdiag_trace_hop_info{check="diamond"}'
        expr = f"last_over_time({sel}[{window}])" if window else sel
        out: dict[int, set[str]] = {}
        for r in self.query(expr):
            out.setdefault(int(r["metric"]["ttl"]), set()).add(r["metric"]["addr"])
        return out


@pytest.fixture
def servers(clean_lab: Lab, dst_listener: int, tmp_path: Path) -> Iterator[tuple[Prom, Path]]:
    lab = clean_lab
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("the `prometheus` binary is missing (Debian package prometheus; .ci/run "
                    "installs it)")  # fmt: skip
    lab.nft("dst", f"""
        table inet t {{
            chain in {{
                type filter hook input priority 0;
                ip daddr {DST4} icmp type echo-request numgen inc mod 4 == 0 drop
                ip6 daddr {DST6} icmpv6 type echo-request drop
                tcp dport {FILTERED} drop
                tcp dport {REJECTED} reject with icmp type admin-prohibited
            }}
        }}""")  # fmt: skip
    exp_port, prom_port = _free_port(lab), _free_port(lab)
    while prom_port == exp_port:
        prom_port = _free_port(lab)
    config = tmp_path / "exporter.toml"
    config.write_text(f"""
[[ping]]
name = "loss"
targets = ["{DST4}"]
every = 1.0
count = 4
interval = 0.05
expiry = 0.5

[[trace]]
name = "diamond"
targets = ["{DST4}"]
every = 1.5
proto = "udp"
flows = 16
max_ttl = 8
expiry = 0.5

[[knock]]
name = "ports"
targets = ["{DST4}"]
ports = [{dst_listener}, {CLOSED}, {FILTERED}, {REJECTED}]
every = 1.0
count = 1
expiry = 0.5

[[module]]
name = "icmp"
kind = "ping"
count = 2
interval = 0.05
expiry = 0.3
""")
    (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: netdiag
    static_configs:
      - targets: ["127.0.0.1:{exp_port}"]
  - job_name: netdiag_probe
    metrics_path: /probe
    params:
      module: [icmp]
    static_configs:
      - targets: ["{R3}", "[{DST6}]"]
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: "127.0.0.1:{exp_port}"
""")
    ns = lab.ns("src")
    exp_log = open(tmp_path / "exporter.log", "w")  # noqa: SIM115 - closed below
    prom_log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
    procs = []
    try:
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "netdiag.exporter",
             "--config", str(config), "--listen", f"127.0.0.1:{exp_port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=exp_log))  # fmt: skip
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, prometheus,
             f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            cwd=tmp_path, stdout=prom_log, stderr=prom_log))  # fmt: skip
        prom = Prom(lab, prom_port)
        _wait("Prometheus ready", lambda: _get(lab, f"http://127.0.0.1:{prom_port}/-/ready"), 30)
        _wait("the exporter ready", lambda: _get(lab, f"http://127.0.0.1:{exp_port}/-/ready"), 30)
        yield prom, tmp_path / "exporter.log"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        exp_log.close()
        prom_log.close()
        log = (tmp_path / "exporter.log").read_text()
        assert "Traceback" not in log, log
        # restore r1's ECMP route (set_link up re-applies r1's configuration)
        lab.set_link("r1", "r2b", up=True)


@pytest.mark.lab
def test_prometheus_scrapes_and_queries_the_exporter(servers: tuple[Prom, Path], lab: Lab) -> None:
    prom, log = servers
    # ~15 s of scraping, but no longer than needed for every series to be there
    t0 = time.time()
    _wait("the first RTT samples", lambda: prom.query(
        'netdiag_ping_rtt_seconds_count{check="loss"} > 0'), 20)  # fmt: skip
    _wait("four knock states", lambda: len(prom.query("netdiag_knock_state == 1")) == 4, 20)
    _wait("probe results", lambda: len(prom.query("probe_success")) == 2, 20)
    time.sleep(max(0.0, 15.0 - (time.time() - t0)))

    # ping: RTT histogram counts grow (asked at two instants), loss is exactly the 1/4 dropped
    now = time.time()
    count = 'netdiag_ping_rtt_seconds_count{check="loss"}'
    early = prom.values(count, "target", at=now - 8)[DST4]
    late = prom.values(count, "target", at=now)[DST4]
    assert late > early > 0
    loss = 'netdiag_ping_loss_ratio{check="loss"}'
    assert prom.values(f"min_over_time({loss}[10s])", "target")[DST4] == 0.25
    assert prom.values(f"max_over_time({loss}[10s])", "target")[DST4] == 0.25
    sent = prom.values('netdiag_ping_sent_total{check="loss"}', "target")[DST4]
    received = prom.values('netdiag_ping_received_total{check="loss"}', "target")[DST4]
    assert sent >= 40
    assert 0.2 <= 1 - received / sent <= 0.3  # counters between rounds: whole rounds +- one

    # trace: the diamond's hop sets (over the last rounds), two paths, reached at TTL 4
    hops = prom.hops("10s")
    want = {ttl: {str(a) for a in expected_hops(ttl)} for ttl in (1, 2, 3, 4)}
    assert hops == want, hops
    assert prom.values('netdiag_trace_paths{check="diamond"}', "target")[DST4] == 2
    assert prom.values('netdiag_trace_hops{check="diamond"}', "target")[DST4] == 4
    assert prom.values('netdiag_trace_reached{check="diamond"}', "target")[DST4] == 1

    # knock: one state per port, as dst's listener and nft rules dictate
    states = {r["metric"]["target"]: r["metric"]["state"]
              for r in prom.query('netdiag_knock_state{check="ports"} == 1')}  # fmt: skip
    port = {t.rsplit(":", 1)[1]: s for t, s in states.items()}
    assert port[str(CLOSED)] == "closed"
    assert port[str(FILTERED)] == "filtered"
    assert port[str(REJECTED)] == "unreachable"
    (open_port,) = set(port) - {str(CLOSED), str(FILTERED), str(REJECTED)}
    assert port[open_port] == "open"
    assert prom.values('netdiag_knock_results_total{check="ports",state="open"}', "target")

    # /probe through relabel_configs: live target 1, dropped target 0
    success = prom.values('probe_success{job="netdiag_probe"}', "instance")
    assert success == {R3: 1.0, f"[{DST6}]": 0.0}, success
    durations = prom.values('probe_duration_seconds{job="netdiag_probe"}', "instance")
    assert set(durations) == {R3, f"[{DST6}]"}

    # the process series exist and look sane
    assert prom.values("netdiag_config_last_reload_successful", "job") == {"netdiag": 1.0}
    assert prom.query('netdiag_engine_kernel_drops_total{diagnostic="ping"} == 0')

    # remove one ECMP branch in r1: the path-change counter increments, hop series follow
    changes = 'netdiag_trace_path_changes_total{check="diamond"}'
    before = prom.values(changes, "target")[DST4]
    lab.exec("r1", "ip", "route", "replace", "198.18.6.0/24", "via", "198.18.2.2")
    _wait("a path change", lambda: prom.values(changes, "target")[DST4] > before, 20)
    r2a_only = {2: {"198.18.2.2"}, 3: {R3}, 4: {DST4}}
    _wait(
        "TTL 2 to be r2a alone", lambda: {t: prom.hops().get(t) for t in r2a_only} == r2a_only, 20
    )
    # the change is logged with the previous and the new hop sets
    text = log.read_text()
    assert "path changed: 1:{198.18.1.1} 2:{198.18.2.2,198.18.3.2}" in text, text
    assert "-> 1:{198.18.1.1} 2:{198.18.2.2} 3:{198.18.4.2}" in text, text


@pytest.mark.lab
def test_example_config_runs_as_is_in_the_lab(clean_lab: Lab, tmp_path: Path) -> None:
    """examples/exporter.toml, unchanged, from src: every job runs and answers come back."""
    lab = clean_lab
    port = _free_port(lab)
    log = open(tmp_path / "exporter.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("src"), sys.executable, "-m", "netdiag.exporter",
         "--config", str(ROOT / "examples" / "exporter.toml"),
         "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def all_jobs_ran() -> bool:
            text = _get(lab, url).decode()
            return all(f'netdiag_rounds_total{{check="{c}"' in text
                       for c in ("dst-ping", "routers", "dst-trace", "dst-ports"))  # fmt: skip

        _wait("every job's first round", all_jobs_ran, 20)
        text = _get(lab, url).decode()
        assert "netdiag_round_errors_total{" not in text  # every round could run
        assert 'netdiag_knock_state{check="dst-ports",site="lab",state="closed",' in text
        probe = _get(lab, f"http://127.0.0.1:{port}/probe?module=icmp&target={R3}").decode()
        assert "probe_success 1.0" in probe
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
    assert "Traceback" not in (tmp_path / "exporter.log").read_text()


@pytest.mark.lab
def test_unprivileged_runs_what_it_can_and_names_the_rest(clean_lab: Lab, tmp_path: Path) -> None:
    """Without CAP_NET_RAW: ping (ICMP datagram sockets) and UDP traces run; an ICMP trace and
    a knock job are named in the log and exported as not runnable; nothing stops."""
    lab = clean_lab
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is missing")
    old = lab.exec("src", "sysctl", "-n", "net.ipv4.ping_group_range").stdout.split()
    lab.exec("src", "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
    config = tmp_path / "exporter.toml"
    config.write_text(f"""
[[ping]]
name = "p"
targets = ["{DST4}"]
every = 0.5
count = 1
expiry = 0.4

[[trace]]
name = "udp-trace"
targets = ["{DST4}"]
every = 1.0
max_ttl = 6
expiry = 0.5

[[trace]]
name = "icmp-trace"
targets = ["{DST4}"]
proto = "icmp"

[[knock]]
name = "k"
targets = ["{DST4}:22"]
""")
    port = _free_port(lab)
    log = tmp_path / "exporter.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("src"), "setpriv", "--inh-caps=-net_raw",
             "--bounding-set=-net_raw", sys.executable, "-m", "netdiag.exporter",
             "--config", str(config), "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/metrics"

            def ran() -> str | None:
                text = _get(lab, url).decode()
                ok = all(f'netdiag_rounds_total{{check="{c}"' in text for c in ("p", "udp-trace"))
                return text if ok else None

            text = _wait("ping and UDP trace rounds", ran, 20)
            assert 'netdiag_check_runnable{check="k",diagnostic="knock"} 0.0' in text
            assert 'netdiag_check_runnable{check="icmp-trace",diagnostic="trace"} 0.0' in text
            assert 'netdiag_check_runnable{check="p",diagnostic="ping"} 1.0' in text
            assert f'netdiag_trace_reached{{check="udp-trace",target="{DST4}"}} 1.0' in text
            assert 'netdiag_rounds_total{check="k"' not in text
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            lab.exec("src", "sysctl", "-qw", f"net.ipv4.ping_group_range={old[0]} {old[1]}")
    stderr = log.read_text()
    assert "knock job 'k' cannot run" in stderr, stderr
    assert "trace job 'icmp-trace' cannot run" in stderr and "CAP_NET_RAW" in stderr
    assert "Traceback" not in stderr
