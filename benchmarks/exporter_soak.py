#!/usr/bin/env python3
"""Soak benchmark of the exporter (issue 10) -- a benchmark, not a test: it asserts nothing.

As root, from the repository root::

    python benchmarks/exporter_soak.py                                  # the issue's run: 10 min
    python benchmarks/exporter_soak.py --minutes 3                      # shortened
    python benchmarks/exporter_soak.py --pings 1000 --traces 10 --knocks 100 --minutes 2

What it does:

1. builds the diamond lab (tests/lab.py) and makes dst answer a whole /17: ``ip route add local
   198.18.128.0/17 dev lo`` in dst, with routes for it in r1 (ECMP over r2a/r2b), r2a, r2b and
   r3 -- so traces cross the diamond and every ping target answers (only 198.18.0.0/15 is used);
2. writes an exporter config: ``--pings`` targets pinged once per second (``count = 1``,
   ``rtt_histogram = "job"`` unless ``--target-histograms``), ``--traces`` targets traced once a
   minute (UDP MDA, ``max_ttl = 8``), ``--knocks`` (address, port 80) pairs knocked once per
   second (dst answers RST);
3. runs ``python -m netdiag.exporter`` in src and, for ``--minutes``, scrapes ``/metrics`` from
   src every ``--scrape`` seconds (timing each scrape, as Prometheus would see it) and samples
   the exporter's CPU time and RSS from /proc every second;
4. prints one row per minute -- CPU fraction of one core, RSS at the minute's end, /metrics
   p50/p99/max, schedule lateness p99 (from the exporter's own histogram, per minute), rounds
   run, ping loss -- and writes everything to benchmarks/out/exporter-soak-<time>.json.

Bounded: the exporter is killed if it outlives the run by 30 s; the lab is always removed.
Numbers depend on the machine and on what else runs on it (this one: 2 cores, shared).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from lab import Lab  # noqa: E402

TARGETS = ipaddress.ip_network("198.18.128.0/17")
TICK = os.sysconf("SC_CLK_TCK")


def setup_routes(lab: Lab) -> None:
    """dst answers every address of TARGETS; each router forwards it towards dst."""
    net = str(TARGETS)
    r2a, r2b, r3, dst = (lab.node(n) for n in ("r2a", "r2b", "r3", "dst"))
    lab.exec("dst", "ip", "route", "add", "local", net, "dev", "lo")
    lab.exec("r1", "ip", "route", "add", net, "nexthop", "via", str(r2a.on("r1")),
             "nexthop", "via", str(r2b.on("r1")))  # fmt: skip
    lab.exec("r2a", "ip", "route", "add", net, "via", str(r3.on("r2a")))
    lab.exec("r2b", "ip", "route", "add", net, "via", str(r3.on("r2b")))
    lab.exec("r3", "ip", "route", "add", net, "via", str(dst.on("r3")))


def config_text(args: argparse.Namespace) -> str:
    base = int(TARGETS.network_address)
    pings = [str(ipaddress.ip_address(base + 1 + i)) for i in range(args.pings)]
    traces = [str(ipaddress.ip_address(base + 20001 + i)) for i in range(args.traces)]
    knocks = [str(ipaddress.ip_address(base + 25001 + i)) for i in range(args.knocks)]
    hist = "target" if args.target_histograms else "job"
    out = [f"[exporter]\nmax_rate = {args.max_rate}\n"]
    if pings:
        out.append(f'[[ping]]\nname = "soak-ping"\ntargets = {json.dumps(pings)}\nevery = 1.0\n'
                   f'count = 1\nexpiry = 0.9\nrtt_histogram = "{hist}"\n')  # fmt: skip
    if traces:
        out.append(f'[[trace]]\nname = "soak-trace"\ntargets = {json.dumps(traces)}\n'
                   'every = 60.0\nproto = "udp"\nmax_ttl = 8\nexpiry = 1.0\n')  # fmt: skip
    if knocks:
        out.append(f'[[knock]]\nname = "soak-knock"\ntargets = {json.dumps(knocks)}\n'
                   f'ports = [80]\nevery = 1.0\ncount = 1\nexpiry = 0.9\n'
                   f'rtt_histogram = "{hist}"\n')  # fmt: skip
    return "\n".join(out)


def get(lab: Lab, url: str, timeout: float = 30.0) -> bytes:
    with lab.enter("src"):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as r:
            return bytes(r.read())


def proc_sample(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return cpu, rss


_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


def series(text: str, names: set[str]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of ``names`` in an exposition (a plain regex: only our own output)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {n: [] for n in names}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in names:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[m.group(1)].append((labels, float(m.group(3))))
    return out


def lateness_buckets(text: str) -> dict[float, float]:
    """Cumulative lateness histogram over every diagnostic: upper bound -> count."""
    acc: dict[float, float] = {}
    for labels, v in series(text, {"netdiag_schedule_lateness_seconds_bucket"})[
        "netdiag_schedule_lateness_seconds_bucket"
    ]:
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        acc[le] = acc.get(le, 0.0) + v
    return acc


def quantile_bound(buckets: dict[float, float], q: float) -> float | None:
    """The smallest bucket bound holding fraction ``q`` of the observations."""
    items = sorted(buckets.items())
    total = items[-1][1] if items else 0
    if not total:
        return None
    for le, count in items:
        if count >= q * total:
            return le
    return float("inf")


def totals(text: str) -> dict[str, float]:
    names = {"netdiag_ping_sent_total", "netdiag_ping_received_total", "netdiag_rounds_total",
             "netdiag_rounds_skipped_total", "netdiag_knock_results_total",
             "netdiag_trace_probes_sent_total", "netdiag_engine_kernel_drops_total"}  # fmt: skip
    return {n: sum(v for _, v in xs) for n, xs in series(text, names).items()}


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pings", type=int, default=10_000, help="ping targets, 1 round/s each")
    p.add_argument("--traces", type=int, default=100, help="trace targets, 1 round/min each")
    p.add_argument("--knocks", type=int, default=1_000, help="knock targets, 1 SYN/s each")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument(
        "--scrape",
        type=float,
        default=15.0,
        help="seconds between /metrics scrapes (Prometheus' default: 15)",
    )
    p.add_argument("--max-rate", type=float, default=50_000.0)
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="run the exporter under cProfile, writing FILE (for pstats)",
    )
    p.add_argument("--target-histograms", action="store_true",
                   help='rtt_histogram = "target" (default "job")')  # fmt: skip
    args = p.parse_args()
    if os.geteuid() != 0:
        print("exporter_soak.py: needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    lab = Lab()
    lab.build()
    tmp = Path(tempfile.mkdtemp(prefix="netdiag-soak-"))
    proc = None
    try:
        setup_routes(lab)
        cfg = tmp / "soak.toml"
        cfg.write_text(config_text(args))
        with lab.enter("src"):
            import socket

            s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        log = open(tmp / "exporter.log", "w")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("src"), sys.executable,
             *(["-m", "cProfile", "-o", args.profile] if args.profile else []),
             "-m", "netdiag.exporter",
             "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                get(lab, url + "/-/ready", 2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("exporter did not become ready; see " + str(tmp)) from None
                time.sleep(0.2)
        print(f"exporter pid {proc.pid} ready; config {cfg}; running {args.minutes} min",
              flush=True)  # fmt: skip
        samples: list[tuple[float, float, int]] = []  # (t, cpu, rss)
        scrapes: list[tuple[float, float]] = []  # (t, seconds)
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                try:
                    cpu, rss = proc_sample(proc.pid)
                except OSError:
                    return
                samples.append((time.monotonic(), cpu, rss))
                stop.wait(1.0)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        minute_rows: list[dict[str, Any]] = []
        prev_text = ""
        next_minute = t0 + 60
        prev_cpu = proc_sample(proc.pid)[0]
        prev_t = t0
        while time.monotonic() < end:
            ts = time.monotonic()
            text = get(lab, url + "/metrics").decode()
            took = time.monotonic() - ts
            scrapes.append((ts - t0, took))
            now = time.monotonic()
            last = now + args.scrape >= end
            if now >= next_minute or (last and now - prev_t > 10):
                cpu, rss = proc_sample(proc.pid)
                minute = [s for t, s in scrapes if t >= prev_t - t0]
                lb = lateness_buckets(text)
                plb = lateness_buckets(prev_text) if prev_text else {}
                delta = {le: c - plb.get(le, 0.0) for le, c in lb.items()}
                tot, ptot = totals(text), totals(prev_text) if prev_text else {}
                d = {k: v - ptot.get(k, 0.0) for k, v in tot.items()}
                sent = d.get("netdiag_ping_sent_total", 0.0)
                row = {
                    "minute": len(minute_rows) + 1,
                    "cpu_fraction": (cpu - prev_cpu) / (now - prev_t),
                    "rss_mib": rss / 2**20,
                    "metrics_p50_ms": pct(minute, 0.5) * 1000,
                    "metrics_p99_ms": pct(minute, 0.99) * 1000,
                    "metrics_max_ms": max(minute) * 1000 if minute else float("nan"),
                    "metrics_bytes": len(text),
                    "lateness_p99_le_s": quantile_bound(delta, 0.99),
                    "late_over_50ms": sum(delta.values()) and (
                        1 - min((c for le, c in delta.items() if le >= 0.05), default=0)
                        / max(delta.values())),
                    "rounds": d.get("netdiag_rounds_total", 0.0),
                    "skipped": d.get("netdiag_rounds_skipped_total", 0.0),
                    "ping_sent": sent,
                    "ping_loss": 1 - d.get("netdiag_ping_received_total", 0.0) / sent
                    if sent else None,
                    "knocks": d.get("netdiag_knock_results_total", 0.0),
                    "trace_probes": d.get("netdiag_trace_probes_sent_total", 0.0),
                    "kernel_drops": d.get("netdiag_engine_kernel_drops_total", 0.0),
                }  # fmt: skip
                minute_rows.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                  for k, v in row.items()}), flush=True)  # fmt: skip
                prev_text, prev_cpu, prev_t = text, cpu, now
                next_minute += 60
            time.sleep(max(0.0, args.scrape - (time.monotonic() - ts)))
        stop.set()
        th.join(5)
        all_scrapes = [s for _, s in scrapes]
        rss2 = [r["rss_mib"] for r in minute_rows[1:]]
        summary = {
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "args": vars(args),
            "cpu_fraction_mean": sum(r["cpu_fraction"] for r in minute_rows) / len(minute_rows),
            "rss_mib_from_minute_2": (min(rss2), max(rss2)) if rss2 else None,
            "rss_growth_from_minute_2": (max(rss2) / min(rss2) - 1) if rss2 else None,
            "metrics_p99_ms": pct(all_scrapes, 0.99) * 1000,
            "metrics_scrapes": len(all_scrapes),
            "minutes": minute_rows,
            "nproc": os.cpu_count(),
            "loadavg": os.getloadavg(),
        }
        out = ROOT / "benchmarks" / "out"
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        (out / f"exporter-soak-{stamp}.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({k: v for k, v in summary.items() if k != "minutes"}, indent=2))
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        lab.close()


if __name__ == "__main__":
    sys.exit(main())
