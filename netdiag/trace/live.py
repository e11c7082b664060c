"""``python -m netdiag.trace --live``: the rounds as a full-screen view, as mtr shows them, but
with one row per responder -- ECMP siblings under their hop, each with its own loss.

Needs the ``tui`` extra (rich); imported only when stdout is a terminal. Redrawn after every
round and on every key: ``p`` pauses (no probes are sent while paused) and resumes, ``r``
resets the statistics, ``n`` shows names or addresses, ``q`` quits; Ctrl-C quits and prints
the report. Rows of responders that appeared in the last rounds are highlighted, vanished ones
are dimmed and marked ``(gone)``; the latest route changes are listed under the table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator, Sequence
from dataclasses import replace

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .. import cli
from .monitor import Monitor, Snapshot
from .report import COLUMNS, responder_label, row_cells
from .tracer import Tracer

__all__ = ["render", "run_live", "sparkline"]

_BARS = "▁▂▃▄▅▆▇█"
#: Rounds during which a responder that appeared stays highlighted.
HIGHLIGHT_ROUNDS = 5
SPARK_WIDTH = 20


def sparkline(history: Sequence[float | None], width: int = SPARK_WIDTH) -> Text:
    """The latest RTTs as bars scaled between the row's best and worst shown; a lost probe
    is a red ``·``."""
    shown = list(history)[-width:]
    values = [x for x in shown if x is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
    out = Text()
    for x in shown:
        if x is None:
            out.append("·", style="bold red")
        else:
            i = int((x - lo) / (hi - lo) * (len(_BARS) - 1)) if hi > lo else 0
            out.append(_BARS[i], style="green" if i < 5 else "yellow")
    return out


def render(snap: Snapshot, *, numeric: bool, paused: bool, host: str) -> Group:
    """The whole screen for one snapshot."""
    what = snap.protocol if snap.protocol == "icmp" else f"{snap.protocol} port {snap.port}"
    state = "  [PAUSED]" if paused else ""
    head = Text.assemble(
        ("netdiag.trace --live ", "bold"),
        f"{host} -> {snap.target} ({what})  round {snap.round}, {snap.flows} flows/hop",
        (state, "bold red"),
    )
    recent = {
        (e.ttl, a)
        for e in snap.events
        if snap.round - e.round < HIGHLIGHT_ROUNDS
        for a in e.appeared
    }
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("Hop", justify="right")
    table.add_column("Host")
    for c in COLUMNS:
        table.add_column(c, justify="right")
    table.add_column("Jttr", justify="right")
    table.add_column("Flows", justify="right")
    table.add_column("History")
    for hop in snap.hops:
        for i, r in enumerate(hop.responders):
            style = ""
            if not r.active:
                style = "dim"
            elif (hop.ttl, r.addr) in recent:
                style = "bold yellow"
            elif r.loss > 0:
                style = "red" if r.loss >= 50 else "magenta"
            label = ("" if i == 0 else " └ ") + responder_label(r, numeric)
            table.add_row(
                f"{hop.ttl}." if i == 0 else "",
                label,
                *row_cells(r),
                cli.fmt_ms(r.jitter) if r.received > 1 else "-",
                str(len(r.flows)),
                sparkline(r.history),
                style=style,
            )
    parts: list[Text | Table] = [head, Text(""), table, Text("")]
    if snap.events:
        parts.append(Text("Route changes:", style="bold"))
        parts += [Text(f"  {e}", style="yellow") for e in list(snap.events)[-5:]]
    parts.append(
        Text("Keys: p pause/resume  r reset statistics  n names/addresses  q quit", style="dim")
    )
    return Group(*parts)


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one at a time and are not echoed; Ctrl-C still raises SIGINT."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_live(
    tracer: Tracer, monitor: Monitor, args: argparse.Namespace, last: list[Snapshot]
) -> bool:
    """Run the rounds on screen until they end, ``q`` or Ctrl-C; return True for Ctrl-C."""
    import socket

    host = socket.gethostname()
    console = Console()
    numeric = bool(args.numeric)
    paused = False
    resume = trio.Event()
    fd = sys.stdin.fileno()

    def draw(live: Live) -> None:
        if last:
            live.update(render(last[0], numeric=numeric, paused=paused, host=host), refresh=True)

    with _cbreak(fd), Live(console=console, screen=True, auto_refresh=False) as live:
        live.update(Text(f"netdiag.trace --live: first round to {monitor.trace.addr} ..."))
        live.refresh()

        async def body() -> None:
            nonlocal numeric, paused, resume
            async with trio.open_nursery() as nursery:

                async def rounds() -> None:
                    async for snap in tracer.monitor(monitor):
                        last[:] = [snap]
                        draw(live)
                        while paused:
                            await resume.wait()
                    nursery.cancel_scope.cancel()

                async def keys() -> None:
                    nonlocal numeric, paused, resume
                    while True:
                        await trio.lowlevel.wait_readable(fd)
                        data = os.read(fd, 64)
                        if not data:  # stdin closed: no more keys, the rounds go on
                            return
                        for ch in data.decode(errors="ignore"):
                            if ch in "qQ":
                                nursery.cancel_scope.cancel()
                                return
                            if ch in "pP ":
                                paused = not paused
                                if not paused:
                                    resume.set()
                                    resume = trio.Event()
                            elif ch in "rR":
                                monitor.reset()
                                if last:
                                    last[:] = [replace(last[0], hops=monitor.stats.snapshot())]
                            elif ch in "nN":
                                numeric = not numeric
                        draw(live)

                nursery.start_soon(rounds)
                nursery.start_soon(keys)

        interrupted = await cli.until_interrupted(body)
    return interrupted
