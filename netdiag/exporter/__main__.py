"""``python -m netdiag.exporter`` (also ``netdiag exporter``): continuous diagnostics as a
Prometheus exporter.

Start-up order matters for privileges: parse and check the configuration (exit 2 with one line
on any error), bind the HTTP socket, open the shared Pinger/Tracer/Knocker (raw sockets if
permitted, else the unprivileged modes where they exist) and any socket the jobs need, *then*
drop root as the other CLIs do, and only then touch packets and HTTP requests.

Signals: SIGHUP reloads the configuration file (a bad one is logged, counted in
``netdiag_config_reloads_total{result="failure"}`` and the old one kept); SIGTERM and SIGINT
stop cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

from ..cli import (
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    add_version,
    drop_privileges,
    fail,
    run,
    seconds,
)
from .config import (
    DEFAULT_MAX_RATE,
    Config,
    ConfigError,
    Job,
    KnockOptions,
    Module,
    PingOptions,
    TraceOptions,
    load,
    parse_target,
)

PROG = "netdiag-exporter"
#: Default listen port: next to the exporters this one is compared with (blackbox 9115,
#: smokeping_prober 9374) and, as far as we know, not claimed by a common exporter.
DEFAULT_PORT = 9479
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
MISSING_DEPS = "the exporter needs its extra packages: pip install 'netdiag[exporter]'"

#: Modules /probe knows without a configuration (a config's [[module]] of the same name wins).
DEFAULT_MODULES = (
    Module("ping", "ping", PingOptions(count=3, interval=0.1, expiry=1.0)),
    Module("trace", "trace", TraceOptions()),
    Module("knock", "knock", KnockOptions(count=1, expiry=1.0)),
)

log = logging.getLogger("netdiag.exporter")


def _listen(text: str) -> tuple[str, int]:
    try:
        host, port = parse_target(text, with_port=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--listen: {e}") from None
    if not port:
        raise argparse.ArgumentTypeError(
            f"--listen must be ADDRESS:PORT with a port 1-65535, got {text!r}"
        )
    return host, port


def _knock_target(text: str) -> str:
    try:
        _, port = parse_target(text, with_port=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not port:
        raise argparse.ArgumentTypeError(f"--knock needs HOST:PORT, got {text!r}")
    return text


def _host(text: str) -> str:
    try:
        parse_target(text, with_port=False)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Run ping, multipath trace and TCP knock jobs "
        "continuously and serve their results as Prometheus metrics.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration (docs/exporter.md)")
    p.add_argument(
        "--ping",
        metavar="HOST",
        action="append",
        default=[],
        type=_host,
        help="ping HOST continuously (repeatable)",
    )
    p.add_argument(
        "--trace",
        metavar="HOST",
        action="append",
        default=[],
        type=_host,
        help="trace the route to HOST continuously (repeatable)",
    )
    p.add_argument(
        "--knock",
        metavar="HOST:PORT",
        action="append",
        default=[],
        type=_knock_target,
        help="knock on HOST:PORT continuously (repeatable)",
    )
    p.add_argument(
        "--every",
        type=seconds(0.01, 86400, "--every", allow_zero=False),
        default=10.0,
        help="seconds between rounds of the --ping/--trace/--knock jobs (default 10)",
    )
    p.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        type=_listen,
        default=DEFAULT_LISTEN,
        help=f"HTTP address (default {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--max-rate",
        type=seconds(0, 1e7, "--max-rate", allow_zero=False),
        default=None,
        help="probes per second for all jobs together "
        f"(default: the config's, else {DEFAULT_MAX_RATE:g})",
    )
    p.add_argument(
        "--ndjson", action="store_true", help="also print every result as one JSON line on stdout"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--unprivileged",
        dest="privileged",
        action="store_false",
        default=None,
        help="use unprivileged sockets only (ping, UDP traces)",
    )
    mode.add_argument(
        "--privileged", dest="privileged", action="store_true", help="use raw sockets only"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every round's problems")
    add_version(p)
    return p


def _flag_jobs(args: argparse.Namespace) -> list[Job]:
    jobs = []
    if args.ping:
        o = PingOptions(count=4, interval=0.25, expiry=1.0)
        jobs.append(
            Job("ping", "cli-ping", tuple((h, 0) for h in dict.fromkeys(args.ping)), args.every, o)
        )
    if args.trace:
        jobs.append(
            Job(
                "trace",
                "cli-trace",
                tuple((h, 0) for h in dict.fromkeys(args.trace)),
                args.every,
                TraceOptions(),
            )
        )
    if args.knock:
        targets = tuple(parse_target(t, with_port=True) for t in dict.fromkeys(args.knock))
        jobs.append(Job("knock", "cli-knock", targets, args.every, KnockOptions()))
    for job in jobs:
        if job.duration is not None and job.duration > job.every:
            raise ConfigError(
                f"--every: a {job.kind} round takes up to {job.duration:g} s, "
                f"longer than --every {job.every:g}"
            )
    return jobs


def make_config(args: argparse.Namespace) -> Config:
    """The file's configuration (if any) plus the flags' jobs and the default modules.
    Raises :class:`ConfigError`."""
    base = (
        load(args.config, args.max_rate)
        if args.config
        else Config(max_rate=args.max_rate or DEFAULT_MAX_RATE)
    )
    jobs = list(base.jobs)
    names = {j.name for j in jobs}
    for job in _flag_jobs(args):
        if job.name in names:
            raise ConfigError(
                f"{base.source}: {job.kind}[{job.name}].name: is reserved for the "
                f"--{job.kind} flags"
            )
        jobs.append(job)
    modules = list(base.modules)
    have = {m.name for m in modules}
    modules += [m for m in DEFAULT_MODULES if m.name not in have]
    label_names = tuple(sorted({k for j in jobs for k, _ in j.labels}))
    return Config(tuple(jobs), tuple(modules), base.max_rate, base.source, label_names)


def _bind(host: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        fail(PROG, f"cannot listen on {host}:{port}: {e.strerror or e}")
    return sock


async def _open(
    stack: AsyncExitStack, cls: Any, kind: str, unavailable: dict[str, str], **kw: Any
) -> Any:
    from ..errors import PrivilegeError

    try:
        return await stack.enter_async_context(cls(**kw))
    except (PrivilegeError, OSError) as e:
        unavailable[kind] = str(e)
        return None


async def _main(args: argparse.Namespace, config: Config, sock: socket.socket) -> int:
    import trio
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        PlatformCollector,
        ProcessCollector,
    )

    from ..knock import Knocker
    from ..ping import Pinger
    from ..trace import Tracer
    from .http import make_app, serve
    from .metrics import ProcessMetrics
    from .runner import Runner

    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    reloads = Counter(
        "netdiag_config_reloads_total",
        "Configuration reloads (SIGHUP) by result.",
        ["result"],
        registry=registry,
    )
    reloads.labels("success")
    reloads.labels("failure")
    last_ok = Gauge(
        "netdiag_config_last_reload_successful",
        "1 if the last configuration load succeeded.",
        registry=registry,
    )
    last_ok.set(1)
    unavailable: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        priv = args.privileged
        pinger = await _open(stack, Pinger, "ping", unavailable, privileged=priv)
        tracer = await _open(stack, Tracer, "trace", unavailable, privileged=priv)
        knocker = None
        if priv is False:
            unavailable["knock"] = "knocks need raw sockets (--unprivileged was given)"
        else:
            knocker = await _open(stack, Knocker, "knock", unavailable)
        for kind, why in unavailable.items():
            log.warning("%s is unavailable: %s", kind, why)
        runner = Runner(
            registry,
            pinger,
            tracer,
            knocker,
            unavailable=unavailable,
            ndjson=sys.stdout if args.ndjson else None,
        )
        registry.register(ProcessMetrics(runner))
        runner.apply(config)  # opens the sockets the jobs need (IPv4 DF siblings)
        drop_privileges()
        ready = False
        shutdown = trio.Event()
        app = make_app(registry, runner, lambda: ready)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            binds = await nursery.start(serve, app, sock, shutdown)
            ready = True
            log.info(
                "serving on %s with %d jobs (%d targets)",
                ", ".join(binds),
                len(config.jobs),
                len(runner.scheduler),
            )
            with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
                async for signum in sigs:
                    if signum != signal.SIGHUP:
                        log.info("stopping (%s)", signal.Signals(signum).name)
                        break
                    try:
                        new = make_config(args)
                    except ConfigError as e:
                        reloads.labels("failure").inc()
                        last_ok.set(0)
                        log.error("reload failed, keeping the running configuration: %s", e)
                        continue
                    runner.apply(new)
                    reloads.labels("success").inc()
                    last_ok.set(1)
                    log.info("reloaded: %d jobs (%d targets)", len(new.jobs), len(runner.scheduler))
            ready = False
            shutdown.set()
            with trio.move_on_after(2):
                while nursery.child_tasks and len(nursery.child_tasks) > 1:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        import hypercorn  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError:
        fail(PROG, MISSING_DEPS)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s netdiag-exporter %(levelname)s %(message)s",
    )
    logging.getLogger("hypercorn").setLevel(logging.WARNING)
    if not args.config and not (args.ping or args.trace or args.knock):
        fail(PROG, "nothing to do: give --config FILE or --ping/--trace/--knock targets")
    try:
        config = make_config(args)
    except ConfigError as e:
        fail(PROG, str(e), EXIT_USAGE)
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # no *_created series: half the samples, no use for them here
    sock = _bind(*args.listen)
    return run(PROG, lambda: _main(args, config, sock))


if __name__ == "__main__":
    sys.exit(main())
