#!/usr/bin/env python3
# ruff: noqa: RUF001
"""netdiag benchmark harness (issue 5): netdiag side by side with fping, iputils ping, icmplib.

One command, as root::

    python benchmarks/run.py            # default: 10,000 targets x 1 echo, RTT, knock (~1-2 min)
    python benchmarks/run.py --quick    # smaller everything (< 1 min)
    python benchmarks/run.py --all      # mass ping 10k x 1, 100k x 1 and 10k x 10
    python benchmarks/run.py --targets 100000 --count 1 --profile

What it does, in order (see docs/performance.md for the why of each measurement):

1. builds its own namespace lab with tests/lab.py: ``src`` -- ``dst`` joined by a veth pair
   (``--router`` puts ``r1`` in between); dst answers a whole /17 (198.18.128.0/17) and a /64
   (2001:db8:ff00::/64) through ``local`` routes on lo; ICMP rate limits are turned off and
   echo answering checked on every node. Only 198.18.0.0/15 and 2001:db8::/32 are used.
2. mass ping: the same target file goes to netdiag (``Pinger.sweep`` in a worker process),
   ``fping -i 0 -p 0 -r 0 -C K -q``, icmplib ``async_multiping`` (in a venv this script creates,
   benchmarks/.venv-peers) and a bare Python raw-socket loop (the speed-of-light reference).
   Each tool is one process in src, so CPU and peak RSS come from ``wait4`` on it. Every target
   answers in the lab, so every missing reply is false loss; kernel ICMP counters in src tell
   whether a lost reply reached the host (then the tool dropped it) or not (the lab did).
3. RTT accuracy: iputils ``ping``, netdiag, fping and icmplib each ping dst N times at a fixed
   interval while a packet socket on src's veth records kernel timestamps of every request
   leaving and every reply arriving. "Wire RTT" (reply arrival - request departure on the
   interface) is the reference; a tool's RTT error is its reported RTT minus the wire RTT of the
   same probe. Also the plain median difference netdiag - iputils, as the issue states it.
4. RTT under load: 10,000 targets x 1, sent back to back, under the same capture: per-probe
   error against the wire, median and p99.
5. knock (if ``netdiag.Knocker`` imports): SYNs to many (host, port) pairs on dst, one port with a
   listener, with the peak number of open file descriptors; ``--knock-big 1000x100`` is
   issue 12's "100,000 half-open probes over 1,000 hosts" (fds ≤ 1,024, ≥ 30,000/s).
   Trace: the ECMP diamond lab.
5b. many concurrent calls (``--concurrent 5000,10000,20000``, part of ``--all``): N tasks each
   running ``Pinger.ping(Ping(addr, count=3, interval=0.2))`` on one Pinger, then N tasks each
   running ``Knocker.knock(Knock(addr, 8080, count=3, interval=0.2))`` on one Knocker (one
   address per task). Reported: replies received vs expected (false loss), CPU per probe next
   to the sweep's (target at most 2x), kernel drops (``engine.stats.kernel_drops``).
6. prints the table, writes benchmarks/out/results-<time>.json (+ latest.json, latest.md), and
   with ``--profile`` runs netdiag's mass-ping worker under cProfile and prints where time goes.

Everything is bounded: every process has a deadline and is killed past it, and the lab is
always torn down (try/finally, plus tests/lab.py's atexit hook).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import itertools
import json
import os
import platform
import pstats
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
PEERS_VENV = HERE / ".venv-peers"
sys.path.insert(0, str(ROOT / "tests"))

from lab import Lab, Topology  # noqa: E402

V4_TARGETS = ipaddress.IPv4Network("198.18.128.0/17")
V6_TARGETS = ipaddress.IPv6Network("2001:db8:ff00::/64")
TIME_BIN = shutil.which("time", path="/usr/bin:/bin")
#: fping 5.1 refuses runs of more probes than this ("not enough sequence numbers available").
FPING_MAX = 65535
ALLOWED = (ipaddress.IPv4Network("198.18.0.0/15"), ipaddress.IPv6Network("2001:db8::/32"))

# ------------------------------------------------------------------------------------------ #
# Lab
# ------------------------------------------------------------------------------------------ #

#: Written in every node (after tests/lab.py's own), read back and recorded in the JSON.
SYSCTLS = {
    "net/ipv4/icmp_ratelimit": "0",
    "net/ipv4/icmp_ratemask": "0",
    "net/ipv4/icmp_msgs_per_sec": "10000000",
    "net/ipv4/icmp_msgs_burst": "10000000",
    "net/ipv4/icmp_echo_ignore_all": "0",
    "net/ipv6/icmp/ratelimit": "0",
    "net/ipv6/icmp/echo_ignore_all": "0",
    # icmplib's unprivileged mode (ICMP datagram sockets) is allowed for every group in src
    "net/ipv4/ping_group_range": "0 2147483647",
}


def build_lab(router: bool) -> Lab:
    if router:
        topo = Topology.create(
            nodes=("src", "r1", "dst"), links=(("r1", "src"), ("r1", "dst")), routers=("r1",)
        )
    else:
        topo = Topology.create(nodes=("src", "dst"), links=(("src", "dst"),))
    lab = Lab(topo)
    lab.build()
    return lab


def configure_lab(lab: Lab, router: bool) -> dict[str, dict[str, str]]:
    """Target prefixes on dst, rate limits off; returns the sysctls read back per node."""
    for net in (V4_TARGETS, V6_TARGETS):
        assert any(net.version == a.version and net.subnet_of(a) for a in ALLOWED)
    lab.exec("dst", "ip", "route", "add", "local", str(V4_TARGETS), "dev", "lo")
    lab.exec("dst", "ip", "-6", "route", "add", "local", str(V6_TARGETS), "dev", "lo")
    if router:
        dst = lab.node("dst")
        lab.exec("r1", "ip", "route", "add", str(V4_TARGETS), "via", str(dst.on("r1", 4)))
        lab.exec("r1", "ip", "-6", "route", "add", str(V6_TARGETS), "via", str(dst.on("r1", 6)))
    seen: dict[str, dict[str, str]] = {}
    for node in lab.topology.names:
        with lab.enter(node):
            for path, value in SYSCTLS.items():
                try:
                    with open(f"/proc/sys/{path}", "w") as f:
                        f.write(value)
                except OSError:
                    pass  # optional knob missing on this kernel: the readback records it
            seen[node] = {}
            for path in SYSCTLS:
                try:
                    value = Path(f"/proc/sys/{path}").read_text().strip()
                except OSError:
                    value = "absent"
                seen[node][path.replace("/", ".")] = value
        for key in ("net.ipv4.icmp_echo_ignore_all", "net.ipv6.icmp.echo_ignore_all"):
            if seen[node].get(key) not in ("0", "absent"):
                raise RuntimeError(f"{node}: {key} is {seen[node][key]}, echo would not answer")
    return seen


def target_list(n: int) -> list[str]:
    """``n`` lab targets: the /17 first (minus its first and last address), then the /64."""
    out = []
    v4_first = int(V4_TARGETS.network_address) + 1
    v4_n = V4_TARGETS.num_addresses - 2
    for i in range(min(n, v4_n)):
        out.append(str(ipaddress.IPv4Address(v4_first + i)))
    v6_first = int(V6_TARGETS.network_address) + 1
    for i in range(n - len(out)):
        out.append(str(ipaddress.IPv6Address(v6_first + i)))
    return out


def snmp_counters(lab: Lab, node: str) -> dict[str, int]:
    """ICMP counters of ``node`` (echo replies received/sent, per family)."""
    text = lab.exec(node, "cat", "/proc/net/snmp", "/proc/net/snmp6").stdout
    out: dict[str, int] = {}
    lines = text.splitlines()
    for a, b in itertools.pairwise(lines):
        if a.startswith("Icmp:") and b.startswith("Icmp:") and not b.split()[1].isalpha():
            for k, v in zip(a.split()[1:], b.split()[1:], strict=False):
                out["Icmp" + k] = int(v)
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("Icmp6") and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def replies_in(before: dict[str, int], after: dict[str, int]) -> int:
    keys = ("IcmpInEchoReps", "Icmp6InEchoReplies")
    return sum(after.get(k, 0) - before.get(k, 0) for k in keys)


# ------------------------------------------------------------------------------------------ #
# Running a tool: one process in src, rusage by wait4, bounded in time
# ------------------------------------------------------------------------------------------ #


@dataclass
class Proc:
    rc: int
    stdout: str
    stderr: str
    wall: float
    cpu: float
    maxrss_kb: int
    killed: bool


class Ticker:
    """A live elapsed-time counter on stderr while a tool without its own progress runs."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Ticker:
        if self.enabled:
            self._t.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.5):
            print(f"\r  {self.label}: {time.monotonic() - t0:5.1f} s", end="", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._t.join()
            print("\r" + " " * 70 + "\r", end="", file=sys.stderr)


@dataclass
class Handle:
    popen: subprocess.Popen
    t0: float
    readers: list[threading.Thread]
    chunks: dict[str, list[str]]
    timer: threading.Timer
    killed: threading.Event
    usage: str | None


def spawn(lab: Lab, node: str, argv: list[str], *, timeout: float,
          stderr_inherit: bool = False) -> Handle:  # fmt: skip
    """Start ``argv`` in ``node``, killed (whole process group) after ``timeout`` seconds.

    Peak RSS and CPU come from GNU time (``/usr/bin/time``), which forks the tool and reports
    its rusage: wait4 on a child forked from this (large) Python process would report *our*
    RSS high-water mark, which Linux carries across fork and exec into the child's maxrss."""
    usage = None
    if TIME_BIN:
        fd, usage = tempfile.mkstemp(prefix="rusage-", dir=OUT)
        os.close(fd)
        argv = [TIME_BIN, "-f", "%M %U %S", "-o", usage, *argv]
    full = ["ip", "netns", "exec", lab.ns(node), *argv]
    t0 = time.perf_counter()
    p = subprocess.Popen(
        full,
        stdout=subprocess.PIPE,
        stderr=None if stderr_inherit else subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    chunks: dict[str, list[str]] = {"out": [], "err": []}

    def pump(stream: Any, key: str) -> None:
        for piece in iter(lambda: stream.read(65536), ""):
            chunks[key].append(piece)

    readers = [threading.Thread(target=pump, args=(p.stdout, "out"), daemon=True)]
    if not stderr_inherit:
        readers.append(threading.Thread(target=pump, args=(p.stderr, "err"), daemon=True))
    for r in readers:
        r.start()
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    return Handle(p, t0, readers, chunks, timer, killed, usage)


def reap(h: Handle, label: str = "", ticker: bool = False) -> Proc:
    """Wait for the process; CPU (user+sys) and max RSS from wait4 on exactly that process
    (``ip netns exec`` execs the command in place; wait4 would include reaped children)."""
    try:
        with Ticker(label, ticker):
            _, status, ru = os.wait4(h.popen.pid, 0)
    finally:
        h.timer.cancel()
    wall = time.perf_counter() - h.t0
    h.popen.returncode = os.waitstatus_to_exitcode(status)
    for r in h.readers:
        r.join(timeout=5)
    cpu, maxrss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss
    if h.usage:
        try:
            m, u, s = Path(h.usage).read_text().split()[-3:]
            cpu, maxrss = float(u) + float(s), int(m)
        except (OSError, ValueError):
            pass  # killed before GNU time could write: keep wait4's (upper bound) figures
        finally:
            with contextlib.suppress(OSError):
                os.unlink(h.usage)
    return Proc(
        rc=h.popen.returncode,
        stdout="".join(h.chunks["out"]),
        stderr="".join(h.chunks["err"]),
        wall=wall,
        cpu=cpu,
        maxrss_kb=maxrss,
        killed=h.killed.is_set(),
    )



def scamper_hops(doc: dict) -> list[int]:
    """Interfaces per TTL in one scamper ``tracelb`` JSON document (first hop, then every
    probe's responder, by the probe's TTL): what the multipath rows compare with the routes'
    ground truth, so a count that bought less shows as such."""
    at: dict[int, set[str]] = {}
    for node in doc.get("nodes", []):
        if node.get("q_ttl") == 1:
            at.setdefault(1, set()).add(node["addr"])

    def walk(o: object) -> None:
        if isinstance(o, dict):
            if "addr" in o and "probes" in o:
                for p in o["probes"]:
                    if p.get("replies"):
                        at.setdefault(int(p["ttl"]), set()).add(o["addr"])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(doc.get("nodes", []))
    return [len(at[t]) for t in sorted(at)]


def run_in(lab: Lab, node: str, argv: list[str], *, timeout: float, label: str,
           ticker: bool = True, stderr_inherit: bool = False) -> Proc:  # fmt: skip
    """Run ``argv`` in ``node`` to completion; see :func:`spawn` and :func:`reap`."""
    return reap(spawn(lab, node, argv, timeout=timeout, stderr_inherit=stderr_inherit),
                label, ticker)  # fmt: skip


# ------------------------------------------------------------------------------------------ #
# Packet capture on src's interface: the wire reference for RTT error
# ------------------------------------------------------------------------------------------ #

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4


class Capture:
    """AF_PACKET socket on src's veth with kernel timestamps of both directions.

    The timestamp of an outgoing packet is taken when the stack hands it to the device
    (dev_queue_xmit_nit), of an incoming one when the device hands it to the stack -- the same
    stamp the receiving socket's SO_TIMESTAMPNS reports. "Wire RTT" = reply in - request out.
    The socket is polled every 2 ms rather than waited on (see ``_run``).
    """

    def __init__(self, lab: Lab, node: str, iface: str) -> None:
        self.lab, self.node, self.iface = lab, node, iface
        self.packets: list[tuple[bytes, int, int]] = []
        self.drops = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._err: BaseException | None = None
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Capture:
        self._t.start()
        self._ready.wait(5)
        if self._err:
            raise self._err
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.05)
        self._stop.set()
        self._t.join(30)

    def _run(self) -> None:
        try:
            with self.lab.enter(self.node):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((self.iface, ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setblocking(False)
        except BaseException as e:
            self._err = e
            self._ready.set()
            return
        self._ready.set()
        pk = self.packets
        ts = struct.Struct("@qq")
        try:
            while True:
                stopping = self._stop.is_set()
                got = 0
                while True:
                    try:
                        data, anc, _, addr = s.recvmsg(128, 64)
                    except BlockingIOError:
                        break
                    got += 1
                    stamp = 0
                    for level, typ, cdata in anc:
                        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                            sec, nsec = ts.unpack_from(cdata)
                            stamp = sec * 1_000_000_000 + nsec
                    pk.append((data, stamp, addr[2]))
                if stopping and not got:
                    break
                # Poll, never wait in select: a waiting reader is woken from inside the send
                # path (dev_queue_xmit_nit, right after this capture's stamp and before the
                # driver's), which would put the capture's own wake-up into the time between
                # the wire stamp and a kernel TX stamp. The 256 MiB buffer covers the pause.
                time.sleep(0.002)
            self.drops = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
        finally:
            s.close()

    def echoes(self) -> tuple[dict[str, list[tuple[int, int, int]]], dict[tuple, int]]:
        """Requests per destination as (tx_ns, ident, seq) in departure order, and reply
        arrival per (addr, ident, seq) (first copy)."""
        reqs: dict[str, list[tuple[int, int, int]]] = {}
        reps: dict[tuple, int] = {}
        for data, stamp, pkttype in self.packets:
            if len(data) < 14:
                continue
            etype = int.from_bytes(data[12:14], "big")
            if etype == 0x0800 and len(data) >= 14 + 20 + 8:
                ihl = (data[14] & 0x0F) * 4
                if data[14 + 9] != 1:
                    continue
                src, dst = data[26:30], data[30:34]
                off = 14 + ihl
                req_t, rep_t = 8, 0
                fam = socket.AF_INET
            elif etype == 0x86DD and len(data) >= 14 + 40 + 8:
                if data[14 + 6] != 58:
                    continue
                src, dst = data[22:38], data[38:54]
                off = 14 + 40
                req_t, rep_t = 128, 129
                fam = socket.AF_INET6
            else:
                continue
            if len(data) < off + 8:
                continue
            typ = data[off]
            ident, seq = struct.unpack_from("!HH", data, off + 4)
            if typ == req_t and pkttype == PACKET_OUTGOING:
                reqs.setdefault(socket.inet_ntop(fam, dst), []).append((stamp, ident, seq))
            elif typ == rep_t and pkttype != PACKET_OUTGOING:
                reps.setdefault((socket.inet_ntop(fam, src), ident, seq), stamp)
        for v in reqs.values():
            v.sort()
        return reqs, reps


def rtt_errors(cap: Capture, probes: list[tuple[str, int, float]]) -> dict[str, Any]:
    """Tool RTT minus wire RTT for each reported probe. A tool's probe ``seq`` (1-based, in
    the order it sent to that address) is matched to the ``seq``-th request the capture saw
    leave for that address -- tools number their wire sequence differently, but all of them
    send to one address in order."""
    reqs, reps = cap.echoes()
    errs: list[float] = []
    wire: list[float] = []
    unmatched = 0
    for addr, seq, rtt in probes:
        addr = str(ipaddress.ip_address(addr))
        lst = reqs.get(addr)
        if not lst or seq - 1 >= len(lst) or rtt is None:
            unmatched += 1
            continue
        tx, ident, wseq = lst[seq - 1]
        rx = reps.get((addr, ident, wseq))
        if rx is None:
            unmatched += 1
            continue
        w = (rx - tx) / 1e9
        wire.append(w)
        errs.append(rtt - w)
    errs.sort()
    wire.sort()
    absd = sorted(abs(e) for e in errs)
    return {
        "matched": len(errs),
        "unmatched": unmatched,
        "capture_packets": len(cap.packets),
        "capture_drops": cap.drops,
        "err_median": errs[len(errs) // 2] if errs else None,
        "err_p99": pct(errs, 0.99),
        "abs_err_p99": pct(absd, 0.99),
        "err_min": errs[0] if errs else None,
        "err_max": errs[-1] if errs else None,
        "wire_median": wire[len(wire) // 2] if wire else None,
        "wire_p99": pct(wire, 0.99),
    }


def pct(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * q))]


# ------------------------------------------------------------------------------------------ #
# The tools
# ------------------------------------------------------------------------------------------ #


@dataclass
class Row:
    tool: str
    workload: str
    probes: int
    sent: int = 0
    received: int = 0
    work_wall: float | None = None
    proc_wall: float = 0.0
    cpu: float = 0.0
    work_cpu: float | None = None
    maxrss_kb: int = 0
    rtt_median: float | None = None
    rtt_p99: float | None = None
    wire: dict[str, Any] | None = None
    kernel_replies: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: 1-minute load average when the row finished (the machine is shared: read with it)
    load: float = 0.0

    @property
    def lost(self) -> int:
        return self.probes - self.received

    @property
    def wall(self) -> float:
        return self.work_wall if self.work_wall is not None else self.proc_wall

    @property
    def rate(self) -> float:
        return self.sent / self.wall if self.wall else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, lab: Lab) -> None:
        self.args = args
        self.lab = lab
        self.rows: list[Row] = []
        self.files: dict[str, Path] = {}
        self.py = sys.executable
        self.peer_py = str(PEERS_VENV / "bin" / "python")
        self.iface = lab.node("src").ifaces[0].name
        self.progress = sys.stderr.isatty() or args.progress
        self.step = 0

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def version(self, tool: str) -> Any:
        """Run the netdiag worker of ``tool``: "netdiag" is the code under test, "netdiag@REV"
        the ``--baseline`` snapshot (same run, same lab, same load: before/after)."""
        old = os.environ.get("NETDIAG_PATH")
        if tool.startswith("netdiag@"):
            os.environ["NETDIAG_PATH"] = self.args.baseline_path
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("NETDIAG_PATH", None)
            else:
                os.environ["NETDIAG_PATH"] = old

    def split_targets(self, n: int, per: int) -> list[Path]:
        """The first ``n`` targets cut into files of at most ``per`` lines."""
        lines = target_list(n)
        out = []
        for i in range(0, n, per):
            path = OUT / f"targets-{n}-part{i // per}.txt"
            path.write_text("\n".join(lines[i : i + per]) + "\n")
            out.append(path)
        return out

    def targets_file(self, n: int) -> Path:
        if n not in self.files:
            path = OUT / f"targets-{n}.txt"
            path.write_text("\n".join(target_list(n)) + "\n")
            self.files[n] = path
        return self.files[n]

    # -- per tool: argv builders and output parsers ----------------------------------------

    def _finish(self, row: Row, proc: Proc, before: dict[str, int] | None) -> Row:
        row.proc_wall, row.cpu, row.maxrss_kb = proc.wall, proc.cpu, proc.maxrss_kb
        row.load = os.getloadavg()[0]
        if before is not None:
            row.kernel_replies = replies_in(before, snmp_counters(self.lab, "src"))
        if proc.killed:
            row.note = (row.note + f" killed at deadline ({proc.wall:.0f} s)").strip()
            row.sent = row.sent or row.probes
        elif proc.rc not in (0, 1):  # fping exits 1 when some target did not answer
            row.note = (row.note + f" exit {proc.rc}: {proc.stderr.strip()[-200:]}").strip()
        self.rows.append(row)
        return row

    def _parse_worker(self, row: Row, proc: Proc) -> list[tuple[str, int, float]]:
        """JSON line of a Python worker -> row; returns the per-probe dump (may be empty)."""
        try:
            res = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            row.note = (row.note + " no result").strip()
            return []
        if "error" in res:
            row.note = res["error"]
            return []
        row.sent, row.received = res["sent"], res["received"]
        row.work_wall, row.work_cpu = res["work_wall"], res["work_cpu"]
        row.rtt_median, row.rtt_p99 = res.get("rtt_median"), res.get("rtt_p99")
        row.extra = {k: v for k, v in res.items() if k != "probes_dump"}
        return [tuple(x) for x in res.get("probes_dump") or []]  # type: ignore[misc]

    @staticmethod
    def _parse_fping(row: Row, proc: Proc) -> list[tuple[str, int, float]]:
        """``fping -C K -q`` prints ``addr : rtt rtt - rtt`` per target on stderr (ms, '-' is
        a lost probe)."""
        probes: list[tuple[str, int, float]] = []
        for line in proc.stderr.splitlines():
            if " : " not in line:
                continue
            host, _, vals = line.partition(" : ")
            for i, v in enumerate(vals.split()):
                if v != "-":
                    probes.append((host.strip(), i + 1, float(v) / 1000.0))
        rtts = sorted(x[2] for x in probes)
        row.sent, row.received = row.probes, len(rtts)
        row.rtt_median, row.rtt_p99 = pct(rtts, 0.5), pct(rtts, 0.99)
        row.note = "wall = process"
        return probes

    @staticmethod
    def _parse_iputils(row: Row, proc: Proc, addr: str) -> list[tuple[str, int, float]]:
        probes = [
            (addr, int(m.group(1)), float(m.group(2)) / 1000.0)
            for m in re.finditer(r"icmp_seq=(\d+) .*time=([\d.]+) ms", proc.stdout)
        ]
        rtts = sorted(x[2] for x in probes)
        row.sent, row.received = row.probes, len(probes)
        row.rtt_median, row.rtt_p99 = pct(rtts, 0.5), pct(rtts, 0.99)
        row.note = "wall = process"
        return probes

    def argv_netdiag(self, mode: str, n: int, count: int, interval: float, *,
                     addr: str | None = None, dump: bool = False,
                     profile: Path | None = None) -> list[str]:  # fmt: skip
        argv = [self.py, str(HERE / "_netdiag_worker.py"), mode, "--count", str(count),
                "--interval", str(interval), "--expiry", str(self.args.timeout),
                "--deadline", str(self.args.deadline)]  # fmt: skip
        argv += ["--addr", str(addr)] if addr else ["--targets", str(self.targets_file(n))]
        if dump:
            argv.append("--dump")
        if profile:
            argv += ["--profile", str(profile)]
        if self.args.no_tx_stamps:
            argv.append("--no-tx-stamps")
        if self.progress and not addr:
            argv.append("--progress")
        return argv

    def argv_fping(self, n: int, count: int, interval: float, addr: str | None = None) -> list[str]:
        argv = ["fping", "-C", str(count), "-q", "-i", "0", "-p", str(round(interval * 1000)),
                "-r", "0", "-B", "1", "-t", str(int(self.args.timeout * 1000))]  # fmt: skip
        return argv + ([addr] if addr else ["-f", str(self.targets_file(n))])

    def argv_icmplib(self, n: int, count: int, interval: float, *, addr: str | None = None,
                     privileged: bool = True, dump: bool = False) -> list[str]:  # fmt: skip
        argv = [self.peer_py, str(HERE / "_icmplib_worker.py"), "ping" if addr else "multi",
                "--count", str(count), "--interval", str(interval),
                "--timeout", str(self.args.timeout),
                "--concurrent", str(self.args.icmplib_tasks)]  # fmt: skip
        argv += ["--addr", addr] if addr else ["--targets", str(self.targets_file(n))]
        if not privileged:
            argv.append("--unprivileged")
        if dump:
            argv.append("--dump")
        return argv

    def argv_iputils(self, addr: str, count: int, interval: float) -> list[str]:
        return ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "2", addr]

    # -- workloads -----------------------------------------------------------------------------

    def mass(self, tool: str, workload: str, n: int, count: int, interval: float, *,
             capture: bool = False, profile: Path | None = None) -> Row:  # fmt: skip
        """One tool, one process, the whole target file; optionally under capture."""
        deadline = self.args.deadline + 10
        own_progress = False
        if tool.startswith("netdiag"):
            argv = self.argv_netdiag("sweep", n, count, interval, dump=capture, profile=profile)
            own_progress = True
        elif tool == "fping":
            argv = self.argv_fping(n, count, interval)
        elif tool in ("icmplib", "icmplib-dgram"):
            argv = self.argv_icmplib(n, count, interval, privileged=tool == "icmplib",
                                     dump=capture)  # fmt: skip
            deadline = self.args.peer_deadline
        elif tool == "python-raw-loop":
            argv = [self.py, str(HERE / "_baseline_worker.py"), "--targets",
                    str(self.targets_file(n)), "--timeout", str(self.args.timeout)]  # fmt: skip
        else:
            raise ValueError(tool)
        probes_n = n * count
        if tool == "python-raw-loop":
            probes_n = min(n, V4_TARGETS.num_addresses - 2)
        row = Row(tool, workload, probes_n)
        before = snmp_counters(self.lab, "src")
        chunks = 1
        if tool == "fping" and n * count > FPING_MAX:
            # fping numbers all its probes from one 16-bit space ("not enough sequence
            # numbers available"): run it as users must, on consecutive slices of the file.
            per = max(1, FPING_MAX // count)
            files = self.split_targets(n, per)
            chunks = len(files)
        with Capture(self.lab, "src", self.iface) if capture else _null() as cap, \
                self.version(tool):
            if chunks == 1:
                h = spawn(self.lab, "src", argv, timeout=deadline, stderr_inherit=own_progress)
                proc = reap(h, f"{tool} {workload}", ticker=self.progress and not own_progress)
            else:
                parts = []
                for i, f in enumerate(files):
                    argv_i = [*argv[:-1], str(f)]
                    h = spawn(self.lab, "src", argv_i, timeout=deadline)
                    parts.append(reap(h, f"fping {workload} part {i + 1}/{chunks}",
                                      ticker=self.progress))  # fmt: skip
                proc = Proc(
                    rc=max(x.rc for x in parts), stdout="".join(x.stdout for x in parts),
                    stderr="".join(x.stderr for x in parts), wall=sum(x.wall for x in parts),
                    cpu=sum(x.cpu for x in parts), maxrss_kb=max(x.maxrss_kb for x in parts),
                    killed=any(x.killed for x in parts),
                )  # fmt: skip
        parse = self._parse_fping if tool == "fping" else self._parse_worker
        probes = parse(row, proc)
        if tool.startswith("icmplib"):
            row.note = f"{self.args.icmplib_tasks} tasks"
        if tool == "python-raw-loop":
            row.note = "IPv4 only, reference"
        if chunks > 1:
            row.note += f", {chunks} runs of ≤ {FPING_MAX} (fping's 16-bit seq space)"
        if cap is not None:
            row.wire = rtt_errors(cap, probes)
        return self._finish(row, proc, before)

    def rtt_same_moment(self, workload: str, tools: list[str], count: int,
                        interval: float) -> None:  # fmt: skip
        """Every tool pings its own address on dst (all answered by the same ``local`` route,
        same path) ``count`` times every ``interval``, all at once, starts staggered by
        ``interval / len(tools)`` so their probes do not collide; one capture sees them all."""
        base = int(ipaddress.IPv4Address("198.18.200.1"))
        jobs = []
        with Capture(self.lab, "src", self.iface) as cap:
            for i, tool in enumerate(tools):
                addr = str(ipaddress.IPv4Address(base + i))
                if tool.startswith("iputils"):
                    argv = self.argv_iputils(addr, count, interval)
                elif tool == "netdiag":
                    argv = self.argv_netdiag("ping", 1, count, interval, addr=addr, dump=True)
                elif tool == "fping":
                    argv = self.argv_fping(1, count, interval, addr=addr)
                else:
                    argv = self.argv_icmplib(1, count, interval, addr=addr, dump=True)
                jobs.append((tool, addr, argv))
            # Python tools take ~0.2 s to import and open their sockets, ping/fping ~1 ms:
            # start the Python ones first so the runs overlap almost completely. Phases are
            # otherwise random; a probe colliding with another tool's costs it a few µs.
            handles = []
            python_first = sorted(range(len(jobs)),
                                  key=lambda j: jobs[j][0].startswith(("iputils", "fping")))
            for j in python_first:
                tool, addr, argv = jobs[j]
                if tool.startswith(("iputils", "fping")) and not any(
                        jobs[i][0].startswith(("iputils", "fping")) for i, _ in handles):
                    time.sleep(0.3)
                handles.append((j, spawn(self.lab, "src", argv, timeout=count * interval + 60)))
            procs = {j: reap(h, f"{workload}", ticker=self.progress) for j, h in handles}
        for j, (tool, addr, _) in enumerate(jobs):
            proc = procs[j]
            row = Row(tool, workload, count)
            if tool.startswith("iputils"):
                probes = self._parse_iputils(row, proc, addr)
            elif tool == "fping":
                probes = self._parse_fping(row, proc)
            else:
                probes = self._parse_worker(row, proc)
            row.note = (row.note + f" {addr}").strip()
            row.wire = rtt_errors(cap, probes)
            self._finish(row, proc, None)

    def flood(self, workload: str, count: int, rate: float, pings: int, interval: float,
              kernel_filter: bool) -> None:  # fmt: skip
        """Issue 12's flood: dst sends ``count`` foreign and malformed ICMP packets at src's
        address (benchmarks/_flood_worker.py, paced at ``rate``/s, bounded in time) while netdiag
        and, beside it, iputils ping each ping their own address on dst ``pings`` times every
        ``interval``. A raw ICMP socket in src receives a copy of every flood packet: what it
        costs netdiag (CPU of the whole process and of the ping itself, replies lost, what its
        receive loop saw and refused) with and without its kernel filter."""
        src_addr = str(self.lab.node("src").ifaces[0].addr(4))
        flooder = [self.py, str(HERE / "_flood_worker.py"), "--to", src_addr, "--count",
                   str(count), "--rate", str(rate), "--seconds", str(count / rate * 2 + 5)]
        addr_nd, addr_ip = "198.18.200.11", "198.18.200.12"
        nd = self.argv_netdiag("ping", 1, pings, interval, addr=addr_nd)
        if not kernel_filter:
            nd.append("--no-kernel-filter")
        label = "netdiag" if kernel_filter else "netdiag (no filter)"
        before = snmp_counters(self.lab, "src")
        fl = spawn(self.lab, "dst", flooder, timeout=count / rate * 2 + 10)
        time.sleep(0.3)  # the flood is on before either ping starts ...
        h_nd = spawn(self.lab, "src", nd, timeout=pings * interval + 60)
        time.sleep(0.25)  # ... and netdiag's imports are done when iputils starts
        h_ip = spawn(self.lab, "src", self.argv_iputils(addr_ip, pings, interval),
                     timeout=pings * interval + 60)  # fmt: skip
        p_nd, p_ip = reap(h_nd, workload, self.progress), reap(h_ip)
        p_fl = reap(fl)
        try:
            fres = json.loads(p_fl.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            fres = {"sent": 0, "rate": 0.0, "error": p_fl.stderr.strip()[-200:]}
        flood_note = f"flood {fres['sent']:,} pkts at {fres['rate']:,.0f}/s"
        row = Row(label, workload, pings)
        self._parse_worker(row, p_nd)
        eng = row.extra.get("engine", {})
        refused = eng.get("ignored", 0) + eng.get("unmatched", 0) + row.extra.get("foreign", 0)
        row.note = (f"{flood_note}; socket passed {eng.get('received', 0):,}, Python refused "
                    f"{refused:,}, kernel drops {eng.get('kernel_drops', 0):,}, filters "
                    f"{eng.get('filter_updates', 0)}")  # fmt: skip
        self._finish(row, p_nd, before)
        irow = Row("iputils-ping", workload, pings)
        self._parse_iputils(irow, p_ip, addr_ip)
        irow.note = f"beside {label}; {flood_note}"
        self._finish(irow, p_ip, None)

    def trace(self, workload: str, repeat: int) -> None:
        """Tracer.collect over the ECMP diamond of tests/lab.py (a second lab, built here), MDA
        95 %, every hop answering at once; plus traceroute's wall time for scale."""
        with Lab() as diamond:  # the DIAMOND topology: src - r1 - {r2a|r2b} - r3 - dst
            dst = str(diamond.dst.v4)
            # What a complete route shows per TTL: ICMP takes one branch in this lab (Linux does
            # not hash echo ids), UDP both. A trace that found less is the MDA's 95 % miss
            # (probability 1/32 per UDP trace here): counted and printed, never averaged away.
            expected = {"udp": [1, 2, 2, 1], "icmp": [1, 1, 1, 1]}
            for proto in ("udp", "icmp"):
                self._trace_row(diamond, f"{workload} {proto}", dst, repeat, expected[proto],
                                proto=proto)  # fmt: skip
            if shutil.which("traceroute"):
                argv = ["traceroute", "-n", "-q", "3", "-N", "32", "-w", "1", dst]
                row = Row("traceroute", f"{workload} udp", 0)
                proc = run_in(diamond, "src", argv, timeout=60, label="traceroute")
                hops = [ln for ln in proc.stdout.splitlines()[1:] if ln.strip()]
                row.probes = row.sent = 3 * len(hops)
                row.received = sum(ln.count(" ms") for ln in hops)
                row.note = f"wall = process, {len(hops)} hops x 3 probes, one flow per probe"
                self._finish(row, proc, None)

    def trace_topologies(self, repeat: int) -> None:
        """Issue 13's comparison: netdiag's MDA (95 %, UDP) against scamper's ``tracelb`` on the
        lab diamond and the multipath topologies of tests/test_trace_multipath_lab.py (unequal
        branches, 4-way ECMP, diamonds in series), probes per trace and completeness against the
        hop sets the routes give; the scamper rows only where Debian's ``scamper`` is installed.
        """
        from test_trace_multipath_lab import TOPOLOGIES, truth

        from netdiag.testing.lab import DIAMOND

        for name, topo in {"diamond": DIAMOND, **TOPOLOGIES}.items():
            counts, _, _ = truth(topo, 4)
            want = [counts[t] for t in sorted(counts)]
            with Lab(topo) as lab:
                dst = str(lab.dst.v4)
                # the default, then each trade-off: Trace.minimize="rounds", and
                # stop_at_first_arrival (scamper's rule at the destination's hop)
                modes = (("", ()), (" (minimize=rounds)", ("--minimize", "rounds")),
                         (" (stop_at_first_arrival)", ("--first-arrival",)))  # fmt: skip
                for mode, flags in modes:
                    self._trace_row(lab, f"multipath {name} udp{mode}", dst, repeat, want,
                                    flags=flags)  # fmt: skip
                if not shutil.which("scamper"):
                    continue
                argv = ["scamper", "-O", "json", "-c", "tracelb -P udp-sport -c 95", "-i", dst]
                row = Row("scamper", f"multipath {name} udp", 0)
                proc = run_in(lab, "src", argv, timeout=120, label=f"scamper {name}")
                for line in proc.stdout.splitlines():
                    with contextlib.suppress(ValueError):
                        d = json.loads(line)
                        if d.get("type") == "tracelb":
                            row.probes = row.sent = row.received = int(d["probec"])
                            got = scamper_hops(d)
                            row.note = (f"tracelb -P udp-sport -c 95: probec {d['probec']}, hops "
                                        f"{got}{' (complete)' if got == want else ' INCOMPLETE'}, "
                                        f"expected {want}")  # fmt: skip
                self._finish(row, proc, None)

    def _trace_row(self, lab: Lab, workload: str, dst: str, repeat: int, want: list[int],
                   proto: str = "udp", flags: tuple[str, ...] = ()) -> None:  # fmt: skip
        """One netdiag trace row: ``repeat`` traces by the worker in ``lab``'s src (``flags``
        passed on), probes per trace, and every trace that found less than ``want`` interfaces
        per TTL -- the MDA's miss, counted and printed, never averaged away."""
        argv = [self.py, str(HERE / "_netdiag_worker.py"), "trace", "--addr", dst,
                "--proto", proto, "--count", str(repeat),
                "--expiry", "1.0", "--deadline", str(self.args.deadline), *flags]  # fmt: skip
        row = Row("netdiag", workload, 0)
        proc = run_in(lab, "src", argv, timeout=self.args.deadline + 10,
                      label=workload, ticker=self.progress)  # fmt: skip
        self._parse_worker(row, proc)
        row.probes = row.sent
        x = row.extra
        if x:
            row.work_wall = x["elapsed_median"]
            seen = x.get("hops_all", [x["hops"]])
            misses = [i for i, h in enumerate(seen) if h != want]
            counts = sorted(x["sent_all"])
            row.note = (f"median of {x['runs']} traces, {x['sent_per_trace']} probes/trace"
                        f" (min {counts[0]}, max {counts[-1]}), hops {want} in "
                        f"{len(seen) - len(misses)}/{len(seen)}")  # fmt: skip
            if misses:
                row.note += f"; MISSED in traces {misses}: {[seen[i] for i in misses]}"
                self.log(f"{workload}: {len(misses)} of {len(seen)} traces found less than "
                         f"{want}: {[seen[i] for i in misses]}")  # fmt: skip
        self._finish(row, proc, None)

    # -- knock ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def listener(self, port: int) -> Any:
        """A TCP listener on dst (every target address: they are ``local`` routes there)."""
        with self.lab.enter("dst"):
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("0.0.0.0", port))
            ls.listen(4096)
            yield ls
        finally:
            ls.close()

    def many(self, what: str, n: int, count: int, interval: float, port: int = 8080,
             tool: str = "netdiag", profile: Path | None = None) -> Row:  # fmt: skip
        """``n`` concurrent ping()/knock() calls on one object, one task and address each."""
        mode = f"{what}-many"
        wl = f"{mode} {n}x{count}"
        argv = [self.py, str(HERE / "_netdiag_worker.py"), mode, "--n", str(n),
                "--targets", str(self.targets_file(n)), "--count", str(count),
                "--interval", str(interval), "--expiry", str(self.args.timeout),
                "--ports", str(port), "--deadline", str(self.args.deadline)]  # fmt: skip
        if profile:
            argv += ["--profile", str(profile)]
        row = Row(tool, wl, n * count)
        before = snmp_counters(self.lab, "src") if what == "ping" else None
        with self.listener(port) if what == "knock" else _null(), self.version(tool):
            h = spawn(self.lab, "src", argv, timeout=self.args.deadline + 10)
            proc = reap(h, wl, ticker=self.progress)
        self._parse_worker(row, proc)
        x = row.extra
        if x:
            per = x.get("cpu_per_probe_us") or 0.0
            row.note = (f"{x.get('calls_done')}/{n} calls done, kernel drops "
                        f"{x.get('kernel_drops')}, {per:.1f} µs CPU/probe, peak fds "
                        f"{x.get('fds_peak')}")  # fmt: skip
        return self._finish(row, proc, before)

    def knock(self, workload: str, hosts: int, ports: list[int],
              tool: str = "netdiag") -> Row | None:  # fmt: skip
        listen_port = ports[0]
        with self.listener(listen_port), self.version(tool):
            argv = [self.py, str(HERE / "_netdiag_worker.py"), "knock",
                    "--targets", str(self.targets_file(hosts)),
                    "--ports", ",".join(map(str, ports)), "--expiry", str(self.args.timeout),
                    "--deadline", str(self.args.deadline)]  # fmt: skip
            if self.progress:
                argv.append("--progress")
            row = Row(tool, workload, hosts * len(ports))
            h = spawn(self.lab, "src", argv, timeout=self.args.deadline + 10, stderr_inherit=True)
            proc = reap(h)
            self._parse_worker(row, proc)
            out = row.extra.get("outcomes", {})
            row.note = (f"open {out.get('open', 0)}, closed {out.get('closed', 0)}, peak fds "
                        f"{row.extra.get('fds_peak')}")  # fmt: skip
            return self._finish(row, proc, None)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        pass


# ------------------------------------------------------------------------------------------ #
# Table
# ------------------------------------------------------------------------------------------ #


def us(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e6:.1f}"


def table(rows: list[Row], markdown: bool = False) -> str:
    head = ["tool", "workload", "probes", "false loss", "wall s", "proc s", "rate/s", "CPU s",
            "work CPU s", "max RSS MB", "RTT med µs", "RTT p99 µs", "err med µs", "err p99 µs",
            "netdiag ÷ tool", "load", "note"]  # fmt: skip
    ref: dict[str, Row] = {r.workload: r for r in rows if r.tool == "netdiag"}
    body = []
    for r in rows:
        if r.probes == 0:
            body.append([r.tool, r.workload] + ["-"] * 14 + [r.note])
            continue
        nd = ref.get(r.workload)
        ratio = "-"
        if r.workload.startswith("trace"):
            nd = None  # different algorithms (MDA vs 3 probes per hop): no rate ratio
        if nd is not None and r is not nd and r.rate and nd.rate:
            if r.workload.startswith("rtt"):
                if nd.rtt_median is not None and r.rtt_median is not None:
                    ratio = f"Δmed {(nd.rtt_median - r.rtt_median) * 1e6:+.1f} µs"
            elif "killed" in r.note:
                # it did not finish r.probes in r.wall: its rate is below probes/wall
                ratio = f"≥ {nd.rate / r.rate:.2f}× rate"
            else:
                ratio = f"{nd.rate / r.rate:.2f}× rate"
        loss = f"{r.lost}" + (f" ({r.lost / r.probes:.2%})" if r.lost else "")
        if r.workload.startswith("trace"):
            loss = f"{r.lost} unanswered"  # not false loss: see the note
        if r.kernel_replies is not None and r.lost:
            loss += f" [kernel saw {r.kernel_replies}]"
        w = r.wire or {}
        body.append([
            r.tool, r.workload, str(r.probes), loss,
            f"{r.wall:.3f}", f"{r.proc_wall:.2f}",
            f"< {r.rate:,.0f}" if "killed" in r.note else f"{r.rate:,.0f}", f"{r.cpu:.2f}",
            "-" if r.work_cpu is None else f"{r.work_cpu:.2f}",
            f"{r.maxrss_kb / 1024:.1f}", us(r.rtt_median), us(r.rtt_p99),
            us(w.get("err_median")), us(w.get("abs_err_p99")), ratio, f"{r.load:.1f}", r.note,
        ])  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'<' if i in (0, 1, 16) else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), *(fmt.format(*b) for b in body)])


