"""``python -m netdiag.trace``: traceroute-style multipath trace of one host.

Flags follow traceroute where they exist: ``-I`` ICMP, ``-T`` TCP SYN, ``-U`` UDP (default),
``-p port``, ``-q N`` (N distinct flows per hop instead of the MDA rule), ``--mda [95|99]``,
``-m max_ttl``, ``-f first_ttl``, ``-w wait``, ``-N`` probes in flight, ``-n`` (no reverse DNS),
``-4``/``-6``, ``-s source`` (address or interface), ``--json`` (one document at the end: the
hops, every probe -- those past the destination too --, ``sent``, ``elapsed`` and the route as
a graph: nodes, links, per-flow paths, arrivals), ``--dot`` (the graph for Graphviz),
``--unprivileged`` / ``--privileged`` (datagram mode only / raw sockets only; by default raw
sockets if permitted, else datagram mode: UDP traces over ordinary UDP sockets, no CAP_NET_RAW).

Text output is one line per hop, as traceroute prints it; several responders at one hop share
the line, each followed by its RTTs and, with more than one flow, how many flows reached it. Like
traceroute, every probe's RTT is shown at the destination and with ``-q N``; at hops where the MDA
sent many flows, at most three per responder. Where some flows reached the destination and
others went on (branches of unequal length), the destination's entry says so:
``4  r4 ... [9 flows]  dst ... [2 flows, reached]``. With ``-T`` the destination says whether
the port answered SYN-ACK (``[open]``) or RST (``[closed]``), as tcptraceroute does. Exit status: 0
when the target answered, 1 when it did not, 2 on bad input or
missing privileges (one line on stderr).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .. import cli
from ..errors import PrivilegeError
from ..resolve import resolve
from . import Hop, Proto, Trace, Tracer
from .dot import to_dot
from .results import TraceResult

PROG = "netdiag.trace"
MAX_RTTS_SHOWN = 3


def parser() -> cli.Parser:
    p = cli.Parser(prog=PROG, description="Multipath traceroute (Paris flows, MDA).")
    p.add_argument("host", help="host name or address")
    proto = p.add_mutually_exclusive_group()
    proto.add_argument("-I", dest="proto", action="store_const", const="icmp", help="ICMP echo")
    proto.add_argument("-T", dest="proto", action="store_const", const="tcp", help="TCP SYN")
    proto.add_argument(
        "-U", dest="proto", action="store_const", const="udp", help="UDP (the default)"
    )
    p.add_argument(
        "-p",
        dest="port",
        type=cli.int_range(1, 65535, "port"),
        help="destination port (UDP 33434, TCP 80)",
    )
    flows = p.add_mutually_exclusive_group()
    flows.add_argument(
        "-q",
        dest="flows",
        type=cli.int_range(1, 1024, "probes"),
        help="send exactly this many distinct flows through every hop (no MDA)",
    )
    flows.add_argument(
        "--mda",
        nargs="?",
        const="95",
        default="95",
        choices=("95", "99"),
        help="MDA stopping rule confidence in percent (default 95)",
    )
    p.add_argument(
        "-m", dest="max_ttl", type=cli.int_range(1, 255, "max_ttl"), default=30, help="max TTL"
    )
    p.add_argument(
        "-f",
        dest="first_ttl",
        type=cli.int_range(1, 255, "first_ttl"),
        default=1,
        help="first TTL",
    )
    p.add_argument(
        "-w",
        dest="wait",
        type=cli.seconds(0, 3600, "wait", allow_zero=False),
        default=1.0,
        help="seconds to wait for each probe (default 1)",
    )
    p.add_argument(
        "-N",
        dest="window",
        type=cli.int_range(1, 65536, "probes in flight"),
        default=32,
        help="probes in flight at once (default 32)",
    )
    p.add_argument(
        "--minimize",
        choices=("probes", "rounds"),
        default="probes",
        help="probes (default): one probe finds the destination's distance first, none goes "
        "past it; rounds: look 8 TTLs ahead at once, one round trip less",
    )
    p.add_argument(
        "--first-arrival",
        action="store_true",
        help="settle the destination's hop on its first answer, as scamper's tracelb (fewer "
        "probes; a longer branch beside the destination may go unseen)",
    )
    p.add_argument("-n", dest="numeric", action="store_true", help="do not look up names")
    cli.add_privilege(
        p, "UDP over ordinary UDP sockets and their error queues (no CAP_NET_RAW; UDP only)"
    )
    cli.add_family(p)
    p.add_argument("-s", dest="source", help="source address or interface name")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON document")
    out.add_argument("--dot", action="store_true", help="print the route as a Graphviz DOT graph")
    mtr = p.add_argument_group("rounds, as mtr (netdiag/trace/monitor.py)")
    mode = mtr.add_mutually_exclusive_group()
    mode.add_argument(
        "-r",
        "--report",
        action="store_true",
        help="trace in rounds over fixed flows; print one mtr-style report per responder",
    )
    mode.add_argument(
        "--live",
        action="store_true",
        help="full-screen view refreshed every round (needs netdiag[tui]; report lines per "
        "round when stdout is not a terminal)",
    )
    mtr.add_argument(
        "-c",
        dest="count",
        type=cli.int_range(1, 2**31, "count"),
        help="rounds (--report: default 10; --live: until q or Ctrl-C)",
    )
    mtr.add_argument(
        "-i",
        dest="interval",
        type=cli.seconds(0.05, 86400, "interval"),
        default=1.0,
        help="seconds between rounds (default 1)",
    )
    mtr.add_argument(
        "--rediscover",
        type=cli.int_range(1, 2**31, "rediscover"),
        help="run the MDA discovery again every this many rounds (default: only after a "
        "route change)",
    )
    cli.add_version(p)
    return p


def tcp_state(hop: Hop, addr: object) -> str:
    """``-T`` at the destination: ``[open]`` if the port answered SYN-ACK, ``[closed]`` if RST
    (tcptraceroute's words); ``""`` otherwise."""
    kinds = {p.kind for p in hop.probes if p.addr == addr and p.destination}
    if "syn-ack" in kinds:
        return "[open]"
    if "rst" in kinds:
        return "[closed]"
    return ""


def hop_line(hop: Hop, numeric: bool, all_rtts: bool = False) -> str:
    """One traceroute line: `` 2  a  0.1 ms  0.1 ms  b  0.2 ms !X``. One RTT per probe at the
    destination and when ``all_rtts`` (``-q``), as traceroute; else at most three each."""
    parts = [f"{hop.ttl:2d}"]
    for r in hop.responders:
        who = str(r.addr) if numeric or not r.name else f"{r.name} ({r.addr})"
        state = tcp_state(hop, r.addr) if r.destination else ""
        parts.append(f"{who} {state}" if state else who)
        shown = r.rtts if r.destination or all_rtts else r.rtts[:MAX_RTTS_SHOWN]
        for rtt in shown:
            parts.append(f"{cli.fmt_ms(rtt)} ms")
        if r.mark:
            parts[-1] += f" {r.mark}"
        for stack in r.mpls:  # as traceroute -e and mtr show it
            parts.append("[MPLS: " + "/".join(str(e) for e in stack) + "]")
        n = len(r.flows)
        went_on = r.destination and len(r.ends) < len(hop.probes) and not hop.last
        if len(hop.probes) > 1 or went_on:
            parts.append(f"[{n} flow{'s' if n != 1 else ''}{', reached' if went_on else ''}]")
    if hop.timeouts:
        stars = hop.timeouts if all_rtts else min(hop.timeouts, MAX_RTTS_SHOWN)
        parts.append(" ".join("*" * stars))
    return "  ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.first_ttl > args.max_ttl:
        cli.fail(PROG, f"first TTL ({args.first_ttl}) exceeds max TTL ({args.max_ttl})")
    proto: Proto = args.proto or "udp"
    if proto == "icmp" and args.port is not None:
        cli.fail(PROG, "-p does not apply to ICMP (-I)")
    if args.count is not None and not (args.report or args.live):
        cli.fail(PROG, "-c applies to --report and --live")
    if args.rediscover is not None and not (args.report or args.live):
        cli.fail(PROG, "--rediscover applies to --report and --live")
    if args.dot and (args.report or args.live):
        cli.fail(PROG, "--dot draws one trace; it does not combine with --report or --live")
    version = cli.family_of(args)
    bind = cli.bind_for(args.source)
    if args.live and sys.stdout.isatty():
        from .monitor_cli import live_available

        if not live_available():
            cli.fail(PROG, "--live needs the terminal extra: pip install 'netdiag[tui]'")

    async def body() -> int:
        addr = await resolve(args.host, version)
        trace = Trace(
            addr,
            proto=proto,
            port=args.port,
            first_ttl=args.first_ttl,
            max_ttl=args.max_ttl,
            expiry=args.wait,
            flows=args.flows,
            confidence=int(args.mda) / 100,
            max_flows=max(64, args.flows or 0),
            window=args.window,
            dns=not args.numeric,
            dns_timeout=0.5,
            minimize=args.minimize,
            stop_at_first_arrival=args.first_arrival,
        )
        if args.report or args.live:
            from .monitor_cli import run_rounds

            return await run_rounds(args, trace, addr, bind)
        hops: list[Hop] = []
        whole: list[TraceResult] = []
        refused: PrivilegeError | None = None
        async with Tracer(bind, privileged=args.privileged) as tracer:
            try:
                tracer.prepare(trace)
            except PrivilegeError as e:  # -I/-T in datagram mode: raised outside the nursery
                refused = e
            else:
                await trace_with(tracer, trace, addr, hops, whole)
            late = tracer.late
            mode = tracer.mode
        if refused is not None:
            raise refused
        if whole:
            hops[:] = whole[0].hops
        reached = any(h.reached for h in hops)
        if args.dot and whole:
            sys.stdout.write(to_dot(whole[0], name=args.host))
        if args.json:
            doc = {
                "target": str(addr),
                "host": args.host,
                "protocol": proto,
                "port": trace.dport if proto != "icmp" else None,
                "mode": mode,
                "minimize": trace.minimize,
                "reached": reached,
                "late": late,
                "hops": [h.as_dict() for h in hops],
            }
            if whole:  # sent, elapsed, past, nodes, links, paths, arrivals
                doc |= {k: v for k, v in whole[0].as_dict().items() if k not in doc}
            cli.print_json(doc)
        return cli.EXIT_OK if reached else cli.EXIT_FAIL

    async def trace_with(
        tracer: Tracer, trace: Trace, addr: object, hops: list[Hop], whole: list[TraceResult]
    ) -> None:
        cli.drop_privileges()
        if args.json or args.dot:  # the whole route: collect() has the counters and the graph

            async def collect() -> None:
                whole.append(await tracer.collect(trace))

            await cli.until_interrupted(collect)
            return
        if not args.json:
            what = f"{proto} port {trace.dport}" if proto != "icmp" else "icmp"
            rule = f"{args.flows} flows/hop" if args.flows else f"MDA {args.mda}%"
            how = ", unprivileged (UDP sockets)" if tracer.mode == "datagram" else ""
            print(
                f"traceroute to {args.host} ({addr}), {args.max_ttl} hops max, {what}, {rule}{how}",
                flush=True,
            )

        async def run() -> None:
            async for hop in tracer.results(trace):
                hops.append(hop)
                if not args.json:
                    print(hop_line(hop, args.numeric, args.flows is not None), flush=True)

        await cli.until_interrupted(run)

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
