#!/usr/bin/env python3
"""The asyncio bridge's cost (issue 16): a 10,000-target sweep natively in trio and through
:class:`netdiag.aio.AsyncioPinger` under ``asyncio.run``, in the lab; prints the ratio.

As root, from the repository root::

    python benchmarks/asyncio_sweep.py                      # 10,000 targets x 1, 5 rounds
    python benchmarks/asyncio_sweep.py --targets 2000 --rounds 3

It builds the benchmark lab of benchmarks/run.py (``src`` -- ``dst``; dst answers
198.18.128.0/17 and 2001:db8:ff00::/64 on lo, ICMP rate limits off), then runs this script
again in src (``--worker``). The worker alternates native and asyncio runs (native first,
then asyncio, ``--rounds`` times) in one process, so both see the same warm-up and machine
state, and reports each run's wall time from the first send to the last result (opening the
sockets excluded, as in benchmarks/_netdiag_worker.py), the median of each, and
asyncio / native. Every run is bounded (``--deadline``) and the lab is always removed.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


async def _native(targets: list[Any], expiry: float) -> tuple[float, float, int]:
    from netdiag import Pinger

    async with Pinger(privileged=True) as pinger:
        c0, t0 = time.process_time(), time.perf_counter()
        replies = 0
        async for r in pinger.sweep(targets, count=1, interval=0.0, expiry=expiry):
            replies += r.kind == "reply"
        return time.perf_counter() - t0, time.process_time() - c0, replies


async def _asyncio(targets: list[Any], expiry: float) -> tuple[float, float, int]:
    from netdiag.aio import AsyncioPinger

    async with AsyncioPinger(privileged=True) as pinger:
        c0, t0 = time.process_time(), time.perf_counter()
        replies = 0
        async for r in pinger.sweep(targets, count=1, interval=0.0, expiry=expiry):
            replies += r.kind == "reply"
        return time.perf_counter() - t0, time.process_time() - c0, replies


async def _bounded(targets: list[Any], expiry: float, deadline: float) -> tuple[float, float, int]:
    import trio

    with trio.fail_after(deadline):
        return await _native(targets, expiry)


def worker(args: argparse.Namespace) -> None:
    import trio

    # Address objects, as benchmarks/_netdiag_worker.py passes them: parsing is not measured.
    targets = [ipaddress.ip_address(t) for t in Path(args.targets_file).read_text().split()]
    runs: dict[str, list[float]] = {"native": [], "asyncio": []}
    cpus: dict[str, list[float]] = {"native": [], "asyncio": []}
    replies: dict[str, list[int]] = {"native": [], "asyncio": []}
    for _ in range(args.rounds):
        for kind in ("native", "asyncio"):
            if kind == "native":
                wall, cpu, got = trio.run(_bounded, targets, args.expiry, args.deadline)
            else:
                aw = asyncio.wait_for(_asyncio(targets, args.expiry), args.deadline)
                wall, cpu, got = asyncio.run(aw)
            runs[kind].append(wall)
            cpus[kind].append(cpu)
            replies[kind].append(got)
    med = {k: statistics.median(v) for k, v in runs.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
    best = {k: min(v) for k, v in runs.items()}
    # Each round's two runs are back to back, so their ratio cancels slow drifts in load.
    paired = [a / n for a, n in zip(runs["asyncio"], runs["native"], strict=True)]
    print(
        json.dumps(
            {
                "targets": len(targets),
                "rounds": args.rounds,
                "wall": runs,
                "replies": replies,
                "cpu": cpus,
                "median": med,
                "cpu_median": cpu_med,
                "ratio": med["asyncio"] / med["native"],
                "best": best,
                "best_ratio": best["asyncio"] / best["native"],
                "paired_ratio_median": statistics.median(paired),
                "cpu_ratio": cpu_med["asyncio"] / cpu_med["native"],
            }
        )
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--expiry", type=float, default=2.0)
    p.add_argument("--deadline", type=float, default=60.0, help="cap per run, seconds")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--targets-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0

    sys.path.insert(0, str(HERE))
    from run import build_lab, configure_lab, target_list

    lab = build_lab(router=False)
    try:
        configure_lab(lab, router=False)
        tfile = HERE / "out" / "asyncio_sweep_targets.txt"
        tfile.parent.mkdir(exist_ok=True)
        tfile.write_text("\n".join(target_list(args.targets)) + "\n")
        argv = [
            str(Path(__file__).resolve()),
            "--worker",
            "--targets-file",
            str(tfile),
            "--rounds",
            str(args.rounds),
            "--expiry",
            str(args.expiry),
            "--deadline",
            str(args.deadline),
        ]
        budget = args.rounds * 2 * (args.deadline + 10)
        proc = lab.python("src", *argv, timeout=budget, env={"PYTHONPATH": str(ROOT)})
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        lab.close()
    n = result["targets"]
    print(f"{n} targets x 1, {result['rounds']} rounds each, median wall (first send to last)")
    for kind in ("native", "asyncio"):
        walls = ", ".join(f"{w:.3f}" for w in result["wall"][kind])
        med = result["median"][kind]
        cpu = result["cpu_median"][kind]
        print(
            f"  {kind:8} {med:.3f} s wall, {cpu:.3f} s CPU  ({n / med:,.0f} probes/s; "
            f"runs {walls}; replies {result['replies'][kind]})"
        )
    print(
        f"  asyncio / native: median wall {result['ratio']:.2f}, median CPU "
        f"{result['cpu_ratio']:.2f}, median of per-round wall ratios "
        f"{result['paired_ratio_median']:.2f}"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
