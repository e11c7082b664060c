"""``python -m netdiag.knock``: half-open TCP knock of ``host:port`` targets, hping3-style output.

A target is ``host:port`` or ``[v6addr]:port``; several are knocked concurrently over one Knocker,
each with its own summary, as ping does for several hosts. Two words whose second is all digits
(``host 443``) are one target, ``host port``. With hping3's ``-p PORT`` the words are hosts (a
bare IPv6 address included) knocked on PORT; a ``host:port`` word keeps its own port. Flags follow
ping where they mean the same (``-c -i -W -I -4 -6 -q -V``); ``--json`` prints one document with
every result and the statistics (one target: that target's document; several: ``{"knocks":
[...]}``). Each SYN prints one line (``port 443 open: seq=1 time=0.31 ms``, ``closed (RST)``,
``filtered (timeout)``, ``unreachable (admin-prohibited)``; prefixed with the host when there are
several targets), then a summary per target. The exit status is 0 when every target's port
answered open at least once, 1 when one never did, 2 on usage or permission errors.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

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
        "target",
        nargs="+",
        metavar="host:port",
        help="host:port or [v6addr]:port, one or more (knocked concurrently); or host port; "
        "or hosts with -p",
    )
    p.add_argument(
        "-p",
        dest="port",
        type=cli.int_range(1, 65535, "port"),
        help="destination port for targets given without one (hping3's -p)",
    )
    cli.add_schedule(p, "probes", "for each answer before calling it filtered")
    p.add_argument("-I", dest="source", help="source address or interface name")
    cli.add_family(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", dest="quiet", action="store_true", help="print only the summary")
    out.add_argument("--json", action="store_true", help="print one JSON document")
    cli.add_version(p)
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


def parse_targets(words: Sequence[str], port: int | None = None) -> list[tuple[str, int]]:
    """The command line's targets: ``host:port`` words, ``host port`` (exactly two words, the
    second all digits), or with ``-p`` hosts (``port`` for those without their own)."""
    if port is not None:
        out = []
        for word in words:
            if _BRACKETED.match(word) or word.count(":") == 1:
                out.append(parse_target([word]))
            else:  # a name, an IPv4 address or a bare IPv6 address: -p's port
                out.append(parse_target([word.strip("[]"), str(port)]))
        return out
    if len(words) == 2 and words[1].isdigit() and not words[0].isdigit():
        return [parse_target(words)]
    return [parse_target([w]) for w in words]


def line(r: KnockResult, host: str | None = None) -> str:
    """One hping3-like line per result, e.g. ``port 443 open: seq=1 time=0.31 ms``; ``host``
    leads the line when several targets share the output."""
    text = f"port {r.port} {r.label}"
    if host is not None:
        text = f"{host} {text}"
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
    vals = cli.rtt_summary(s.rtt)
    if vals is not None:
        lines.append(f"rtt min/avg/max/mdev = {vals} ms")
    return lines


@dataclass
class Target:
    """One target's knock: its results and stats, kept outside trio so Ctrl-C can summarise."""

    host: str
    port: int
    addr: IPAddress | None = None
    results: list[KnockResult] = field(default_factory=list)
    stats: KnockStats = field(default_factory=KnockStats)
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "addr": str(self.addr),
            "port": self.port,
            "results": [r.as_dict() for r in self.results],
            "stats": self.stats.as_dict(),
        }


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        targets = [Target(h, p) for h, p in parse_targets(args.target, args.port)]
    except ValueError as e:
        cli.fail(PROG, str(e))
    version = cli.family_of(args)
    bind = cli.bind_for(args.source)
    text = not args.json
    several = len(targets) > 1

    async def body() -> int:
        # Resolve first: an unknown host aborts before a single packet leaves.
        knocks = []
        for t in targets:
            t.addr = await resolve(t.host, version)
            knocks.append(
                Knock(t.addr, t.port, count=args.count, interval=args.interval, expiry=args.timeout)
            )
        async with Knocker(bind) as knocker:
            cli.drop_privileges()

            async def one(t: Target, knock: Knock) -> None:
                started = time.monotonic()
                stream = knocker.results(knock)
                try:
                    async for r in stream:
                        t.results.append(r)
                        t.stats.add(r)
                        if text and not args.quiet:
                            print(line(r, t.host if several else None), flush=True)
                finally:
                    t.elapsed = time.monotonic() - started
                    # Interrupted: SYNs still waiting count as sent (and unanswered).
                    stream.close()
                    for r in stream.unresolved():
                        t.stats.add_pending(r)

            async def run() -> None:
                async with trio.open_nursery() as nursery:
                    for t, knock in zip(targets, knocks, strict=True):
                        if text:
                            print(
                                f"KNOCK {t.host} ({t.addr}) port {t.port}: {args.count} SYN probes",
                                flush=True,
                            )
                        nursery.start_soon(one, t, knock)

            await cli.until_interrupted(run)
        if args.json:
            if several:
                cli.print_json({"knocks": [t.as_dict() for t in targets]})
            else:
                cli.print_json(targets[0].as_dict())
        else:
            for t in targets:
                print()
                print("\n".join(summary(t.host, t.port, t.stats, t.elapsed)))
        return cli.EXIT_OK if all(t.stats.open for t in targets) else cli.EXIT_FAIL

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
