"""The engine every diagnostic shares: receive loops, the demux table, leases and expiry.

One :class:`Engine` belongs to one Pinger/Tracer/Knocker. It owns a nursery in which it runs one
receive task per socket and one expiry task, and a table mapping demux keys to :class:`Lease`
objects. The flow for every probe is the same:

1. ``lease = engine.register(key, sink, expiry)`` -- before the probe is sent, so even a reply
   that arrives while ``sendmsg`` is still returning finds its waiter;
2. the diagnostic sends the probe;
3. a receive task turns each datagram into ``(key, event)`` with the diagnostic's pure
   classifier, looks the key up and hands the event to the lease's sink; or the expiry task
   finds the deadline passed and tells the sink the probe expired;
4. ``lease.release()`` (or leaving ``with lease:``) removes the key, whatever happened: reply,
   timeout, cancellation or an exception.

Expiry uses one heap and one task whose sleep is a cancel-scope deadline that registration moves
earlier when needed, so a million in-flight probes cost a million heap entries, not a million
timers or tasks. A receive task never exits because of a packet: classifier and sink errors are
counted and logged, socket errors are counted, and the loop goes on.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol, Self

import trio

from .errors import KeyInUseError, PrivilegeError
from .sock import Bind, Packet, PerFamily, RawSocket
from .validate import check_int

__all__ = [
    "Diagnostic",
    "Engine",
    "EngineStats",
    "Lease",
    "Pacer",
    "Session",
    "Sink",
    "in_order",
    "stream",
]

log = logging.getLogger("netdiag.engine")

#: A classifier maps one received packet to ``(key, event)``, or ``None`` for "not ours".
Classifier = Callable[[Packet], "tuple[Hashable, Any] | None"]

ACTIVE, EXPIRED, RELEASED = 0, 1, 2


class Sink(Protocol):
    """What a diagnostic implements to hear about its probes."""

    def on_event(self, lease: Lease, event: Any, packet: Packet) -> None:
        """A packet matched ``lease``'s key (``lease.expired`` tells if it came late)."""

    def on_expire(self, lease: Lease) -> None:
        """``lease`` reached its deadline with no reply that ended it."""


class Lease:
    """A registered demux key: the claim one probe has on the replies that match it.

    ``probe`` is free for the diagnostic (its per-probe state). A lease stays in the table
    after it expires, marked ``expired``, until released: a late reply then still finds it and
    is reported as late instead of being mistaken for a reply to something else.
    """

    __slots__ = ("_engine", "deadline", "key", "probe", "sink", "state")

    def __init__(self, engine: Engine, key: Hashable, sink: Sink, deadline: float, probe: Any):
        self._engine = engine
        self.key = key
        self.sink = sink
        self.deadline = deadline
        self.probe = probe
        self.state = ACTIVE

    @property
    def expired(self) -> bool:
        return self.state == EXPIRED

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    def finish(self) -> None:
        """Stop the expiry clock (the probe got its answer) but keep the key registered, so
        duplicates and late copies are still recognised until :meth:`release`."""
        if self.state == ACTIVE and self.deadline != math.inf:
            self._engine._dead_entry()
        self.deadline = math.inf

    def release(self) -> None:
        """Remove the key from the table. Idempotent."""
        if self.state != RELEASED:
            dead = self.state == ACTIVE and self.deadline != math.inf
            self.state = RELEASED
            table = self._engine.table
            if table.get(self.key) is self:
                del table[self.key]
            if dead:
                self._engine._dead_entry()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(slots=True)
class EngineStats:
    """Counters that explain what the receive loops saw; useful when numbers look wrong."""

    received: int = 0
    matched: int = 0
    unmatched: int = 0
    ignored: int = 0
    truncated: int = 0
    classifier_errors: int = 0
    sink_errors: int = 0
    socket_errors: int = 0
    expired: int = 0
    #: datagrams the kernel dropped because a receive buffer was full (SO_RXQ_OVFL): replies
    #: lost on this host, which the probes report as timeouts
    kernel_drops: int = 0


