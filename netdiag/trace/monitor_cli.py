"""``python -m netdiag.trace --report`` / ``--live``: the trace in rounds, as mtr runs it.

``--report`` (``-r``) runs ``-c`` rounds (default 10) and prints one report
(:mod:`netdiag.trace.report`); ``--json`` prints the same data as one document. ``--live`` shows
a full-screen view refreshed every round (:mod:`netdiag.trace.live`, needs the ``tui`` extra);
when stdout is not a terminal it prints a report per round instead. Ctrl-C in any mode stops
the rounds and prints the report of what was measured, as mtr does.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from datetime import UTC, datetime

from .. import cli
from ..errors import PrivilegeError
from ..sock import Bind, IPAddress
from .monitor import Monitor, Snapshot
from .options import Trace
from .report import report_dict, report_lines
from .tracer import Tracer

__all__ = ["live_available", "run_rounds"]


def live_available() -> bool:
    """Is the ``tui`` extra (rich) installed?"""
    return importlib.util.find_spec("rich") is not None


def print_report(snap: Snapshot, args: argparse.Namespace, start: str) -> None:
    if args.json:
        cli.print_json(report_dict(snap))
    else:
        print("\n".join(report_lines(snap, numeric=args.numeric, start=start)), flush=True)


async def run_rounds(
    args: argparse.Namespace, trace: Trace, addr: IPAddress, bind: Bind | None
) -> int:
    """Run the rounds the flags ask for; return the exit status (0: the target answered in
    the last round, 1: it did not, or no round finished)."""
    live = args.live and sys.stdout.isatty()
    rounds = args.count if args.count is not None else (10 if args.report else None)
    monitor = Monitor(trace, rounds=rounds, every=args.interval, rediscover=args.rediscover)
    start = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z")
    last: list[Snapshot] = []
    refused: PrivilegeError | None = None
    interrupted = False
    async with Tracer(bind, privileged=args.privileged) as tracer:
        try:
            tracer.prepare(trace)
        except PrivilegeError as e:  # raised outside the Tracer's nursery, as the trace CLI does
            refused = e
        else:
            cli.drop_privileges()
            if live:
                from .live import run_live

                interrupted = await run_live(tracer, monitor, args, last)
            else:

                async def body() -> None:
                    async for snap in tracer.monitor(monitor):
                        last[:] = [snap]
                        if args.live:  # not a terminal: a report per round
                            print_report(snap, args, start)
                            if not args.json:
                                print(flush=True)

                interrupted = await cli.until_interrupted(body)
    if refused is not None:
        raise refused
    if last and (args.report or interrupted):
        print_report(last[0], args, start)
    return cli.EXIT_OK if last and last[0].reached else cli.EXIT_FAIL
