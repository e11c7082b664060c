"""The engine every diagnostic shares: one demux table, its expiry task, the receive loops.

One :class:`Engine` belongs to one Pinger/Tracer/Knocker. Entered with ``async with``, it owns a
nursery in which it runs one receive task per socket (:mod:`.receive`) and one expiry task over
the table's heap (:mod:`.table`). The flow for every probe is the same:

1. ``lease = engine.register(key, sink, expiry)`` -- before the probe is sent, so even a reply
   that arrives while ``sendmsg`` is still returning finds its waiter;
2. the diagnostic sends the probe;
3. a receive task turns each datagram into ``(key, event)`` with the diagnostic's pure
   classifier, looks the key up and hands the event to the lease's sink; or the expiry task
   finds the deadline passed and tells the sink the probe expired;
4. ``lease.release()`` (or leaving ``with lease:``) removes the key, whatever happened.

:mod:`.probe` wraps those steps into the one template every diagnostic call uses.

**Exceptions.** trio's nurseries wrap what their body raises in an ``ExceptionGroup``. An
exception raised by the code inside ``async with Pinger() as p:`` is the *user's*, not a
concurrent failure, so :meth:`Engine.running` catches it at the ``yield``, closes the nursery
(whose own tasks never fail on purpose) and re-raises it as itself. Only several concurrent
failures may form a group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from ..sock import ProbeSocket
from .receive import Classifier, EngineStats, Receiver, log
from .schedule import Scheduler
from .table import DemuxTable, Lease, Sink

__all__ = ["Engine"]


class Engine:
    """Demux table + receive loops + expiry, inside a nursery (``async with Engine():``)."""

    def __init__(self, batch: int = 512) -> None:
        self._table = DemuxTable(self._earlier_deadline)
        #: keys to leases; read-only for callers (introspection, tests)
        self.table = self._table.leases
        self.stats = EngineStats()
        self._batch = batch
        self._expiry_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._stack: AsyncExitStack | None = None
        self._sockets: dict[ProbeSocket, None] = {}  # ordered; O(1) removal
        #: the cancel scope of each socket's receive loop, so one socket can be removed alone
        self._loops: dict[ProbeSocket, trio.CancelScope] = {}
        self._receivers: dict[ProbeSocket, Receiver] = {}
        #: the one sender task every scheduled call hands its probes to (see .schedule)
        self.scheduler = Scheduler(self)

    # -- lifecycle -------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        """Run the engine for the duration of the block; see the module docstring for what
        happens to an exception the block raises."""
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._expiry_loop)
                nursery.start_soon(self.scheduler.run)
                try:
                    yield self
                except BaseException as e:  # the block's own exception: re-raised below
                    body_error = e
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            for s in self._sockets:
                s.close()
            self._sockets.clear()
            self._loops.clear()
            self._receivers.clear()
            self._table.clear()
            self.scheduler.close()
        if body_error is not None:
            raise body_error

    async def __aenter__(self) -> Engine:
        stack = AsyncExitStack()
        await stack.enter_async_context(self.running())
        self._stack = stack
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None, "Engine exited without being entered"
        return await stack.__aexit__(*exc)

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery tasks of this object run in (a diagnostic's per-call sender, say)."""
        if self._nursery is None:
            raise RuntimeError("use the object inside `async with` before probing")
        return self._nursery

    def add_socket(self, sock: ProbeSocket, classify: Classifier | None) -> None:
        """Take ownership of ``sock`` (closed with the engine) and, if ``classify`` is given,
        start its receive loop."""
        self._sockets[sock] = None
        if classify is not None:
            # The scope exists before the task runs, so remove_socket works at once.
            scope = self._loops[sock] = trio.CancelScope()
            receiver = Receiver(sock, classify, self._table, self.stats, self._batch)
            self._receivers[sock] = receiver
            self.nursery.start_soon(self._scoped_receive_loop, receiver, scope)

    def receiving(self) -> list[ProbeSocket]:
        """The sockets a receive loop reads (for the scheduler's backlog check)."""
        return [s for s in self._loops if not s.closed]

    def remove_socket(self, sock: ProbeSocket) -> None:
        """Stop ``sock``'s receive loop and close it: for sockets that live shorter than the
        engine (the unprivileged Tracer's per-flow UDP sockets). Idempotent; safe after the
        engine closed. The loop is cancelled *before* the socket is closed, so it ends with
        ``Cancelled`` rather than seeing its file descriptor vanish."""
        scope = self._loops.pop(sock, None)
        if scope is not None:
            scope.cancel()
        self._receivers.pop(sock, None)
        self._sockets.pop(sock, None)
        sock.close()

    # -- the demux table -------------------------------------------------------------------

    def register(
        self, key: Hashable, sink: Sink, expiry: float, probe: Any = None, now: float | None = None
    ) -> Lease:
        """Claim ``key`` for ``expiry`` seconds from now (see :meth:`DemuxTable.register`). A
        sender registering a burst may pass ``now`` (trio's clock, read since its last
        checkpoint) to skip reading the clock once per probe."""
        deadline = (trio.current_time() if now is None else now) + expiry
        return self._table.register(key, sink, deadline, probe)

    def adopt(self, lease: Lease, key: Hashable, sink: Sink, expiry: float, now: float) -> None:
        """:meth:`register` for a probe that is its own lease (see :meth:`DemuxTable.adopt`)."""
        self._table.adopt(lease, key, sink, now + expiry)

    def in_use(self, key: Hashable) -> bool:
        return key in self.table

    @property
    def heap_size(self) -> int:
        """Entries in the expiry heap (live and not yet dropped): for memory tests."""
        return len(self._table.heap)

    # -- tasks -----------------------------------------------------------------------------

    def _earlier_deadline(self, deadline: float) -> None:
        scope = self._expiry_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def _expiry_loop(self) -> None:
        table = self._table
        stats = self.stats
        while True:
            now = trio.current_time()
            if table.next_deadline <= now:
                # Replies may be waiting in the sockets (a busy process has not read them
                # yet): take them first, so none is called late that arrived in time.
                for receiver in list(self._receivers.values()):
                    receiver.drain()
            for lease in table.pop_due(now):
                stats.expired += 1
                try:
                    lease.sink.on_expire(lease)
                except Exception:
                    stats.sink_errors += 1
                    log.exception("sink failed on expiry of %r", lease.key)
            with trio.CancelScope(deadline=table.next_deadline) as scope:
                self._expiry_scope = scope
                await trio.sleep_forever()
            self._expiry_scope = None

    async def _scoped_receive_loop(self, receiver: Receiver, scope: trio.CancelScope) -> None:
        with scope:
            if not scope.cancel_called:  # removed before it started: never touch the fd
                await receiver.run()