# ------------------------------------------------------------------------------------------ #
# Environment, peers venv, profile
# ------------------------------------------------------------------------------------------ #


def snapshot_netdiag(log: Any, ref: str = "HEAD") -> tuple[str, str]:
    """Extract ``netdiag/`` of the commit ``ref`` (HEAD) into benchmarks/out/ and return (path,
    rev): what is measured is then a commit, not a working tree other people are editing."""
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    dest = OUT / f"netdiag-{rev}"
    if not (dest / "netdiag" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "netdiag"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    log(f"netdiag under test: commit {rev} (snapshot in {dest.relative_to(ROOT)})")
    return str(dest), rev


def ensure_peers(log: Any) -> None:
    py = PEERS_VENV / "bin" / "python"
    ok = py.exists() and subprocess.run(
        [str(py), "-c", "import icmplib"], capture_output=True
    ).returncode == 0
    if not ok:
        log("creating benchmarks/.venv-peers with icmplib (a peer, not a netdiag dependency)")
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "icmplib", "py-spy"], check=True,
                       timeout=300)  # fmt: skip


def environment() -> dict[str, Any]:
    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    peer = str(PEERS_VENV / "bin" / "python")
    icmplib_v = out(peer, "-c", "import icmplib; print(icmplib.__version__)")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "netdiag_commit": out("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "netdiag_dirty": bool(out("git", "-C", str(ROOT), "status", "--porcelain", "netdiag")),
        "fping": out("fping", "-v"),
        "iputils": out("ping", "-V"),
        "icmplib": icmplib_v,
    }


