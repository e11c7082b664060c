"""The ``mtr -r`` style report of a :class:`~netdiag.trace.monitor.Snapshot`, as text or JSON.

One row per responder, grouped by hop: the hop's first responder carries the hop number, its
ECMP siblings follow, indented, with the same columns as mtr's report (``Loss% Snt Last Avg
Best Wrst StDev``, RTTs in milliseconds). ``Snt`` counts the probes *of the flows that reach
that responder* (see :mod:`netdiag.trace.mtrstats`), so siblings' ``Snt`` add up to the hop's
probes, and loss on one branch shows on that branch alone. Probes of flows never answered at a
hop are the ``???`` row, as in mtr. Route changes are listed under the table.

No terminal library is needed: this is what ``--report`` prints and what ``--live`` prints per
round when stdout is not a terminal.
"""

from __future__ import annotations

import socket
from typing import Any

from ..cli import fmt_ms
from .monitor import Snapshot
from .mtrstats import ResponderSnapshot

__all__ = ["COLUMNS", "report_dict", "report_lines", "responder_label", "row_cells"]

#: mtr's report columns (after the host column).
COLUMNS = ("Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev")
_WIDTHS = (6, 5, 7, 7, 7, 7, 7)


def responder_label(r: ResponderSnapshot, numeric: bool = True) -> str:
    """``addr``, ``name (addr)`` with names, ``???`` for probes nobody answered; a mark
    (``!X``) and ``(gone)`` for a responder that vanished are appended."""
    if r.addr is None:
        text = "???"
    elif r.name and not numeric:
        text = f"{r.name} ({r.addr})"
    else:
        text = str(r.addr)
    if r.mark:
        text += f" {r.mark}"
    if not r.active:
        text += " (gone)"
    return text


def _ms(x: float | None) -> str:
    return fmt_ms(x) if x is not None else "-"


def row_cells(r: ResponderSnapshot) -> tuple[str, ...]:
    """The seven column values of one row, as text."""
    return (
        f"{r.loss:.1f}%",
        str(r.sent),
        _ms(r.last),
        _ms(r.avg),
        _ms(r.best),
        _ms(r.worst),
        fmt_ms(r.stdev) if r.received > 1 else "-",
    )


def report_lines(
    snap: Snapshot, *, numeric: bool = True, host: str | None = None, start: str | None = None
) -> list[str]:
    """The report as lines of text (without newlines)."""
    labels: list[tuple[str, ResponderSnapshot]] = []
    for hop in snap.hops:
        for i, r in enumerate(hop.responders):
            prefix = f"{hop.ttl:3d}.|-- " if i == 0 else "    |   "
            labels.append((prefix + responder_label(r, numeric), r))
    width = max([30, *(len(text) for text, _ in labels)]) + 2
    head = f"HOST: {host or socket.gethostname()}"
    lines = []
    if start:
        lines.append(f"Start: {start}")
    what = snap.protocol if snap.protocol == "icmp" else f"{snap.protocol} port {snap.port}"
    lines.append(
        f"Target: {snap.target} ({what}), {snap.round} round{'s' if snap.round != 1 else ''}, "
        f"{snap.flows} flow{'s' if snap.flows != 1 else ''} per hop"
    )
    lines.append(
        head.ljust(width) + "".join(c.rjust(w) for c, w in zip(COLUMNS, _WIDTHS, strict=True))
    )
    for text, r in labels:
        cells = row_cells(r)
        lines.append(
            text.ljust(width) + "".join(c.rjust(w) for c, w in zip(cells, _WIDTHS, strict=True))
        )
    if snap.events:
        lines.append("Route changes:")
        lines += [f"  {e}" for e in snap.events]
    return lines


def report_dict(snap: Snapshot, host: str | None = None) -> dict[str, Any]:
    """The same data for ``--json``: the snapshot's :meth:`~Snapshot.as_dict` and the host."""
    return {"host": host or socket.gethostname(), **snap.as_dict()}
