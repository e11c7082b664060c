"""netdiag for asyncio: :class:`AsyncioPinger`, :class:`AsyncioTracer` and :class:`AsyncioKnocker`.

netdiag is a trio library. To serve asyncio applications (FastAPI/Starlette, aiohttp, Home
Assistant, scrapli...) without a second implementation, this module runs trio in *guest mode*
(:func:`trio.lowlevel.start_guest_run`) on the running asyncio loop: trio's scheduler ticks as
ordinary asyncio callbacks on the loop's own thread, and the real :class:`~netdiag.Pinger`,
:class:`~netdiag.Tracer` or :class:`~netdiag.Knocker` lives inside it. Nothing is
reimplemented, so matching, timestamps and accounting are exactly the trio ones::

    async with AsyncioPinger() as pinger:
        async for rtt in pinger.ping(Ping("127.0.0.1", count=4)):
            print(rtt)

How the two worlds meet (why it is fast and why cancellation is exact):

* One guest run per asyncio loop (trio allows one run per thread), shared by every object on
  that loop and stopped when the last one leaves its ``async with``.
* Each object is entered by one trio task that stays in its ``async with`` until the asyncio
  side leaves; every call (``ping``, ``results``, ``sweep``...) is one more trio task in that
  object's nursery.
* asyncio -> trio goes through :meth:`trio.lowlevel.TrioToken.run_sync_soon`, which wakes trio
  even while it waits for I/O. trio -> asyncio needs nothing special: trio's tasks run on the
  loop's thread, so they append results to a plain list and complete an asyncio future only
  when the consumer is waiting -- results cross in batches, not one wake-up each.
* Cancelling the asyncio task that iterates (or leaving the ``async for`` early) cancels the
  trio task, and the asyncio side waits for it to finish: when the cancellation has propagated,
  the probes have stopped and their demux keys are released, as in trio.
* Exceptions (:class:`~netdiag.ResolveError`, ``ValueError``, ``PrivilegeError``...) arrive as
  themselves, never wrapped in an ``ExceptionGroup``.

Everything must be used from the loop that entered the object. For code without an event loop,
see :mod:`netdiag.sync`. (Not called ``netdiag.asyncio``: ``from netdiag import asyncio`` would
shadow the standard library's module in the importing namespace.)
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

import trio

from .engine import Engine
from .knock import Knock, Knocker, KnockResult
from .ping import Ping, Pinger, PingResult
from .sock import DEFAULT_RCVBUF, Bind, IPAddress
from .trace import Hop, Trace, Tracer, TraceResult

__all__ = ["AsyncioKnocker", "AsyncioPinger", "AsyncioTracer"]

T = TypeVar("T")
D = TypeVar("D", Pinger, Tracer, Knocker)

#: Results a call buffers for a slow asyncio consumer before its trio task waits for it to
#: catch up. The diagnostic keeps running meanwhile (its own queue holds what arrives; RTTs
#: are kernel timestamps), so this bounds the batch, not the measurement.
_BATCH_LIMIT = 8192


def _settle(
    fut: asyncio.Future[Any], value: Any = None, error: BaseException | None = None
) -> None:
    """Complete ``fut`` unless its waiter already gave up on it (cancelled)."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


