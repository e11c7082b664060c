"""netdiag side of the benchmark: one process, run by benchmarks/run.py inside the lab's source
namespace (``ip netns exec <src> python benchmarks/_netdiag_worker.py ...``).

Why a separate process: CPU time and peak RSS are then measured per tool by the parent with
``wait4`` (rusage of exactly this process), the same way as for fping and icmplib, and a crash or
hang here cannot take the lab (and its teardown) with it.

Modes:

* ``sweep``  -- ``Pinger.sweep(targets, count=, interval=, expiry=, rate=)``: the mass-ping path;
* ``ping``   -- ``Pinger.results(Ping(addr, count, interval))``: the plain single-target path
  (RTT accuracy against iputils);
* ``knock``  -- ``Knocker.sweep(pairs, count=1)``: one sender task for every (host, port);
  the peak number of open file descriptors is sampled while it runs (knock fds, issue 12);
* ``ping-many`` / ``knock-many`` -- N concurrent ``Pinger.ping(Ping(addr, count, interval))``
  (``Knocker.knock(Knock(addr, port, count, interval))``) calls on one object, one trio task
  each, one address each: the "many concurrent calls" shape of issue 12. Reports replies
  received vs expected and the engine's kernel-drop counter.

It prints one JSON object on stdout: counts, the library wall time (first send to last result;
interpreter start-up, imports and opening sockets are excluded: the parent measures the whole
process separately), CPU of the work, RSS before/after, RTTs, and optionally every probe's
(address, seq, rtt) so the parent can compare them with its packet capture.
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

# The netdiag under test: run.py passes a snapshot of a commit in NETDIAG_PATH (default), or
# the working tree (--working-tree); never whatever happens to be pip-installed.
sys.path.insert(0, os.environ.get("NETDIAG_PATH") or str(Path(__file__).resolve().parents[1]))

import trio

import netdiag
from netdiag import Ping, Pinger


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _read_targets(path: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    with open(path) as f:
        return [ipaddress.ip_address(line.strip()) for line in f if line.strip()]


class Progress:
    """A live counter on stderr (only when asked: the parent passes --progress on long runs)."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.next_t = time.monotonic() + 0.5
        self.shown = False

    def tick(self, done: int) -> None:
        if self.enabled and (done & 1023) == 0:
            now = time.monotonic()
            if now >= self.next_t:
                self.next_t = now + 0.5
                self.shown = True
                print(f"\r  {self.label}: {done}/{self.total} results", end="", file=sys.stderr)

    def end(self) -> None:
        if self.shown:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr)


def _pinger() -> Pinger:
    try:
        return Pinger(privileged=True)  # raw sockets, as fping/icmplib(privileged) use
    except TypeError:  # an older Pinger without the privileged= switch
        return Pinger()


async def run_ping_like(args: argparse.Namespace) -> dict:
    if args.mode == "sweep":
        targets = _read_targets(args.targets)
        total = len(targets) * args.count
    else:
        targets = [ipaddress.ip_address(args.addr)]
        total = args.count
    progress = Progress("netdiag", total, args.progress)
    sent = received = timeouts = errors = dups = late = tx_kernel = 0
    rtts: list[float] = []
    probes: list[tuple[str, int, float]] = []
    dump = args.dump
    prof = cProfile.Profile() if args.profile else None
    async with _pinger() as pinger:
        rss_before = _status_kb("VmRSS")
        if prof is not None:  # the library's work only: not target parsing, imports, sockets
            prof.enable()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if args.mode == "sweep":
            it = pinger.sweep(
                targets,
                count=args.count,
                interval=args.interval,
                expiry=args.expiry,
                size=args.size,
                rate=args.rate,
            )
        else:
            it = pinger.results(
                Ping(targets[0], count=args.count, interval=args.interval, expiry=args.expiry,
                     size=args.size)
            )  # fmt: skip
        n = 0
        async for r in it:
            n += 1
            if r.duplicate:
                dups += 1
                continue
            if r.late:
                late += 1
                continue
            sent += 1
            if r.kind == "reply":
                received += 1
                tx_kernel += getattr(r, "tx_kernel", False)
                rtts.append(r.rtt)
                if dump:
                    probes.append((str(r.addr), r.seq, r.rtt))
            elif r.kind == "timeout":
                timeouts += 1
            else:
                errors += 1
            progress.tick(n)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        progress.end()
        rss_after = _status_kb("VmRSS")
        engine = pinger.engine.stats
        foreign = pinger.foreign
        # how often the scheduler waited for the receive side (issue 12; None before it)
        held_back = getattr(getattr(pinger.engine, "scheduler", None), "held_back", None)
    rtts.sort()
    return {
        "tool": "netdiag",
        "version": netdiag.__version__,
        "mode": args.mode,
        "probes": total,
        "sent": sent,
        "received": received,
        "timeouts": timeouts,
        "errors": errors,
        "duplicates": dups,
        "late": late,
        "foreign": foreign,
        "held_back": held_back,
        "tx_kernel": tx_kernel,
        "engine": {k: getattr(engine, k) for k in engine.__slots__},
        "work_wall": wall,
        "work_cpu": cpu,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "hwm_kb": _status_kb("VmHWM"),
        "rtt_median": rtts[len(rtts) // 2] if rtts else None,
        "rtt_p99": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] if rtts else None,
        "probes_dump": probes if dump else None,
    }


