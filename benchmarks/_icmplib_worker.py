"""icmplib side of the benchmark, run with the peers venv's interpreter inside the lab's source
namespace. icmplib is a peer we compare against, never a netdiag dependency: run.py installs it
into benchmarks/.venv-peers.

``multi``: ``async_multiping(targets, count, interval, timeout, concurrent_tasks, privileged)``,
the API icmplib documents for many hosts. ``ping``: ``async_ping(addr, count, interval)`` for the
single-target RTT comparison. Prints one JSON object on stdout, like _netdiag_worker.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import icmplib


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


async def run(args: argparse.Namespace) -> dict:
    if args.mode == "multi":
        with open(args.targets) as f:
            targets = [line.strip() for line in f if line.strip()]
    else:
        targets = [args.addr]
    rss_before = _status_kb("VmRSS")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if args.mode == "multi":
        hosts = await icmplib.async_multiping(
            targets, count=args.count, interval=args.interval, timeout=args.timeout,
            concurrent_tasks=args.concurrent, privileged=args.privileged,
        )
    else:
        hosts = [await icmplib.async_ping(
            targets[0], count=args.count, interval=args.interval, timeout=args.timeout,
            privileged=args.privileged,
        )]
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    sent = sum(h.packets_sent for h in hosts)
    received = sum(h.packets_received for h in hosts)
    rtts = sorted(r / 1000.0 for h in hosts for r in h.rtts)
    dump = [(h.address, i + 1, r / 1000.0) for h in hosts for i, r in enumerate(h.rtts)]
    return {
        "tool": "icmplib",
        "version": icmplib.__version__,
        "mode": args.mode,
        "probes": len(targets) * args.count,
        "sent": sent,
        "received": received,
        "work_wall": wall,
        "work_cpu": cpu,
        "rss_before_kb": rss_before,
        "hwm_kb": _status_kb("VmHWM"),
        "rtt_median": rtts[len(rtts) // 2] if rtts else None,
        "rtt_p99": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] if rtts else None,
        # icmplib keeps only the RTTs of answered requests, not their sequence numbers: with
        # count=1 (how the capture comparison runs it) the address alone identifies the probe.
        "probes_dump": dump if args.dump else None,
        "concurrent_tasks": args.concurrent,
        "privileged": args.privileged,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("multi", "ping"))
    p.add_argument("--targets")
    p.add_argument("--addr")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--concurrent", type=int, default=1000)
    p.add_argument("--unprivileged", dest="privileged", action="store_false")
    p.add_argument("--dump", action="store_true")
    args = p.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