class _Host:
    """The trio guest run on one asyncio loop, reference-counted by the objects that use it.

    trio allows one run per thread, so every object on a loop shares it; it starts with the
    first ``async with`` and stops (the loop waits for trio to finish) with the last.
    """

    _running: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Host] = (
        weakref.WeakKeyDictionary()
    )
    _stopping: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Host] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0
        self.ready: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.nursery: trio.Nursery | None = None
        self.token: trio.lowlevel.TrioToken | None = None

    @classmethod
    async def acquire(cls) -> _Host:
        loop = asyncio.get_running_loop()
        while True:
            old = cls._stopping.get(loop)
            if old is not None:  # a previous run is still finishing: trio allows one at a time
                await asyncio.shield(old.done)
                continue
            host = cls._running.get(loop)
            if host is None:
                if trio.lowlevel.in_trio_run():
                    raise RuntimeError(
                        "trio is already running in this thread (guest or trio.run): use "
                        "netdiag's trio objects (Pinger, Tracer, Knocker) directly there"
                    )
                host = cls._running[loop] = cls(loop)
                host._start()
            host.users += 1
            try:
                await asyncio.shield(host.ready)
            except BaseException:
                await host.release()
                raise
            return host

    def _start(self) -> None:
        trio.lowlevel.start_guest_run(
            self._main,
            run_sync_soon_threadsafe=self.loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=self.loop.call_soon,
            done_callback=self._finished,
            # asyncio owns signal.set_wakeup_fd (add_signal_handler); trio must not take it.
            host_uses_signal_set_wakeup_fd=True,
        )

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.token = trio.lowlevel.current_trio_token()
            _settle(self.ready)
            await trio.sleep_forever()

    def _finished(self, result: Any) -> None:
        """trio's done_callback: ``result`` is an ``outcome`` Value or Error."""
        if self._running.get(self.loop) is self:
            del self._running[self.loop]
        if self._stopping.get(self.loop) is self:
            del self._stopping[self.loop]
        error = getattr(result, "error", None) or RuntimeError("netdiag's trio run ended")
        # Anyone still waiting for the start learns why it will not happen.
        _settle(self.ready, error=error)
        _settle(self.done)

    def call(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` inside trio soon (wakes trio if it is waiting for I/O); False if
        the trio run has already ended (nothing can run there any more)."""
        assert self.token is not None
        try:
            self.token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    async def release(self) -> None:
        self.users -= 1
        if self.users > 0 or self.done.done():
            return
        if self._running.get(self.loop) is self:
            del self._running[self.loop]
            self._stopping[self.loop] = self
        if self.nursery is not None:
            self.call(self.nursery.cancel_scope.cancel)
        await asyncio.shield(self.done)


class _Channel(Generic[T]):
    """Results of one call crossing from its trio task to the asyncio consumer."""

    __slots__ = ("batch", "cancelled", "closed", "error", "finished", "paused", "scope", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.batch: list[T] = []
        self.waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.finished = False
        self.error: BaseException | None = None
        self.scope: trio.CancelScope | None = None
        self.cancelled = False
        self.paused: trio.Event | None = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            _settle(w)

    # -- run inside trio ---------------------------------------------------------------------

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    def resume(self) -> None:
        if self.paused is not None:
            self.paused.set()


class _Bridge(Generic[D]):
    """One trio diagnostic object hosted on the running asyncio loop (see the module doc)."""

    def __init__(self, native: D) -> None:
        self._native: D = native
        self._host: _Host | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._closed: asyncio.Future[None] | None = None

    @property
    def native(self) -> D:
        """The trio object doing the work, for introspection (counters such as ``foreign``)."""
        return self._native

    @property
    def engine(self) -> Engine:
        """The engine (demux table ``engine.table``, counters) behind this object."""
        return self._native.engine

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Any:
        if self._host is not None or self._closed is not None:
            raise RuntimeError(f"{type(self).__name__} is already in use; make a new one")
        host = await _Host.acquire()
        loop = host.loop
        opened: asyncio.Future[None] = loop.create_future()
        closed = self._closed = loop.create_future()
        host.call(self._spawn_serve, host, opened, closed)
        try:
            await opened
        except BaseException:
            self._request_stop(host)
            # The opening error (already raised from `opened`) is the one to report.
            with contextlib.suppress(Exception):
                await asyncio.shield(closed)
            await host.release()
            self._closed = None
            raise
        self._host = host
        return self

    async def __aexit__(self, *exc: object) -> None:
        host, self._host = self._host, None
        if host is None:
            return
        closed = self._closed
        assert closed is not None
        self._request_stop(host)
        try:
            await asyncio.shield(closed)
        finally:
            await host.release()

    def _request_stop(self, host: _Host) -> None:
        host.call(self._set_stop)

    def _set_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _spawn_serve(self, host: _Host, opened: asyncio.Future[None], closed: Any) -> None:
        assert host.nursery is not None
        self._stop = trio.Event()
        host.nursery.start_soon(self._serve, opened, closed)

    async def _serve(self, opened: asyncio.Future[None], closed: asyncio.Future[None]) -> None:
        """The trio task that holds the object open while the asyncio side uses it."""
        assert self._stop is not None
        error: BaseException | None = None
        try:
            async with self._native, trio.open_nursery() as nursery:
                self._nursery = nursery
                _settle(opened)
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        except Exception as e:
            error = e
        finally:
            self._nursery = None
            if error is not None and not opened.done():
                _settle(opened, error=error)
                error = None
            _settle(opened, error=RuntimeError(f"{type(self).__name__} closed while opening"))
            _settle(closed, error=error)

    def _entered(self) -> _Host:
        host = self._host
        if host is None:
            raise RuntimeError(f"use the {type(self).__name__} inside `async with` before probing")
        if asyncio.get_running_loop() is not host.loop:
            raise RuntimeError(f"{type(self).__name__} is bound to the loop that entered it")
        return host

    # -- calls -------------------------------------------------------------------------------

    async def _stream(self, start: Callable[[D], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Run ``start(native)`` in a trio task and yield what it yields, batch by batch."""
        host = self._entered()
        ch: _Channel[T] = _Channel(host.loop)
        if not host.call(self._spawn_pump, ch, start):
            raise RuntimeError(f"the trio run hosting this {type(self).__name__} has ended")
        try:
            while True:
                if ch.batch:
                    batch, ch.batch = ch.batch, []
                    if ch.paused is not None:
                        host.call(ch.resume)
                    for item in batch:
                        yield item
                elif ch.finished:
                    if ch.error is not None:
                        raise ch.error
                    return
                else:
                    ch.waiter = host.loop.create_future()
                    await ch.waiter
        finally:
            # Cancelled, or left early: stop the trio task and wait until it has released its
            # probes' keys, so "cancelled" means what it means in trio.
            if not ch.finished and host.call(ch.cancel):
                await asyncio.shield(ch.closed)

    def _spawn_pump(self, ch: _Channel[T], start: Callable[[D], AsyncIterator[T]]) -> None:
        nursery = self._nursery
        if nursery is None:
            self._finish(ch, RuntimeError(f"{type(self).__name__} is closed"))
            return
        nursery.start_soon(self._pump, ch, start)

    async def _pump(self, ch: _Channel[T], start: Callable[[D], AsyncIterator[T]]) -> None:
        error: BaseException | None = None
        completed = False
        try:
            with trio.CancelScope() as scope:
                ch.scope = scope
                if ch.cancelled:
                    scope.cancel()
                it = start(self._native)
                try:
                    async for item in it:
                        ch.batch.append(item)
                        if ch.waiter is not None:
                            ch.wake()
                        if len(ch.batch) >= _BATCH_LIMIT:
                            ch.paused = trio.Event()
                            await ch.paused.wait()
                            ch.paused = None
                    completed = True
                finally:
                    aclose = getattr(it, "aclose", None)
                    if aclose is not None:
                        with trio.CancelScope(shield=True):
                            await aclose()
        except Exception as e:
            error = e
        finally:
            # Cancelled from outside (the object closing, or the trio run ending): the consumer
            # must not take a cut-short stream for a complete one.
            if error is None and not completed and not ch.cancelled:
                error = RuntimeError(f"{type(self).__name__} was closed during the call")
            self._finish(ch, error)

    @staticmethod
    def _finish(ch: _Channel[Any], error: BaseException | None) -> None:
        ch.error = error
        ch.finished = True
        ch.wake()
        _settle(ch.closed)

    async def _call(self, fn: Callable[[D], Awaitable[T]]) -> T:
        """``await fn(native)`` in a trio task; its result or exception, as itself."""
        async for value in self._stream(lambda native: _once(fn(native))):
            return value
        raise AssertionError("unreachable: a call yields exactly once")  # pragma: no cover


async def _once(aw: Awaitable[T]) -> AsyncIterator[T]:
    yield await aw


class AsyncioPinger(_Bridge[Pinger]):
    """:class:`~netdiag.Pinger` for asyncio: the same calls, awaited on the running loop.

    Arguments are :class:`~netdiag.Pinger`'s and are checked at once. One object carries any
    number of concurrent pings from any number of asyncio tasks on its loop.
    """

    def __init__(
        self,
        bind: Bind | None = None,
        *,
        privileged: bool | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> None:
        super().__init__(Pinger(bind, privileged=privileged, rcvbuf=rcvbuf))

    async def __aenter__(self) -> AsyncioPinger:
        await super().__aenter__()
        return self

    def results(self, ping: Ping) -> AsyncIterator[PingResult]:
        """Every outcome as it happens; see :meth:`netdiag.Pinger.results`."""
        return self._stream(lambda p: p.results(ping))

    def ping(self, ping: Ping) -> AsyncIterator[float | None]:
        """Each request's RTT (or ``None``) in sequence order; see :meth:`netdiag.Pinger.ping`."""
        return self._stream(lambda p: p.ping(ping))

    async def collect(self, ping: Ping) -> list[PingResult]:
        """Run a whole ping and return every result; see :meth:`netdiag.PingStats.of`."""
        return [r async for r in self.results(ping)]

    def sweep(
        self,
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
    ) -> AsyncIterator[PingResult]:
        """Ping many targets from one sender, fping style; see :meth:`netdiag.Pinger.sweep`."""
        targets = list(targets)  # consumed here, not later in the other world
        return self._stream(
            lambda p: p.sweep(
                targets,
                count=count,
                interval=interval,
                expiry=expiry,
                size=size,
                ttl=ttl,
                tos=tos,
                df=df,
                rate=rate,
            )
        )


class AsyncioTracer(_Bridge[Tracer]):
    """:class:`~netdiag.Tracer` for asyncio: ``results`` yields each :class:`~netdiag.Hop` as
    it settles, ``collect`` returns the whole :class:`~netdiag.TraceResult`."""

    def __init__(
        self,
        bind: Bind | None = None,
        *,
        privileged: bool | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> None:
        super().__init__(Tracer(bind, privileged=privileged, rcvbuf=rcvbuf))

    async def __aenter__(self) -> AsyncioTracer:
        await super().__aenter__()
        return self

    @property
    def mode(self) -> str | None:
        """``"raw"`` or ``"datagram"`` once entered (see :class:`netdiag.Tracer`)."""
        return self._native.mode

    def results(self, trace: Trace) -> AsyncIterator[Hop]:
        """Each hop, in TTL order, as soon as it is settled (the last has ``last=True``)."""
        return self._stream(lambda t: t.results(trace))

    async def collect(self, trace: Trace) -> TraceResult:
        """Run a whole trace and return the route with its counters."""
        return await self._call(lambda t: t.collect(trace))


class AsyncioKnocker(_Bridge[Knocker]):
    """:class:`~netdiag.Knocker` for asyncio: half-open TCP knocks awaited on the running loop."""

    def __init__(self, bind: Bind | None = None, *, rcvbuf: int = DEFAULT_RCVBUF) -> None:
        super().__init__(Knocker(bind, rcvbuf=rcvbuf))

    async def __aenter__(self) -> AsyncioKnocker:
        await super().__aenter__()
        return self

    def results(self, knock: Knock) -> AsyncIterator[KnockResult]:
        """Every outcome as it happens; see :meth:`netdiag.Knocker.results`."""
        return self._stream(lambda k: k.results(knock))

    def knock(self, knock: Knock) -> AsyncIterator[float | None]:
        """Each SYN's RTT if the port answered open, else ``None``, in probe order."""
        return self._stream(lambda k: k.knock(knock))

    async def collect(self, knock: Knock) -> list[KnockResult]:
        """Run a whole knock and return every result; see :meth:`netdiag.KnockStats.of`."""
        return [r async for r in self.results(knock)]

    def sweep(
        self,
        targets: Iterable[tuple[IPAddress | str, int]],
        *,
        count: int = 1,
        interval: float = 1.0,
        expiry: float = 2.0,
        rate: float | None = None,
    ) -> AsyncIterator[KnockResult]:
        """Knock many ``(address, port)`` pairs from one sender; see
        :meth:`netdiag.Knocker.sweep`."""
        targets = list(targets)
        return self._stream(
            lambda k: k.sweep(targets, count=count, interval=interval, expiry=expiry, rate=rate)
        )