async def run_knock(args: argparse.Namespace) -> dict:
    from netdiag import Knocker

    hosts = _read_targets(args.targets)
    ports = [int(p) for p in args.ports.split(",")]
    pairs = [(h, p) for h in hosts for p in ports]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    progress = Progress("netdiag knock", len(pairs), args.progress)
    counts = {"open": 0, "closed": 0, "filtered": 0, "error": 0}
    dups = late = 0
    rtts: list[float] = []
    done = 0

    fds = FdPeak()
    async with Knocker() as knocker, trio.open_nursery() as outer:
        rss_before = _status_kb("VmRSS")
        outer.start_soon(fds.run)

        prof = cProfile.Profile() if args.profile else None
        if prof is not None:
            prof.enable()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        # The batch API: one sender task for every (host, port), as Pinger.sweep for pings.
        async for r in knocker.sweep(pairs, count=1, expiry=args.expiry):
            if r.duplicate:
                dups += 1
            elif r.late:
                late += 1
            else:
                counts[r.kind] += 1
                if r.rtt is not None and r.kind in ("open", "closed"):
                    rtts.append(r.rtt)
                done += 1
                progress.tick(done)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        progress.end()
        outer.cancel_scope.cancel()
    rtts.sort()
    answered = counts["open"] + counts["closed"]
    return {
        "tool": "netdiag",
        "version": netdiag.__version__,
        "mode": "knock",
        "probes": len(pairs),
        "sent": len(pairs),
        "received": answered,
        "outcomes": counts,
        "fds_peak": fds.peak,
        "duplicates": dups,
        "late": late,
        "work_wall": wall,
        "work_cpu": cpu,
        "rss_before_kb": rss_before,
        "hwm_kb": _status_kb("VmHWM"),
        "rtt_median": rtts[len(rtts) // 2] if rtts else None,
        "rtt_p99": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] if rtts else None,
    }


class FdPeak:
    """Samples this process's open file descriptors every ``every`` seconds (a trio task)."""

    def __init__(self) -> None:
        self.peak = _open_fds()

    async def run(self, every: float = 0.02) -> None:
        while True:
            self.peak = max(self.peak, _open_fds())
            await trio.sleep(every)


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # EMFILE: every descriptor is in use
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def run_many(args: argparse.Namespace) -> dict:
    """``args.n`` concurrent single-target calls, one task each, on one Pinger/Knocker."""
    targets = _read_targets(args.targets)[: args.n]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    knock = args.mode == "knock-many"
    expected = len(targets) * args.count
    received = missing = 0
    done_calls = 0
    fds = FdPeak()
    if knock:
        from netdiag import Knock, Knocker

        obj: Any = Knocker()
        port = int(args.ports.split(",")[0])
    else:
        obj = _pinger()
    prof = cProfile.Profile() if args.profile else None
    async with obj:
        rss_before = _status_kb("VmRSS")
        async with trio.open_nursery() as outer:
            outer.start_soon(fds.run)
            if prof is not None:
                prof.enable()
            cpu0 = time.process_time()
            t0 = time.perf_counter()

            async def one(addr: Any) -> None:
                nonlocal received, missing, done_calls
                if knock:
                    it = obj.knock(Knock(addr, port, count=args.count, interval=args.interval,
                                         expiry=args.expiry))  # fmt: skip
                else:
                    it = obj.ping(Ping(addr, count=args.count, interval=args.interval,
                                       expiry=args.expiry))  # fmt: skip
                async for rtt in it:
                    if rtt is None:
                        missing += 1
                    else:
                        received += 1
                done_calls += 1

            async with trio.open_nursery() as calls:
                for a in targets:
                    calls.start_soon(one, a)
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            if prof is not None:
                prof.disable()
                prof.dump_stats(args.profile)
            outer.cancel_scope.cancel()
        engine = obj.engine.stats
    return {
        "tool": "netdiag",
        "version": netdiag.__version__,
        "mode": args.mode,
        "calls": len(targets),
        "calls_done": done_calls,
        "probes": expected,
        "sent": received + missing,
        "received": received,
        "missing": missing,
        "kernel_drops": engine.kernel_drops,
        "engine": {k: getattr(engine, k) for k in engine.__slots__},
        "fds_peak": fds.peak,
        "work_wall": wall,
        "work_cpu": cpu,
        "cpu_per_probe_us": cpu / expected * 1e6 if expected else None,
        "rss_before_kb": rss_before,
        "hwm_kb": _status_kb("VmHWM"),
        "rtt_median": None,
        "rtt_p99": None,
    }