class Engine:
    """Demux table + receive loops + expiry, inside a nursery (``async with Engine():``)."""

    def __init__(self, batch: int = 512) -> None:
        self.table: dict[Hashable, Lease] = {}
        self.stats = EngineStats()
        self._batch = batch
        self._heap: list[tuple[float, int, Lease]] = []
        self._dead = 0  # heap entries whose lease was answered or released before its deadline
        self._counter = itertools.count()
        self._expiry_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._sockets: dict[RawSocket, None] = {}  # ordered; O(1) removal
        #: the cancel scope of each socket's receive loop, so one socket can be removed alone
        self._loops: dict[RawSocket, trio.CancelScope] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._expiry_loop)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        try:
            return await self._nursery_cm.__aexit__(*exc)
        finally:
            self._nursery = None
            for s in self._sockets:
                s.close()
            self._sockets.clear()
            self._loops.clear()
            self.table.clear()
            self._heap.clear()
            self._dead = 0

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery tasks of this object run in (a diagnostic's per-call sender, say)."""
        if self._nursery is None:
            raise RuntimeError("use the object inside `async with` before probing")
        return self._nursery

    def add_socket(self, sock: RawSocket, classify: Classifier | None) -> None:
        """Take ownership of ``sock`` (closed with the engine) and, if ``classify`` is given,
        start its receive loop."""
        self._sockets[sock] = None
        if classify is not None:
            # The scope exists before the task runs, so remove_socket works at once.
            scope = self._loops[sock] = trio.CancelScope()
            self.nursery.start_soon(self._scoped_recv_loop, sock, classify, scope)

    def remove_socket(self, sock: RawSocket) -> None:
        """Stop ``sock``'s receive loop and close it: for sockets that live shorter than the
        engine (the unprivileged Tracer's per-flow UDP sockets). Idempotent; safe after the
        engine closed. The loop is cancelled *before* the socket is closed, so it ends with
        ``Cancelled`` rather than seeing its file descriptor vanish."""
        scope = self._loops.pop(sock, None)
        if scope is not None:
            scope.cancel()
        self._sockets.pop(sock, None)
        sock.close()

    # -- the demux table -------------------------------------------------------------------

    def register(
        self, key: Hashable, sink: Sink, expiry: float, probe: Any = None, now: float | None = None
    ) -> Lease:
        """Claim ``key`` for ``expiry`` seconds from now. Raises :class:`KeyInUseError` if
        another live probe holds it: two probes that look the same on the wire must never be
        in flight at once. A sender registering a burst may pass ``now`` (trio's clock, read
        since its last checkpoint) to skip reading the clock once per probe."""
        if key in self.table:
            raise KeyInUseError(key)
        deadline = (trio.current_time() if now is None else now) + expiry
        lease = Lease(self, key, sink, deadline, probe)
        self.table[key] = lease
        heapq.heappush(self._heap, (deadline, next(self._counter), lease))
        scope = self._expiry_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline
        return lease

    def in_use(self, key: Hashable) -> bool:
        return key in self.table

    def _dead_entry(self) -> None:
        """A heap entry stopped mattering (answered or released early). Entries leave the heap
        lazily, at their deadline; but when most of a big heap is dead -- 10,000 probes with a
        long expiry cancelled at once, say -- rebuild it now, so their memory is not held until
        deadlines that may be hours away; and drop them all once nothing is active. Amortised
        O(1) per probe."""
        self._dead += 1
        heap = self._heap
        if not self.table:  # nothing is active: every entry left is dead
            heap.clear()
            self._dead = 0
        elif self._dead > 1024 and 2 * self._dead > len(heap):
            heap[:] = [e for e in heap if e[2].state == ACTIVE and e[2].deadline == e[0]]
            heapq.heapify(heap)
            self._dead = 0

    # -- tasks -----------------------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                deadline, _, lease = heapq.heappop(heap)
                if lease.state == ACTIVE and lease.deadline == deadline:
                    lease.state = EXPIRED
                    self.stats.expired += 1
                    try:
                        lease.sink.on_expire(lease)
                    except Exception:
                        self.stats.sink_errors += 1
                        log.exception("sink failed on expiry of %r", lease.key)
                else:
                    self._dead -= 1
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self._expiry_scope = scope
                await trio.sleep_forever()
            self._expiry_scope = None

    async def _scoped_recv_loop(
        self, sock: RawSocket, classify: Classifier, scope: trio.CancelScope
    ) -> None:
        with scope:
            if not scope.cancel_called:  # removed before it started: never touch the fd
                await self._recv_loop(sock, classify)

    async def _recv_loop(self, sock: RawSocket, classify: Classifier) -> None:
        stats = self.stats
        table = self.table
        batch = self._batch
        drops = getattr(sock, "drops", 0)
        warned = -math.inf
        while True:
            await sock.wait_readable()
            packets, err = sock.recv_batch(batch)
            if err is not None:
                stats.socket_errors += 1
                log.warning("receive error on %s socket: %s", "IPv6" if sock.v6 else "IPv4", err)
            now_drops = getattr(sock, "drops", 0)
            if now_drops != drops:
                # The kernel threw replies away: they will show as timeouts. Say why, at most
                # once a second per socket, so an overloaded host is not also flooded with logs.
                lost = (now_drops - drops) & 0xFFFFFFFF
                drops = now_drops
                stats.kernel_drops += lost
                if trio.current_time() - warned >= 1.0:
                    warned = trio.current_time()
                    log.warning(
                        "receive buffer full on %s socket: the kernel dropped %d packets "
                        "(%d so far); their probes will be reported lost. A bigger rcvbuf, "
                        "a lower rate or a less busy process helps",
                        "IPv6" if sock.v6 else "IPv4",
                        lost,
                        stats.kernel_drops,
                    )
            for pkt in packets:
                stats.received += 1
                if pkt.truncated:
                    stats.truncated += 1
                try:
                    found = classify(pkt)
                except Exception:
                    stats.classifier_errors += 1
                    log.debug("classifier failed", exc_info=True)
                    continue
                if found is None:
                    stats.ignored += 1
                    continue
                key, event = found
                lease = table.get(key)
                if lease is None:
                    stats.unmatched += 1
                    continue
                stats.matched += 1
                try:
                    lease.sink.on_event(lease, event, pkt)
                except Exception:
                    stats.sink_errors += 1
                    log.exception("sink failed on %r", key)
            if len(packets) >= batch:
                # A full batch: let the probes' consumers run before draining more.
                await trio.lowlevel.checkpoint()


class Session:
    """One diagnostic call (a ping, a knock, a trace): the engine's sink for its probes, one
    sender task, and a queue of results for the caller's ``async for``.

    Subclasses implement ``_send_all`` (register, then send, each probe) and the sink methods,
    calling :meth:`deliver` for an answer so that "first answer / duplicate / late" is decided
    in one place for every diagnostic. :meth:`Engine.stream` runs it.
    """

    def __init__(self) -> None:
        self.events: deque[Any] = deque()
        self.outstanding = 0
        self.done_sending = False
        self.failure: BaseException | None = None
        self._wake: trio.Event | None = None
        self._scope: trio.CancelScope | None = None

    # -- for subclasses --------------------------------------------------------------------

    async def _send_all(self) -> None:
        raise NotImplementedError

    def push(self, result: Any) -> None:
        """Queue ``result`` for the caller and wake it."""
        self.events.append(result)
        self.wake()

    def deliver(self, lease: Lease, probe: Any, result: Any) -> None:
        """Report an answer to ``probe``: the first one resolves it and stops its expiry
        clock; later ones are marked ``duplicate``, and one after expiry ``late`` (results
        are dataclasses with those two fields). ``probe.answered`` tracks the first."""
        if lease.expired:
            self.push(dataclasses.replace(result, late=True))
        elif probe.answered:
            self.push(dataclasses.replace(result, duplicate=True))
        else:
            probe.answered = True
            lease.finish()
            self.outstanding -= 1
            self.push(result)

    def close(self) -> None:
        """Stop sending; subclasses also release their leases (and call this)."""
        if self._scope is not None:
            self._scope.cancel()

    # -- for the engine --------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """No more results will come: everything was sent and every probe resolved.
        (A traceroute overrides this: it is done at the destination, whatever is in flight.)"""
        return self.done_sending and self.outstanding == 0

    @property
    def finished(self) -> bool:
        return self.settled and not self.events

    def wake(self) -> None:
        """Wake the caller waiting in :meth:`wait` (pushing a result does this too)."""
        if self._wake is not None:
            self._wake.set()

    async def wait(self) -> None:
        self._wake = trio.Event()
        if self.events or self.settled or self.failure:
            return
        await self._wake.wait()

    async def run_sender(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            task_status.started()
            try:
                await self._send_all()
            except Exception as e:  # never let one call take down the object's nursery
                self.failure = e
            finally:
                self.done_sending = True
                self.wake()


async def stream(engine: Engine, session: Session) -> AsyncIterator[Any]:
    """Run ``session``'s sender in ``engine``'s nursery and yield its results as they come,
    until every probe is resolved. Leaving early (break, cancellation) closes the session,
    which releases its leases."""
    try:
        await engine.nursery.start(session.run_sender)
        while True:
            while session.events:
                yield session.events.popleft()
            if session.failure is not None:
                raise session.failure
            if session.finished:
                return
            await session.wait()
    finally:
        session.close()


class Pacer:
    """When a session's sender may send its next probe.

    Round ``i`` starts ``i * interval`` after the first; within a round, probes leave back to
    back, or ``rate`` per second when given. The sender sleeps only when it is ahead of
    schedule by more than a millisecond (sleeping per probe would cost a cancel scope and a
    timer each), and otherwise yields to the event loop every ``burst`` probes so the receive
    loops drain replies while a big batch goes out. :attr:`now` is trio's clock as of the last
    wait: good enough for deadlines, and one clock read per burst instead of per probe.
    """

    def __init__(self, interval: float, rate: float | None = None, burst: int = 64) -> None:
        self.interval = interval
        self.gap = 1.0 / rate if rate else 0.0
        self.burst = burst
        self.start = self.now = trio.current_time()
        self._next = self.start
        self._unyielded = 0

    async def round(self, i: int) -> None:
        """Wait for round ``i`` (0-based) to begin."""
        if i:
            due = self.start + i * self.interval
            self.now = trio.current_time()
            if due > self.now:
                await trio.sleep_until(due)
                self.now = trio.current_time()
                self._unyielded = 0
            self._next = max(self._next, self.now)

    async def probe(self) -> None:
        """Wait until the next probe may leave."""
        if self.gap:
            self._next += self.gap
            self.now = trio.current_time()
            if self._next - self.now > 0.001:
                await trio.sleep_until(self._next)
                self.now = trio.current_time()
                self._unyielded = 0
        elif self._unyielded >= self.burst:
            await trio.lowlevel.checkpoint()
            self.now = trio.current_time()
            self._unyielded = 0
        self._unyielded += 1

    def waited(self) -> None:
        """The sender blocked elsewhere (a full socket buffer): refresh the clock."""
        self.now = trio.current_time()
        self._unyielded = 0


class Diagnostic:
    """What :class:`~netdiag.Pinger`, :class:`~netdiag.Tracer` and :class:`~netdiag.Knocker`
    share: a :class:`~netdiag.Bind`, a receive-buffer size, an :class:`Engine`, the sockets
    opened per family, and the ``async with`` lifecycle around them.

    Entering starts the engine (receive loops, expiry) and calls ``_open``, which opens each
    family's sockets through ``self._families`` and hands them to the engine; leaving cancels
    every call still running, closes the sockets (the engine's), then calls ``_close_family``
    for what else a family holds.
    """

    #: what the fallback is called when neither raw nor datagram sockets are allowed
    _unprivileged = "unprivileged mode"

    def __init__(self, bind: Bind | None, rcvbuf: int, privileged: bool | None = True) -> None:
        if bind is not None and not isinstance(bind, Bind):
            raise TypeError(f"bind must be a netdiag.Bind, not {bind!r}")
        if privileged not in (None, True, False):
            raise TypeError(f"privileged must be None, True or False, not {privileged!r}")
        check_int("rcvbuf", rcvbuf, 1024, 1 << 30)  # bytes; the kernel doubles it
        self.bind = bind or Bind()
        self.rcvbuf = rcvbuf
        self.privileged = privileged
        #: "raw" or "datagram" once entered: which kind of socket carries the probes.
        self.mode: str | None = None
        self._engine = Engine()
        self._families: PerFamily[Any] = PerFamily(type(self).__name__)

    def _open(self) -> None:
        """Raw sockets, or the datagram mode when they are refused (or ``privileged=False``);
        ``privileged=True`` never falls back. One policy for every object that has both."""
        raw_error: PrivilegeError | None = None
        if self.privileged is not False:
            try:
                self._open_mode(dgram=False)
                self.mode = "raw"
                return
            except PrivilegeError as e:
                if self.privileged:
                    raise
                raw_error = e
        try:
            self._open_mode(dgram=True)
        except PrivilegeError as e:
            if raw_error is None:
                raise
            msg = f"{raw_error}; or allow {self._unprivileged}: {e}"
            raise PrivilegeError(message=msg) from None
        self.mode = "datagram"

    def _open_mode(self, dgram: bool) -> None:
        """Open every family's sockets of one kind through ``self._families``."""
        raise NotImplementedError

    def _close_family(self, fam: Any) -> None:
        """Release what a family holds besides the sockets the engine closes."""

    def _family(self, v6: bool) -> Any:
        return self._families.get(v6)

    @property
    def engine(self) -> Engine:
        """The engine (demux table, counters) behind this object, for introspection."""
        return self._engine

    async def __aenter__(self) -> Self:
        await self._engine.__aenter__()
        try:
            self._open()
        except BaseException:
            await self._engine.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        try:
            return await self._engine.__aexit__(*exc)
        finally:
            for _, fam in self._families.items():
                self._close_family(fam)
            self._families.clear()


async def in_order(
    results: AsyncIterator[Any], first: int, value: Callable[[Any], float | None]
) -> AsyncIterator[float | None]:
    """The simple stream the Rust crate offers (``Some(rtt)`` / ``None`` per probe) built on
    a rich one: one ``value(result)`` per probe, in probe order starting at ``first``,
    holding back early answers until the probes before them are resolved; duplicates and late
    answers are left out."""
    pending: dict[int, float | None] = {}
    nxt = first
    async for r in results:
        if r.duplicate or r.late:
            continue
        pending[r.seq] = value(r)
        while nxt in pending:
            yield pending.pop(nxt)
            nxt += 1