def profile_report(path: Path, probes: int, top: int = 25) -> str:
    lines = []
    for key in ("tottime", "cumulative"):
        import io

        buf = io.StringIO()
        st = pstats.Stats(str(path), stream=buf)
        st.sort_stats(key).print_stats(top)
        text = buf.getvalue()
        start = text.find("   ncalls")
        lines.append(f"--- top {top} by {key} ({probes} probes) ---")
        lines.append(text[start:].rstrip() if start >= 0 else text.rstrip())
    # per-probe cost of the heaviest functions (by own time)
    st = pstats.Stats(str(path))
    items = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]  # type: ignore[attr-defined]
    total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
    per = total / probes * 1e6
    lines.append(f"--- own time per probe (total {total:.3f} s = {per:.1f} µs/probe) ---")
    for (file, lineno, fn), (_cc, nc, tt, _ct, _callers) in items:
        short = f"{Path(file).name}:{lineno}({fn})"
        us_per = tt / probes * 1e6
        lines.append(f"{us_per:8.2f} µs/probe  {tt / total:6.1%}  {nc:>9} calls  {short}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ #
# Main
# ------------------------------------------------------------------------------------------ #


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="netdiag vs fping, iputils ping, icmplib (issue 5)")
    p.add_argument("--quick", action="store_true", help="small sizes, < 1 minute")
    p.add_argument("--all", action="store_true", help="mass ping 10k x 1, 100k x 1 and 10k x 10")
    p.add_argument("--targets", type=int, help="mass ping targets (default 10000, quick 2000)")
    p.add_argument("--count", type=int, help="mass ping echoes per target (default 1)")
    p.add_argument("--mass", action="append", default=[], metavar="NxK",
                   help="extra mass-ping shapes, e.g. --mass 100000x1 (repeatable)")
    p.add_argument("--interval", type=float, default=0.0,
                   help="seconds between rounds to the same target when count > 1 (default 0)")
    p.add_argument("--timeout", type=float, default=2.0, help="per-probe wait, all tools (s)")
    p.add_argument("--rtt-probes", type=int, help="single-target probes (default 200, quick 100)")
    p.add_argument("--rtt-interval", type=float, default=0.01)
    p.add_argument("--load-targets", type=int, help="RTT-under-load burst (default 10000)")
    p.add_argument("--knock-hosts", type=int, help="knock hosts (default 1000, quick 200)")
    p.add_argument("--knock-ports", default="8080,22,80,443,3306")
    p.add_argument("--knock-big", metavar="HOSTSxPORTS",
                   help="also knock HOSTS x PORTS pairs (8080 open, then closed ports 10001..):"
                        " issue 12's 1000x100 fd/rate shape (part of --all)")
    p.add_argument("--concurrent", metavar="N,N,...",
                   help="N concurrent ping()/knock() calls on one object (one task each), e.g."
                        " 5000,10000,20000 (--all: that list)")
    p.add_argument("--concurrent-count", type=int, default=3)
    p.add_argument("--concurrent-interval", type=float, default=0.2)
    p.add_argument("--icmplib-tasks", type=int, default=1000,
                   help="icmplib concurrent_tasks (one raw socket each)")
    p.add_argument("--no-peers", action="store_true", help="netdiag only")
    p.add_argument("--skip", action="append", default=[],
                   choices=("mass", "rtt", "load", "knock", "trace", "icmplib", "baseline",
                            "dgram", "many"))
    p.add_argument("--router", action="store_true", help="put a router between src and dst")
    p.add_argument("--no-tx-stamps", action="store_true",
                   help="netdiag without kernel transmit timestamps (the before-issue-12 RTTs)")
    p.add_argument("--flood", action="store_true",
                   help="also: ping 60 x 30 ms under a flood of foreign/malformed ICMP, with and "
                        "without netdiag's kernel filter, iputils ping beside (issue 12)")
    p.add_argument("--flood-only", action="store_true", help="the flood section alone")
    p.add_argument("--flood-count", type=int, default=300_000, help="flood packets (bounded)")
    p.add_argument("--flood-rate", type=float, default=80_000.0, help="flood packets per second")
    p.add_argument("--profile", action="store_true", help="cProfile netdiag's first mass run")
    p.add_argument("--py-spy", action="store_true", help="also record a py-spy flame graph")
    p.add_argument("--deadline", type=float, default=120.0, help="per netdiag/fping process (s)")
    p.add_argument("--peer-deadline", type=float, default=60.0, help="per icmplib process (s)")
    p.add_argument("--progress", action="store_true", help="live counters even if not a tty")
    p.add_argument("--baseline", metavar="REV",
                   help="also run every netdiag mass/knock/many workload with commit REV"
                        " (rows 'netdiag@REV'), right after the code under test: before/after"
                        " in one run")
    p.add_argument("--working-tree", action="store_true",
                   help="benchmark the working tree's netdiag (default: a snapshot of HEAD)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.flood_only:
        args.skip += ["mass", "rtt", "load", "knock", "trace", "icmplib"]
    if os.geteuid() != 0:
        print("run.py: needs root (namespaces, raw sockets)", file=sys.stderr)
        return 2
    for tool in ("ip", "fping", "ping"):
        if not shutil.which(tool):
            print(f"run.py: {tool} not found", file=sys.stderr)
            return 2
    n = args.targets or (2000 if args.quick else 10000)
    k = args.count or 1
    shapes = [(n, k)]
    if args.all:
        shapes = [(10000, 1), (100000, 1), (10000, 10)]
    for spec in args.mass:
        a, _, b = spec.partition("x")
        shapes.append((int(a), int(b or 1)))
    rtt_n = args.rtt_probes or (100 if args.quick else 200)
    load_n = args.load_targets or (2000 if args.quick else 10000)
    knock_hosts = args.knock_hosts or (200 if args.quick else 1000)
    concurrent = [int(x) for x in (args.concurrent or "").split(",") if x]
    knock_big = args.knock_big
    if args.all:
        concurrent = concurrent or [5000, 10000, 20000]
        knock_big = knock_big or "1000x100"
    if any(c > V4_TARGETS.num_addresses - 2 for c in concurrent):
        print("run.py: at most 32766 concurrent calls (one IPv4 target each)", file=sys.stderr)
        return 2
    for n_, _ in [*shapes, (load_n, 1)]:
        if n_ > (V4_TARGETS.num_addresses - 2) + 2**20:
            most = (V4_TARGETS.num_addresses - 2) + 2**20
            print(f"run.py: at most {most} targets", file=sys.stderr)
            return 2
    OUT.mkdir(exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    peers = not args.no_peers and "icmplib" not in args.skip
    if peers:
        ensure_peers(log)
    env = environment()
    if args.working_tree:
        env["netdiag_under_test"] = "working tree" + (" (dirty)" if env["netdiag_dirty"] else "")
        os.environ.pop("NETDIAG_PATH", None)
    else:
        path, rev = snapshot_netdiag(log)
        os.environ["NETDIAG_PATH"] = path
        env["netdiag_under_test"] = f"commit {rev}"
    nd_tools = ["netdiag"]
    if args.baseline:
        args.baseline_path, base_rev = snapshot_netdiag(log, args.baseline)
        env["netdiag_baseline"] = f"commit {base_rev}"
        nd_tools.append(f"netdiag@{base_rev}")
    log(f"netdiag benchmark: {env['date']}, kernel {env['kernel']}, {env['cpus']} CPUs")
    started = time.monotonic()
    lab = build_lab(args.router)
    results: dict[str, Any] = {"environment": env, "args": vars(args)}
    try:
        results["sysctls"] = configure_lab(lab, args.router)
        bench = Bench(args, lab)
        dst = str(lab.node("dst").on("r1" if args.router else "src", 4))
        # warm-up: neighbour entries, page cache, first-run costs for every tool
        lab.exec("src", "fping", "-q", "-r", "1", "-t", "500", dst, "198.18.128.1",
                 "2001:db8:ff00::1", check=False)  # fmt: skip
        if "mass" not in args.skip:
            for n_, k_ in shapes:
                wl = f"mass {n_}x{k_}"
                log(f"== {wl}")
                tools = list(nd_tools)
                if not args.no_peers:
                    tools.append("fping")
                    if peers:
                        tools.append("icmplib")
                        if "dgram" not in args.skip:
                            tools.append("icmplib-dgram")
                    if k_ == 1 and "baseline" not in args.skip:
                        tools.append("python-raw-loop")
                for tool in tools:
                    bench.mass(tool, wl, n_, k_, args.interval)
        if "rtt" not in args.skip:
            wl = f"rtt {rtt_n}@{args.rtt_interval * 1000:g}ms"
            log(f"== {wl} (one target each, all tools at once, under capture)")
            tools = ["netdiag"]
            if not args.no_peers:
                tools = ["iputils-ping", "netdiag", "iputils-ping#2", "fping"]
                if peers:
                    tools.append("icmplib")
            bench.rtt_same_moment(wl, tools, rtt_n, args.rtt_interval)
        if "load" not in args.skip:
            wl = f"rtt-load {load_n}x1"
            log(f"== {wl} (burst, under capture)")
            tools = ["netdiag"] if args.no_peers else ["netdiag", "fping"]
            if peers:
                tools.append("icmplib")
            for tool in tools:
                bench.mass(tool, wl, load_n, 1, 0.0, capture=True)
        if "knock" not in args.skip:
            ports = [int(p) for p in args.knock_ports.split(",")]
            wl = f"knock {knock_hosts}x{len(ports)}"
            log(f"== {wl}")
            for tool in nd_tools:
                bench.knock(wl, knock_hosts, ports, tool)
            if knock_big:
                h_, _, p_ = knock_big.partition("x")
                big_ports = [ports[0], *range(10001, 10001 + int(p_ or 1) - 1)]
                wl = f"knock {int(h_)}x{len(big_ports)}"
                log(f"== {wl}")
                for tool in nd_tools:
                    bench.knock(wl, int(h_), big_ports, tool)
        if concurrent and "many" not in args.skip:
            for what in ("ping", "knock"):
                for c in concurrent:
                    log(f"== {what}-many {c}x{args.concurrent_count}")
                    for tool in nd_tools:
                        bench.many(what, c, args.concurrent_count, args.concurrent_interval,
                                   tool=tool)  # fmt: skip
        if args.flood or args.flood_only:
            wl = f"flood {args.flood_count // 1000}k + ping 60x30ms"
            for kernel_filter in (False, True):
                log(f"== {wl} ({'with' if kernel_filter else 'without'} the kernel filter)")
                bench.flood(wl, args.flood_count, args.flood_rate, 60, 0.03, kernel_filter)
        if "trace" not in args.skip:
            log("== trace (ECMP diamond lab)")
            bench.trace("trace diamond", 3 if args.quick else 10)
            log("== multipath (issue 13's topologies; scamper tracelb where installed)")
            bench.trace_topologies(3 if args.quick else 10)
        if args.profile:
            n_, k_ = shapes[0]
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = OUT / f"netdiag-{n_}x{k_}-{stamp}.pstats"
            log(f"== profile: netdiag mass {n_}x{k_} under cProfile")
            prow = bench.mass("netdiag", f"profile {n_}x{k_}", n_, k_, args.interval,
                              profile=path)
            bench.rows.remove(prow)
            report = profile_report(path, n_ * k_)
            results["profile"] = {"pstats": str(path.relative_to(ROOT)), "report": report,
                                  "wall_under_profiler": prow.work_wall}  # fmt: skip
            if concurrent and "many" not in args.skip:
                c = concurrent[-1]
                cpath = OUT / f"netdiag-ping-many-{c}-{stamp}.pstats"
                log(f"== profile: netdiag ping-many {c}x{args.concurrent_count} under cProfile")
                prow = bench.many("ping", c, args.concurrent_count, args.concurrent_interval,
                                  profile=cpath)  # fmt: skip
                bench.rows.remove(prow)
                creport = profile_report(cpath, c * args.concurrent_count)
                results["profile"]["many"] = str(cpath.relative_to(ROOT))
                report += f"\n\n=== ping-many {c}x{args.concurrent_count} ===\n" + creport
                results["profile"]["report"] = report
            (OUT / "latest-profile.txt").write_text(report + "\n")
            if args.py_spy:
                svg = OUT / f"netdiag-{n_}x{k_}-{stamp}.svg"
                spy = str(PEERS_VENV / "bin" / "py-spy")
                argv = [spy, "record", "-r", "2000", "-o", str(svg), "--", sys.executable,
                        str(HERE / "_netdiag_worker.py"), "sweep", "--targets",
                        str(bench.targets_file(n_)), "--count", str(k_)]  # fmt: skip
                proc = run_in(lab, "src", argv, timeout=args.deadline, label="py-spy")
                results["profile"]["py_spy"] = str(svg.relative_to(ROOT)) if proc.rc == 0 else (
                    f"py-spy failed: {proc.stderr.strip()[-300:]}")
    finally:
        lab.close()
    results["rows"] = [
        {**{k: v for k, v in r.__dict__.items()}, "rate": r.rate, "lost": r.lost, "wall": r.wall}
        for r in bench.rows
    ]
    results["seconds"] = time.monotonic() - started
    text = table(bench.rows)
    md = table(bench.rows, markdown=True)
    print()
    base = f" (baseline {env['netdiag_baseline']})" if args.baseline else ""
    print(f"{env['date']}  kernel {env['kernel']}  {env['cpus']} CPUs ({env['cpu_model']})  "
          f"python {env['python']}  netdiag {env['netdiag_under_test']}{base}  {env['fping']}  "
          f"icmplib {env['icmplib']}")  # fmt: skip
    print(text)
    summary = summarize(bench.rows)
    results["summary"] = summary
    print()
    for line in summary:
        print(line)
    if "profile" in results:
        print()
        print(results["profile"]["report"])
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for name in (f"results-{stamp}.json", "latest.json"):
        (OUT / name).write_text(json.dumps(results, indent=1, default=str) + "\n")
    (OUT / "latest.md").write_text(md + "\n\n" + "\n".join(f"- {s}" for s in summary) + "\n")
    print(f"\nresults: {OUT / f'results-{stamp}.json'} (+ latest.json, latest.md); "
          f"{results['seconds']:.1f} s in all", file=sys.stderr)  # fmt: skip
    return 0


def summarize(rows: list[Row]) -> list[str]:
    """The issue's targets, each with the number that decides it."""
    out = []
    by = {(r.tool, r.workload): r for r in rows}
    for r in rows:
        if r.tool != "netdiag" or not r.workload.startswith("mass"):
            continue
        f = by.get(("fping", r.workload))
        i = by.get(("icmplib", r.workload))
        parts = [f"{r.workload}: netdiag {r.rate:,.0f}/s (target ≥ 40,000)",
                 f"false loss {r.lost}"]  # fmt: skip
        if f and f.rate:
            parts.append(f"{r.rate / f.rate:.2f}× fping (target ≥ 0.8)")
        if i and i.rate and "killed" not in i.note:
            parts.append(f"{r.rate / i.rate:.1f}× icmplib (target ≥ 4)")
        rss = r.extra.get("hwm_kb", 0) - r.extra.get("rss_before_kb", 0)
        if rss and r.probes:
            parts.append(f"peak RSS growth {rss * 1024 / r.probes:,.0f} B/probe (target ≤ 2048)")
        out.append("; ".join(parts))
    for r in rows:
        if r.tool == "netdiag" and r.workload.startswith("rtt ") and r.rtt_median is not None:
            refs = [x for x in rows if x.tool.startswith("iputils") and x.workload == r.workload
                    and x.rtt_median is not None]  # fmt: skip
            if refs:
                ref = sum(x.rtt_median for x in refs) / len(refs)
                noise = max(x.rtt_median for x in refs) - min(x.rtt_median for x in refs)
                out.append(f"{r.workload}: netdiag median {r.rtt_median * 1e6:.1f} µs vs iputils "
                           f"{ref * 1e6:.1f} µs: Δ {(r.rtt_median - ref) * 1e6:+.1f} µs (target "
                           f"|Δ| ≤ 10; iputils run-to-run {noise * 1e6:.1f} µs)")  # fmt: skip
        if r.tool.startswith("netdiag") and r.wire and r.wire.get("matched"):
            tx = r.extra.get("tx_kernel")
            stamps = "" if tx is None else f", {tx}/{r.received} replies timed by kernel TX stamps"
            out.append(f"{r.workload}: {r.tool} RTT error vs wire median "
                       f"{us(r.wire['err_median'])} µs (target ≤ 3), p99 |err| "
                       f"{us(r.wire['abs_err_p99'])} µs (target ≤ 10){stamps}")  # fmt: skip
        if r.tool == "netdiag" and r.workload.startswith("rtt-load") and r.wire:
            out.append(f"{r.workload}: netdiag RTT error vs wire median "
                       f"{us(r.wire['err_median'])} µs, p99 |err| {us(r.wire['abs_err_p99'])} µs "
                       f"(target p99 ≤ 100), {r.wire['matched']} probes matched")  # fmt: skip
        if r.tool.startswith("netdiag") and r.workload.startswith("knock ") and r.wall:
            who = "" if r.tool == "netdiag" else f"[{r.tool}] "
            out.append(f"{who}{r.workload}: {r.rate:,.0f} SYNs/s (target ≥ 20,000; 1000x100: "
                       f"≥ 30,000), peak open fds {r.extra.get('fds_peak')} (target ≤ 1,024)")
    def sweep_of(tool: str, what: str) -> Row | None:
        prefix = "mass" if what == "ping" else "knock "
        return next((x for x in rows if x.tool == tool and x.workload.startswith(prefix)
                     and x.work_cpu), None)  # fmt: skip

    for r in rows:
        what = r.workload.split("-", 1)[0]
        if not r.tool.startswith("netdiag") or "-many " not in r.workload or not r.work_cpu:
            continue
        per = r.work_cpu / r.probes
        who = "" if r.tool == "netdiag" else f"[{r.tool}] "
        line = (f"{who}{r.workload}: {r.received:,}/{r.probes:,} replies, false loss {r.lost}, "
                f"kernel drops {r.extra.get('kernel_drops')}, {per * 1e6:.1f} µs CPU/probe")
        ref = sweep_of(r.tool, what)
        if ref is not None and ref.work_cpu:
            ref_per = ref.work_cpu / ref.probes
            line += (f" = {per / ref_per:.2f}× the sweep's {ref_per * 1e6:.1f} µs "
                     f"({ref.workload}; target ≤ 2×)")
        out.append(line)
    return out


if __name__ == "__main__":
    sys.exit(main())