async def run_trace(args: argparse.Namespace) -> dict:
    """``args.count`` full routes (after one warm-up that fills neighbour caches), MDA 95 %."""
    from netdiag import Trace, Tracer

    trace = Trace(args.addr, proto=args.proto, expiry=args.expiry, confidence=0.95, max_ttl=16,
                  minimize=args.minimize,
                  stop_at_first_arrival=args.first_arrival)  # fmt: skip
    elapsed: list[float] = []
    sents: list[int] = []
    answered = 0
    hops: list[int] = []
    hops_all: list[list[int]] = []
    async with Tracer() as tracer:
        rss_before = _status_kb("VmRSS")
        await tracer.collect(trace)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(args.count):
            res = await tracer.collect(trace)
            elapsed.append(res.elapsed)
            sents.append(res.sent)
            answered = res.sent - sum(h.timeouts for h in res.hops)
            hops = [len(h.responders) for h in res.hops]
            hops_all.append(hops)
            reached = res.reached
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    elapsed.sort()
    return {
        "tool": "netdiag",
        "version": netdiag.__version__,
        "mode": "trace",
        "proto": args.proto,
        "minimize": args.minimize,
        "runs": args.count,
        # Issue 13: a run once printed the *last* trace's count and hop set (23 probes, hops
        # [1, 1, 1, 1]: the MDA at 95 % stopped after 6 flows that all took one branch, which
        # happens once in 32 traces on this diamond) beside the *median* in the note. Every
        # trace's counts and hop sets are reported now, and run.py prints the misses.
        "probes": sents[-1],
        "sent": sents[-1],
        "received": answered,
        "sent_per_trace": sorted(sents)[len(sents) // 2],
        "sent_all": sents,
        "reached": reached,
        "hops": hops,
        "hops_all": hops_all,
        "elapsed_median": elapsed[len(elapsed) // 2],
        "elapsed_all": elapsed,
        "work_wall": wall,
        "work_cpu": cpu / args.count,
        "rss_before_kb": rss_before,
        "hwm_kb": _status_kb("VmHWM"),
        "rtt_median": None,
        "rtt_p99": None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("sweep", "ping", "knock", "trace", "ping-many", "knock-many"))
    p.add_argument("--n", type=int, default=1000, help="concurrent calls (ping-many, knock-many)")
    p.add_argument("--targets", help="file with one address per line (sweep, knock)")
    p.add_argument("--addr", help="single target (ping)")
    p.add_argument("--ports", default="80", help="comma-separated ports (knock)")
    p.add_argument("--proto", default="udp", help="trace protocol")
    p.add_argument("--minimize", default="probes", choices=("probes", "rounds"),
                   help="Trace.minimize")  # fmt: skip
    p.add_argument("--first-arrival", action="store_true",
                   help="Trace.stop_at_first_arrival")  # fmt: skip
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.0)
    p.add_argument("--expiry", type=float, default=2.0)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--rate", type=float, default=None)
    p.add_argument("--dump", action="store_true", help="include every reply's (addr, seq, rtt)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--profile", help="cProfile the sweep/ping itself, write the stats here")
    p.add_argument("--deadline", type=float, default=300.0, help="hard cap in seconds")
    p.add_argument("--no-kernel-filter", action="store_true",
                   help="do not attach cBPF filters (the before-issue-12 behaviour, for --flood)")
    p.add_argument("--no-tx-stamps", action="store_true",
                   help="send times from the user-space clock (the before-issue-12 behaviour)")
    args = p.parse_args()
    if args.no_tx_stamps:
        from netdiag.sock import ProbeSocket

        if hasattr(ProbeSocket, "enable_tx_stamps"):
            ProbeSocket.enable_tx_stamps = lambda self: False  # type: ignore[method-assign]
    if args.no_kernel_filter:
        from netdiag.sock import ProbeSocket

        if hasattr(ProbeSocket, "attach_filter"):
            ProbeSocket.attach_filter = lambda self, program: False  # type: ignore[method-assign]

    fn = {"knock": run_knock, "trace": run_trace, "ping-many": run_many,
          "knock-many": run_many}.get(args.mode, run_ping_like)  # fmt: skip
    try:
        if args.mode in ("knock", "knock-many"):
            from netdiag import Knocker  # noqa: F401
        if args.mode == "trace":
            from netdiag import Tracer  # noqa: F401
    except ImportError as e:
        print(json.dumps({"error": f"TODO: {e}"}))
        os._exit(3)

    async def bounded() -> dict:
        with trio.fail_after(args.deadline):
            return await fn(args)

    result = trio.run(bounded)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: it is not part of anything we measure


if __name__ == "__main__":
    main()
