"""``python -m netdiag.ping``: iputils-style ping of one or more hosts over one Pinger.

Flags follow iputils where they exist (``-c -i -W -w -s -t -Q -I -M -n -D -O -V -4 -6 -q``) and
keep iputils' meaning; ``-f`` (iputils' flood) is refused with a pointer to ``--file``, fping's
target file. ``--json`` prints one document with every result and the statistics, ``--csv``
prints ``ip,icmp_seq,elapsed_microseconds`` per reply (the Firezone ping challenge format).
Several hosts are pinged concurrently; the exit status is 0 when every host answered at least
once (with ``-w`` and ``-c``: ``-c`` replies), 1 otherwise, 2 on usage or permission errors.

A host given by name prints its replies as ``from name (addr)``, the name looked up in reverse
(``/etc/hosts`` first, as the C library does), like iputils; a numeric host, or ``-n``, prints
addresses only and looks nothing up. ``0`` and ``::`` ping this host (127.0.0.1 / ::1), as the
Linux kernel does for iputils.

Mass ping (``--file``) follows fping: a line that is not a usable target is reported with its
line number and skipped, ICMP errors are reported per target on stderr, a target that repeats
an earlier one (the same address) is reported and pinged once, and the summary names targets
as they were written.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from .. import cli
from ..errors import ResolveError
from ..resolve import literal, resolve, reverse
from ..sock import IPAddress
from . import Ping, Pinger, PingResult, PingStats

PROG = "netdiag.ping"


#: -c without -w: iputils' default; with -w (a deadline): until the deadline; mass ping: fping's 1
DEFAULT_COUNT, MASS_COUNT, UNLIMITED = 4, 1, 10**9


class _Flood(argparse.Action):
    """``-f`` is iputils' flood ping; netdiag does not flood, and must not silently take the
    flag for fping's target file either."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        cli.fail(
            PROG,
            "-f is iputils' flood ping, which netdiag does not do; "
            "to read targets from a file (fping's -f) use --file FILE",
        )


