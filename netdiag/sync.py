"""netdiag for synchronous code: one function call per diagnostic, no event loop to manage.

::

    from netdiag import sync

    report = sync.ping("127.0.0.1", count=4, interval=0.2)
    print(report.received, report.loss, report.rtt.avg)   # a PingStats, plus .results

Each call opens its own :class:`~netdiag.Pinger` / :class:`~netdiag.Tracer` /
:class:`~netdiag.Knocker` in its own ``trio.run``, runs the diagnostic to the end and closes it,
so it works from scripts and from any thread. Where an event loop is already running in the
calling thread (Jupyter, an asyncio or trio program calling a plain function), ``trio.run``
cannot start there, so the call runs in a fresh worker thread and blocks the caller until it is
done -- that is what a synchronous call means; Ctrl-C (KeyboardInterrupt) still stops it. The
worker is a new thread, not a pool's, so it is in the caller's network namespace. Inside async
code, prefer :mod:`netdiag.aio` (asyncio) or the trio objects, which do not block the loop.

Parameter names and defaults are the ones of :class:`~netdiag.Ping`, :class:`~netdiag.Trace`
and :class:`~netdiag.Knock` (and of :meth:`Pinger.sweep <netdiag.Pinger.sweep>`), plus the
object's own (``bind``, ``privileged``). Parameters are checked before any socket is opened,
and errors are raised as themselves (``ValueError``, :class:`~netdiag.ResolveError`,
:class:`~netdiag.PrivilegeError`...), never wrapped in an ``ExceptionGroup``.

Each call pays for opening and closing an object (sockets, receive tasks, a trio run): for many
calls, or concurrent ones, keep one object open in trio or asyncio instead, or use
:func:`sweep` for many targets.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import trio

from .knock import Knock, Knocker, KnockResult, KnockStats
from .ping import Ping, Pinger, PingResult, PingStats
from .resolve import resolve
from .sock import Bind, IPAddress
from .trace import Minimize, Proto, Trace, Tracer, TraceResult

__all__ = ["KnockReport", "PingReport", "knock", "ping", "sweep", "trace"]

T = TypeVar("T")
D = TypeVar("D", Pinger, Tracer, Knocker)


@dataclass(slots=True)
class PingReport(PingStats):
    """A whole ping: its :class:`~netdiag.PingStats` (``sent``, ``received``, ``loss``,
    ``rtt.avg``, ``rtt.p99``...), the target's address and every :class:`~netdiag.PingResult`
    in arrival order."""

    addr: IPAddress | None = None
    results: list[PingResult] = field(default_factory=list, repr=False)

    @classmethod
    def build(cls, addr: IPAddress, results: list[PingResult]) -> PingReport:
        """The report of a whole ping of ``addr``: its statistics and its results."""
        report = cls.of(results)
        report.addr = addr
        report.results = results
        return report

    def as_dict(self) -> dict[str, Any]:
        return {
            "addr": str(self.addr) if self.addr is not None else None,
            **PingStats.as_dict(self),
            "results": [r.as_dict() for r in self.results],
        }


@dataclass(slots=True)
class KnockReport(KnockStats):
    """A whole knock: its :class:`~netdiag.KnockStats` (``open``, ``closed``, ``filtered``,
    ``loss``, ``rtt``...), the target and port, and every :class:`~netdiag.KnockResult`."""

    addr: IPAddress | None = None
    port: int = 0
    results: list[KnockResult] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "addr": str(self.addr) if self.addr is not None else None,
            "port": self.port,
            **KnockStats.as_dict(self),
            "results": [r.as_dict() for r in self.results],
        }


# -- running trio from synchronous code ------------------------------------------------------


def _loop_running() -> bool:
    """True when this thread already runs an event loop, so ``trio.run`` cannot start here.
    asyncio is only asked if something imported it: this module must not import it."""
    if trio.lowlevel.in_trio_run():
        return True
    aio = sys.modules.get("asyncio")
    if aio is None:
        return False
    try:
        aio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run`` ``fn`` here, or in a new thread if this one already runs a loop."""
    if not _loop_running():
        return trio.run(fn)
    return _run_in_thread(fn)


def _run_in_thread(fn: Callable[[], Awaitable[T]]) -> T:
    done: list[T] = []
    failed: list[BaseException] = []
    started: list[tuple[trio.lowlevel.TrioToken, trio.CancelScope]] = []
    interrupted = threading.Event()

    async def main() -> T:
        with trio.CancelScope() as scope:
            started.append((trio.lowlevel.current_trio_token(), scope))
            if interrupted.is_set():
                scope.cancel()
            return await fn()
        raise KeyboardInterrupt  # cancelled by Ctrl-C in the calling thread

    def work() -> None:
        try:
            done.append(trio.run(main))
        except BaseException as e:
            failed.append(e)
        finally:
            finished.set()

    # Waiting on an Event, not Thread.join: a KeyboardInterrupt that interrupts join() can leave
    # the Thread marked stopped while it still runs (CPython's bpo-45274 handling), and the
    # second join would then return at once.
    finished = threading.Event()
    worker = threading.Thread(target=work, name="netdiag.sync", daemon=True)
    worker.start()
    try:
        finished.wait()
    except KeyboardInterrupt:
        # Stop the diagnostic (its sockets close), then let the interrupt propagate.
        interrupted.set()
        if started:
            token, scope = started[0]
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)
        finished.wait()
        worker.join()
        raise
    worker.join()
    if failed:
        raise failed[0]
    return done[0]


