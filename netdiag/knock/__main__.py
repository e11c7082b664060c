"""``python -m netdiag.knock``: half-open TCP knock of one ``host:port``, hping3-style output.

The target is ``host:port``, ``[v6addr]:port`` or ``host port``. Flags follow ping where they
mean the same (``-c -i -W -I -4 -6 -q``); ``--json`` prints one document with every result and
the statistics. Each SYN prints one line (``port 443 open: seq=0 time=0.31 ms``, ``closed
(RST)``, ``filtered (timeout)``, ``unreachable (admin-prohibited)``), then a summary. The exit
status is 0 when the port answered open at least once, 1 when it never did, 2 on usage or
permission errors.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence

from .. import cli
from ..resolve import resolve
from ..sock import IPAddress
from . import Knock, Knocker, KnockResult, KnockStats

PROG = "netdiag.knock"

_BRACKETED = re.compile(r"^\[([^\]]+)\]:(.*)$")


def parser() -> cli.Parser:
    p = cli.Parser(
        prog=PROG,
        description="Measure TCP round trips with half-open SYN probes (never connects).",
    )
    p.add_argument(
        "target", nargs="+", metavar="host:port", help="host:port, [v6addr]:port, or host port"
    )
    cli.add_schedule(p, "probes", "for each answer before calling it filtered")
    p.add_argument("-I", dest="source", help="source address or interface name")
    cli.add_family(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", dest="quiet", action="store_true", help="print only the summary")
    out.add_argument("--json", action="store_true", help="print one JSON document")
    return p


def parse_target(words: Sequence[str]) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host port`` -> ``(host, port)``; ``ValueError``
    with a one-line message otherwise."""
    if len(words) == 2:
        host, port_text = words
    elif len(words) == 1:
        word = words[0]
        m = _BRACKETED.match(word)
        if m:
            host, port_text = m.group(1), m.group(2)
        elif word.count(":") == 1:
            host, port_text = word.split(":")
        else:
            # No colon, or a bare IPv6 address: which port is meant cannot be guessed.
            raise ValueError(f"missing port in {word!r}: use host:port, [v6addr]:port or host port")
    else:
        raise ValueError("expected host:port or host port, got " + " ".join(words))
    if not host:
        raise ValueError("missing host")
    if not port_text:
        raise ValueError(f"missing port for {host}")
    if not port_text.isdigit():
        raise ValueError(f"invalid port {port_text!r}: must be a number from 1 to 65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid port {port}: must be from 1 to 65535")
    return host, port


def line(r: KnockResult) -> str:
    """One hping3-like line per result, e.g. ``port 443 open: seq=0 time=0.31 ms``."""
    text = f"port {r.port} {r.label}"
    if r.responder is not None and r.responder != r.addr:
        text += f" from {r.responder}"
    text += f": seq={r.seq}"
    if r.rtt is not None:
        text += f" time={cli.fmt_ms(r.rtt)} ms"
    if r.duplicate:
        text += " (DUP!)"
    elif r.late:
        text += " (late)"
    return text


def summary(host: str, port: int, s: KnockStats, elapsed: float) -> list[str]:
    parts = [
        f"{s.sent} probes sent",
        f"{s.open} open",
        f"{s.closed} closed",
        f"{s.filtered} filtered",
    ]
    if s.errors:
        parts.append(f"{s.errors} ICMP errors")
    if s.pending:
        parts.append(f"{s.pending} unanswered (interrupted)")
    if s.duplicates:
        parts.append(f"+{s.duplicates} duplicates")
    if s.late:
        parts.append(f"+{s.late} late")
    parts.append(f"time {elapsed * 1000:.0f}ms")
    lines = [f"--- {host} port {port} knock statistics ---", ", ".join(parts)]
    r = s.rtt
    if r.count:
        vals = "/".join(f"{v * 1000:.3f}" for v in (r.min, r.avg, r.max, r.mdev))  # type: ignore[operator]
        lines.append(f"rtt min/avg/max/mdev = {vals} ms")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        host, port = parse_target(args.target)
    except ValueError as e:
        cli.fail(PROG, str(e))
    version = cli.family_of(args)
    bind = cli.bind_for(args.source)
    text = not args.json

    async def body() -> int:
        # Resolve first: an unknown host aborts before a single packet leaves.
        addr: IPAddress = await resolve(host, version)
        knock = Knock(addr, port, count=args.count, interval=args.interval, expiry=args.timeout)
        results: list[KnockResult] = []
        stats = KnockStats()
        async with Knocker(bind) as knocker:
            cli.drop_privileges()
            if text:
                print(f"KNOCK {host} ({addr}) port {port}: {args.count} SYN probes", flush=True)
            started = time.monotonic()

            async def run() -> None:
                stream = knocker.results(knock)
                try:
                    async for r in stream:
                        results.append(r)
                        stats.add(r)
                        if text and not args.quiet:
                            print(line(r), flush=True)
                finally:
                    # Interrupted: SYNs still waiting count as sent (and unanswered).
                    stream.close()
                    for r in stream.unresolved():
                        stats.add_pending(r)

            await cli.until_interrupted(run)
            elapsed = time.monotonic() - started
        if args.json:
            cli.print_json(
                {
                    "host": host,
                    "addr": str(addr),
                    "port": port,
                    "results": [r.as_dict() for r in results],
                    "stats": stats.as_dict(),
                }
            )
        else:
            print()
            print("\n".join(summary(host, port, stats, elapsed)))
        return cli.EXIT_OK if stats.open else cli.EXIT_FAIL

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