def parser() -> cli.Parser:
    p = cli.Parser(prog=PROG, description="Send ICMP echo requests (like iputils ping).")
    p.add_argument("hosts", nargs="*", metavar="host", help="host names or addresses")
    p.add_argument(
        "--file",
        dest="file",
        metavar="FILE",
        help="mass ping (fping style): read targets from FILE, one per line ('-': stdin); "
        "-c defaults to 1 here",
    )
    p.add_argument(
        "-f",
        nargs=0,
        action=_Flood,
        help="iputils' flood ping: not supported (exits 2); for a target file use --file",
    )
    p.add_argument(
        "--rate",
        type=cli.seconds(0, 1e7, "rate", allow_zero=False, unit="requests per second"),
        metavar="PPS",
        help="mass ping: send at most PPS echo requests per second in total, over all targets "
        "(default: as fast as the socket takes them); each target still gets -c requests "
        "(default 1), rounds -i apart",
    )
    cli.add_schedule(p, "requests", "for each reply")
    p.set_defaults(count=None)  # 4, unlimited with -w, 1 in mass ping: decided in main()
    for action in p._actions:
        if action.dest == "count":
            action.help = (
                "stop after COUNT requests (default 4; with -w: until the deadline; 1 with --file)"
            )
    p.add_argument(
        "-w",
        dest="deadline",
        type=cli.seconds(0, 10**6, "deadline", allow_zero=False),
        help="stop after DEADLINE seconds, however many requests were sent (iputils' -w)",
    )
    p.add_argument(
        "-s",
        dest="size",
        type=cli.int_range(0, 65507, "packet size"),
        default=56,
        help="payload bytes (default 56)",
    )
    p.add_argument("-t", dest="ttl", type=cli.int_range(1, 255, "ttl"), help="IP time to live")
    p.add_argument(
        "-Q", dest="tos", type=cli.int_range(0, 255, "tos"), help="type of service / traffic class"
    )
    p.add_argument(
        "-M",
        dest="pmtu",
        choices=("do", "dont", "want"),
        default="want",
        help="path MTU discovery: do (never fragment), dont, want (kernel default)",
    )
    p.add_argument("-I", dest="source", help="source address or interface name")
    p.add_argument(
        "-n", dest="numeric", action="store_true", help="numeric output: no reverse lookups"
    )
    p.add_argument(
        "-D", dest="timestamps", action="store_true", help="print a UNIX timestamp before each line"
    )
    p.add_argument(
        "-O",
        dest="outstanding",
        action="store_true",
        help="report requests that got no answer (when -W expires)",
    )
    cli.add_version(p)
    cli.add_privilege(p, "use ICMP datagram sockets (no CAP_NET_RAW; needs ping_group_range)")
    cli.add_family(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", dest="quiet", action="store_true", help="print only the summary")
    out.add_argument("--json", action="store_true", help="print one JSON document")
    out.add_argument("--csv", action="store_true", help="print ip,icmp_seq,elapsed_microseconds")
    return p


@dataclass
class HostRun:
    """One host's ping: its results and stats, kept outside trio so Ctrl-C can summarise."""

    host: str
    addr: IPAddress
    ping: Ping
    numeric: bool = True
    results: list[PingResult] = field(default_factory=list)
    stats: PingStats = field(default_factory=PingStats)
    started: float = 0.0
    ended: float = 0.0


def _line(r: PingResult, who: str | None = None, outstanding: bool = False) -> str | None:
    """The iputils line for one result; ``who`` names the responder (``name (addr)``).
    Timeouts print nothing, as in iputils, unless ``outstanding`` (``-O``)."""
    seq = f"icmp_seq={r.seq}"
    who = who or (str(r.responder) if r.responder is not None else None)
    if r.kind == "reply":
        rtt = f" time={cli.fmt_ms(r.rtt)} ms" if r.rtt is not None else ""
        ttl = f" ttl={r.ttl}" if r.ttl is not None else ""
        tail = " (DUP!)" if r.duplicate else " (late)" if r.late else ""
        return f"{r.size} bytes from {who}: {seq}{ttl}{rtt}{tail}"
    if r.kind == "error" and r.error is not None:
        src = f"From {who} " if who else ""
        return f"{src}{seq} {r.error.text}"
    if r.kind == "timeout" and outstanding:
        return f"no answer yet for {seq}"
    return None


class Names:
    """Reverse lookups for display, once per address (iputils' ``from name (addr)``)."""

    TIMEOUT = 1.0

    def __init__(self) -> None:
        self._cache: dict[IPAddress, str] = {}

    async def who(self, addr: IPAddress) -> str:
        if addr not in self._cache:
            name = None
            with trio.move_on_after(self.TIMEOUT):
                name = await reverse(addr)
            self._cache[addr] = f"{name} ({addr})" if name else str(addr)
        return self._cache[addr]


_NAME = re.compile(r"^[\w.:%\[\]-]+$")  # \w: letters of any script (IDN names), digits, _
_DOTTED = re.compile(r"^[0-9.]+$")


def _is_numeric(host: str) -> bool:
    """An address as written, including inet_aton's short forms (``0``, ``127.1``) that
    iputils takes as numeric: such a host prints addresses, with no reverse lookup."""
    try:
        literal(host)
    except ValueError:
        if not _DOTTED.match(host):
            return False
        try:
            socket.inet_aton(host)
        except OSError:
            return False
    return True


async def _target(host: str, version: int | None) -> IPAddress:
    """What ``host`` means to ping: ``0``, ``0.0.0.0`` and ``::`` are this host (the Linux kernel
    delivers them to loopback, which is what iputils shows); text that cannot be a host name is
    refused without asking a resolver."""
    if not _NAME.match(host) or (_DOTTED.match(host) and not _is_numeric(host)):
        raise ResolveError(f"{host}: not a host name or address")
    addr = await resolve(host, version)
    if addr.is_unspecified:
        addr = ipaddress.ip_address("::1" if addr.version == 6 else "127.0.0.1")
    return addr


def _stamp(line: str, timestamps: bool) -> str:
    """``-D``: iputils' ``[seconds.micros]`` prefix."""
    return f"[{time.time():.6f}] {line}" if timestamps else line


def _summary(run: HostRun) -> list[str]:
    s = run.stats
    elapsed = max(run.ended - run.started, 0.0) * 1000
    parts = [f"{s.sent} packets transmitted", f"{s.received} received"]
    if s.duplicates:
        parts.append(f"+{s.duplicates} duplicates")
    if s.errors:
        parts.append(f"+{s.errors} errors")
    loss = s.loss * 100
    parts.append(f"{loss:g}% packet loss")
    parts.append(f"time {elapsed:.0f}ms")
    lines = [f"--- {run.host} ping statistics ---", ", ".join(parts)]
    vals = cli.rtt_summary(s.rtt)
    if vals is not None:
        lines.append(f"rtt min/avg/max/mdev = {vals} ms")
    return lines


def _header(run: HostRun) -> str:
    p = run.ping
    if run.addr.version == 6:
        return f"PING {run.host}({run.addr}) {p.size} data bytes"
    return f"PING {run.host} ({run.addr}) {p.size}({p.size + 28}) bytes of data."


def _options(args: argparse.Namespace, df: bool | None) -> dict[str, Any]:
    """The probe options of a :class:`Ping` (or a sweep) as the command line gave them."""
    return {
        "count": args.count,
        "interval": args.interval,
        "expiry": args.timeout,
        "size": args.size,
        "ttl": args.ttl,
        "tos": args.tos,
        "df": df,
    }


def _read_targets(path: str) -> list[tuple[str, str]]:
    """Targets from a file, fping style, with where each came from (``FILE:LINE``): one per
    line, blank lines and '#' comments skipped."""
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path) as f:
                lines = f.read().splitlines()
    except OSError as e:
        cli.fail(PROG, f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        cli.fail(PROG, f"cannot read {path}: not a text file")
    name = "stdin" if path == "-" else path
    return [
        (f"{name}:{n}", t)
        for n, line in enumerate(lines, 1)
        if (t := line.split("#", 1)[0].strip())
    ]


def _mass(
    args: argparse.Namespace, targets: list[tuple[str, str]], version: int | None, df: bool | None
) -> int:
    """fping-style mass ping: one sweep over every target, a summary line per target."""
    text = not (args.json or args.csv)
    stats: dict[IPAddress, PingStats] = {}
    names: dict[IPAddress, str] = {}
    first: dict[IPAddress, str] = {}
    skipped = 0
    clock = {"start": 0.0, "end": 0.0}

    def warn(message: str) -> None:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)

    async def body() -> int:
        nonlocal skipped
        addrs = []
        for where, host in targets:
            try:
                addr = await _target(host, version)
            except ResolveError as e:  # fping: report the line, ping the rest
                warn(f"{where}: {e}; skipped")
                skipped += 1
                continue
            if addr in stats:
                again = "" if host == names[addr] else f" ({addr})"
                warn(f"{where}: {host}{again} repeats {names[addr]} ({first[addr]}); pinged once")
                continue
            stats[addr] = PingStats()
            names[addr] = host
            first[addr] = where
            addrs.append(addr)
        if not addrs:
            cli.fail(PROG, "no usable targets")
        # Validate every option before any packet leaves.
        Ping(addrs[0], **_options(args, df))
        async with Pinger(cli.bind_for(args.source), privileged=args.privileged) as pinger:
            pinger.prepare(Ping(addrs[0], df=df))
            cli.drop_privileges()

            async def sweep() -> None:
                clock["start"] = time.monotonic()
                results = pinger.sweep(addrs, rate=args.rate, **_options(args, df))
                try:
                    async for r in results:
                        stats[r.addr].add(r)
                        if args.csv and r.kind == "reply" and not r.duplicate and r.rtt is not None:
                            print(f"{r.addr},{r.seq},{round(r.rtt * 1e6)}")
                        elif r.kind == "error" and r.error is not None and not args.quiet:
                            # fping's per-target ICMP error line, on stderr
                            print(
                                f"ICMP {r.error.text} from {r.responder} for ICMP Echo sent "
                                f"to {names[r.addr]}"
                                + (f" ({r.addr})" if names[r.addr] != str(r.addr) else ""),
                                file=sys.stderr,
                                flush=True,
                            )
                finally:
                    # Interrupted: requests still waiting count as sent (and lost), as iputils.
                    results.close()
                    for r in results.unresolved():
                        stats[r.addr].add_pending(r)

            try:
                await _bounded(sweep, args.deadline)
            finally:
                clock["end"] = time.monotonic()
        sent = sum(s.sent for s in stats.values())
        received = sum(s.received for s in stats.values())
        alive = sum(1 for s in stats.values() if s.received)
        elapsed = clock["end"] - clock["start"]
        if args.json:
            cli.print_json(
                {
                    "targets": len(stats),
                    "alive": alive,
                    "skipped": skipped,
                    "sent": sent,
                    "received": received,
                    "elapsed": elapsed,
                    "pings": [
                        {"host": names[a], "addr": str(a), "stats": s.as_dict()}
                        for a, s in stats.items()
                    ],
                }
            )
        elif text:
            width = max(len(names[a]) for a in stats)
            if not args.quiet:
                for a, s in stats.items():
                    line = (
                        f"{names[a]:<{width}} : xmt/rcv/%loss = "
                        f"{s.sent}/{s.received}/{s.loss * 100:.0f}%"
                    )
                    vals = cli.rtt_summary(s.rtt, with_mdev=False)
                    if vals is not None:
                        line += f", min/avg/max = {vals}"
                    print(line)
            rate = sent / elapsed if elapsed > 0 else 0.0
            loss = (1 - received / sent) * 100 if sent else 0.0
            print(
                f"{len(stats)} targets, {alive} alive, {sent} sent, {received} received, "
                f"{loss:g}% loss, {elapsed * 1000:.0f} ms, {rate:.0f} requests/s"
            )
        if skipped:  # fping: 2 when some targets could not be used
            return cli.EXIT_USAGE
        return cli.EXIT_OK if alive == len(stats) else cli.EXIT_FAIL

    return cli.run(PROG, body)