async def _use(obj: D, fn: Callable[[D], Awaitable[T]]) -> T:
    """``await fn(obj)`` inside ``async with obj``, its exception re-raised after the object
    has closed: it arrives as itself whatever the object's exit does with exceptions."""
    error: Exception | None = None
    async with obj:
        try:
            return await fn(obj)
        except Exception as e:
            error = e
    assert error is not None
    raise error


# -- the diagnostics --------------------------------------------------------------------------


def ping(
    addr: IPAddress | str,
    *,
    count: int = 4,
    interval: float = 1.0,
    expiry: float = 2.0,
    size: int = 56,
    ttl: int | None = None,
    tos: int | None = None,
    df: bool | None = None,
    bind: Bind | None = None,
    privileged: bool | None = None,
) -> PingReport:
    """Ping ``addr`` ``count`` times, ``interval`` seconds apart, each request waiting
    ``expiry`` seconds for its reply (see :class:`~netdiag.Ping`); return the summary with
    every result. ``privileged=None`` uses raw sockets if permitted, else ICMP datagram
    sockets (see :class:`~netdiag.Pinger`)."""
    spec = Ping(addr, count, interval, expiry, size, ttl, tos, df)
    pinger = Pinger(bind, privileged=privileged)

    async def run(p: Pinger) -> PingReport:
        target = await resolve(spec.addr)  # once: the report names what was pinged
        return PingReport.build(target, await p.collect(replace(spec, addr=target)))

    return _run(lambda: _use(pinger, run))


def sweep(
    targets: Iterable[IPAddress | str],
    *,
    count: int = 1,
    interval: float = 1.0,
    expiry: float = 2.0,
    size: int = 56,
    ttl: int | None = None,
    tos: int | None = None,
    df: bool | None = None,
    rate: float | None = None,
    bind: Bind | None = None,
    privileged: bool | None = None,
) -> list[PingReport]:
    """Ping many targets from one sender, fping style (see :meth:`netdiag.Pinger.sweep`):
    round ``i`` sends one request to every target; ``rate`` caps requests per second. Returns
    one report per distinct address, in the order the targets were given (an address given
    twice is pinged once)."""
    targets = list(targets)
    Ping("127.0.0.1", count, interval, expiry, size, ttl, tos, df)  # check the numbers now
    pinger = Pinger(bind, privileged=privileged)

    async def run(p: Pinger) -> list[PingReport]:
        # A target given twice (or two names of one address) is pinged once.
        by_addr: dict[IPAddress, list[PingResult]] = {await resolve(t): [] for t in targets}
        addrs = list(by_addr)
        async for r in p.sweep(
            addrs,
            count=count,
            interval=interval,
            expiry=expiry,
            size=size,
            ttl=ttl,
            tos=tos,
            df=df,
            rate=rate,
        ):
            by_addr[r.addr].append(r)
        return [PingReport.build(a, rs) for a, rs in by_addr.items()]

    return _run(lambda: _use(pinger, run))


def trace(
    addr: IPAddress | str,
    *,
    proto: Proto = "udp",
    port: int | None = None,
    first_ttl: int = 1,
    max_ttl: int = 30,
    expiry: float = 1.0,
    flows: int | None = None,
    confidence: float = 0.95,
    max_flows: int = 64,
    window: int = 32,
    dns: bool = False,
    dns_timeout: float = 1.0,
    reach: int = 8,
    minimize: Minimize = "probes",
    stop_at_first_arrival: bool = False,
    bind: Bind | None = None,
    privileged: bool | None = None,
) -> TraceResult:
    """Trace the route to ``addr`` (Paris flows + MDA; see :class:`~netdiag.Trace`) and return
    it whole. ``privileged=None`` uses raw sockets if permitted, else UDP datagram mode (UDP
    traces only; see :class:`~netdiag.Tracer`)."""
    spec = Trace(
        addr,
        proto,
        port,
        first_ttl,
        max_ttl,
        expiry,
        flows,
        confidence,
        max_flows,
        window,
        dns,
        dns_timeout,
        reach,
        minimize,
        stop_at_first_arrival,
    )
    tracer = Tracer(bind, privileged=privileged)
    return _run(lambda: _use(tracer, lambda t: t.collect(spec)))


def knock(
    addr: IPAddress | str,
    port: int,
    *,
    count: int = 4,
    interval: float = 1.0,
    expiry: float = 2.0,
    bind: Bind | None = None,
) -> KnockReport:
    """Send ``count`` half-open SYNs to ``addr`` port ``port`` (see :class:`~netdiag.Knock`)
    and return the summary (open / closed / filtered counts, RTTs) with every result. Needs
    CAP_NET_RAW."""
    spec = Knock(addr, port, count, interval, expiry)
    knocker = Knocker(bind)

    async def run(k: Knocker) -> KnockReport:
        target = await resolve(spec.addr)
        results = await k.collect(replace(spec, addr=target))
        report = KnockReport.of(results)
        report.addr, report.port, report.results = target, port, results
        return report

    return _run(lambda: _use(knocker, run))
