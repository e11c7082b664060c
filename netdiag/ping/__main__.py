"""``python -m netdiag.ping``: iputils-style ping of one or more hosts over one Pinger.

Flags follow iputils where they exist (``-c -i -W -s -t -Q -I -M -4 -6 -q``); ``--json`` prints
one document with every result and the statistics, ``--csv`` prints ``ip,icmp_seq,
elapsed_microseconds`` per reply (the Firezone ping challenge format). Several hosts are pinged
concurrently; the exit status is 0 when every host answered at least once, 1 otherwise, 2 on
usage or permission errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from .. import cli
from ..resolve import resolve
from ..sock import IPAddress
from . import Ping, Pinger, PingResult, PingStats

PROG = "netdiag.ping"


def parser() -> cli.Parser:
    p = cli.Parser(prog=PROG, description="Send ICMP echo requests (like iputils ping).")
    p.add_argument("hosts", nargs="*", metavar="host", help="host names or addresses")
    p.add_argument(
        "-f",
        dest="file",
        metavar="FILE",
        help="mass ping (fping style): read targets from FILE, one per line ('-': stdin)",
    )
    p.add_argument(
        "--rate",
        type=cli.seconds(0, 1e7, "rate", allow_zero=False),
        metavar="PPS",
        help="mass ping: at most PPS requests per second (default: as fast as possible)",
    )
    cli.add_schedule(p, "requests", "for each reply")
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
    results: list[PingResult] = field(default_factory=list)
    stats: PingStats = field(default_factory=PingStats)
    started: float = 0.0
    ended: float = 0.0


def _line(r: PingResult) -> str | None:
    """The iputils line for one result (timeouts print nothing, as in iputils)."""
    seq = f"icmp_seq={r.seq}"
    if r.kind == "reply":
        rtt = f" time={cli.fmt_ms(r.rtt)} ms" if r.rtt is not None else ""
        ttl = f" ttl={r.ttl}" if r.ttl is not None else ""
        tail = " (DUP!)" if r.duplicate else " (late)" if r.late else ""
        return f"{r.size} bytes from {r.responder}: {seq}{ttl}{rtt}{tail}"
    if r.kind == "error" and r.error is not None:
        who = f"From {r.responder} " if r.responder else ""
        return f"{who}{seq} {r.error.text}"
    return None


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
    r = s.rtt
    if r.count:
        vals = "/".join(f"{v * 1000:.3f}" for v in (r.min, r.avg, r.max, r.mdev))  # type: ignore[operator]
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


def _read_targets(path: str) -> list[str]:
    """Targets from a file, fping style: one per line, blank lines and '#' comments skipped."""
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path) as f:
                lines = f.read().splitlines()
    except OSError as e:
        cli.fail(PROG, f"cannot read {path}: {e.strerror}")
    return [t for line in lines if (t := line.split("#", 1)[0].strip())]


def _mass(args: argparse.Namespace, hosts: list[str], version: int | None, df: bool | None) -> int:
    """fping-style mass ping: one sweep over every target, a summary line per target."""
    text = not (args.json or args.csv)
    stats: dict[IPAddress, PingStats] = {}
    names: dict[IPAddress, str] = {}
    clock = {"start": 0.0, "end": 0.0}

    async def body() -> int:
        addrs = []
        for host in hosts:
            addr = await resolve(host, version)
            if addr not in stats:
                stats[addr] = PingStats()
                names[addr] = host
                addrs.append(addr)
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
                finally:
                    # Interrupted: requests still waiting count as sent (and lost), as iputils.
                    results.close()
                    for r in results.unresolved():
                        stats[r.addr].add_pending(r)

            try:
                await cli.until_interrupted(sweep)
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
            width = max(len(str(a)) for a in stats)
            if not args.quiet:
                for a, s in stats.items():
                    line = (
                        f"{a!s:<{width}} : xmt/rcv/%loss = "
                        f"{s.sent}/{s.received}/{s.loss * 100:.0f}%"
                    )
                    r = s.rtt
                    if r.min is not None and r.avg is not None and r.max is not None:
                        vals = "/".join(f"{v * 1000:.3f}" for v in (r.min, r.avg, r.max))
                        line += f", min/avg/max = {vals}"
                    print(line)
            rate = sent / elapsed if elapsed > 0 else 0.0
            loss = (1 - received / sent) * 100 if sent else 0.0
            print(
                f"{len(stats)} targets, {alive} alive, {sent} sent, {received} received, "
                f"{loss:g}% loss, {elapsed * 1000:.0f} ms, {rate:.0f} requests/s"
            )
        return cli.EXIT_OK if alive == len(stats) else cli.EXIT_FAIL

    return cli.run(PROG, body)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    version = cli.family_of(args)
    bind = cli.bind_for(args.source)
    df = {"do": True, "dont": False, "want": None}[args.pmtu]
    text = not (args.json or args.csv)
    if args.file is not None:
        hosts = list(args.hosts) + _read_targets(args.file)
        if not hosts:
            cli.fail(PROG, f"no targets in {args.file}")
        return _mass(args, hosts, version, df)
    if args.rate is not None:
        p.error("--rate needs -f (mass ping)")
    if not args.hosts:
        p.error("the following arguments are required: host")

    async def body() -> int:
        # Resolve everything first: a bad host name aborts before a single packet leaves.
        runs: list[HostRun] = []
        for host in args.hosts:
            addr = await resolve(host, version)
            ping = Ping(addr, **_options(args, df))
            runs.append(HostRun(host, addr, ping))
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
                            line = _line(r)
                            if line:
                                print(line, flush=True)
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

            await cli.until_interrupted(all_hosts)
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
        return cli.EXIT_OK if all(run.stats.received for run in runs) else cli.EXIT_FAIL

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