async def _bounded(body: Any, deadline: float | None) -> None:
    """Run ``body`` until it ends, Ctrl-C, or ``-w``'s deadline -- whichever comes first."""

    async def run() -> None:
        with trio.move_on_after(deadline if deadline is not None else float("inf")):
            await body()

    await cli.until_interrupted(run)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    version = cli.family_of(args)
    bind = cli.bind_for(args.source)
    df = {"do": True, "dont": False, "want": None}[args.pmtu]
    text = not (args.json or args.csv)
    count_given = args.count is not None
    if args.file is not None:
        if not count_given:
            args.count = MASS_COUNT
        targets = [(f"argument {i}", h) for i, h in enumerate(args.hosts, 1)]
        targets += _read_targets(args.file)
        if not targets:
            cli.fail(PROG, f"no targets in {args.file}")
        return _mass(args, targets, version, df)
    if args.rate is not None:
        p.error("--rate needs --file (mass ping)")
    if not args.hosts:
        p.error("the following arguments are required: host")
    if not count_given:
        args.count = UNLIMITED if args.deadline is not None else DEFAULT_COUNT
    names = Names()

    def out(line: str) -> None:
        print(_stamp(line, args.timestamps), flush=True)

    async def body() -> int:
        # Resolve everything first: a bad host name aborts before a single packet leaves.
        runs: list[HostRun] = []
        for host in args.hosts:
            addr = await _target(host, version)
            ping = Ping(addr, **_options(args, df))
            numeric = args.numeric or _is_numeric(host)
            runs.append(HostRun(host, addr, ping, numeric))
        async with Pinger(bind, privileged=args.privileged) as pinger:
            for run in runs:
                pinger.prepare(run.ping)
            cli.drop_privileges()

            async def one(run: HostRun) -> None:
                run.started = time.monotonic()
                results = pinger.results(run.ping)
                try:
                    async for r in results:
                        run.results.append(r)
                        run.stats.add(r)
                        if args.csv and r.kind == "reply" and not r.duplicate and r.rtt is not None:
                            print(f"{run.addr},{r.seq},{round(r.rtt * 1e6)}", flush=True)
                        elif text and not args.quiet:
                            who = None
                            if not run.numeric and r.responder is not None:
                                who = await names.who(r.responder)
                            line = _line(r, who, args.outstanding)
                            if line:
                                out(line)
                finally:
                    run.ended = time.monotonic()
                    # Interrupted: requests still waiting count as sent (and lost), as iputils.
                    results.close()
                    for r in results.unresolved():
                        run.stats.add_pending(r)

            async def all_hosts() -> None:
                async with trio.open_nursery() as nursery:
                    for run in runs:
                        if text:
                            print(_header(run), flush=True)
                        nursery.start_soon(one, run)

            await _bounded(all_hosts, args.deadline)
        if args.json:
            cli.print_json(
                {
                    "pings": [
                        {
                            "host": run.host,
                            "addr": str(run.addr),
                            "results": [r.as_dict() for r in run.results],
                            "stats": run.stats.as_dict(),
                        }
                        for run in runs
                    ]
                }
            )
        elif text:
            for run in runs:
                print()
                print("\n".join(_summary(run)))
        if args.deadline is not None and count_given:
            # iputils: with -w and -c, fewer than COUNT replies by the deadline is a failure
            return cli.EXIT_OK if all(r.stats.received >= args.count for r in runs) else 1
        return cli.EXIT_OK if all(run.stats.received for run in runs) else cli.EXIT_FAIL

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
