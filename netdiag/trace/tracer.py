"""The :class:`Tracer`: many concurrent traces over one set of sockets per family.

What is shared between traces lives here: the socket sets (raw, or datagram mode's), the flow
id blocks (:class:`FlowBlocks`) that keep concurrent and lingering traces to one target apart,
the linger that keeps a finished trace's keys reserved so stragglers count as late, and the
reverse DNS cache. Each trace is a :class:`~netdiag.trace.session.TraceSession`.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from ..engine import Diagnostic, Lease, stream
from ..errors import NetdiagError, PrivilegeError
from ..privilege import raw_socket_advice
from ..resolve import resolve, reverse
from ..sock import DEFAULT_RCVBUF, Bind, IPAddress
from .options import Trace
from .results import Hop, TraceResult
from .session import LINGER, TraceSession
from .sockets import PORT_HI, PORT_LO, DgramSockets, Flows, ProbeSockets, RawSockets

if TYPE_CHECKING:
    from .monitor import Monitor, Snapshot

__all__ = ["FlowBlocks", "FlowsExhausted", "Tracer"]


class FlowsExhausted(NetdiagError):
    """Every flow id block towards one target is reserved (by running or lingering traces).
    The Tracer waits for a block rather than raising this to the caller."""


class FlowBlocks:
    """Raw mode's flow ids: a block of ``max_flows`` consecutive ids per trace, reserved per
    (target, protocol) so that no two running or lingering traces to one target share a flow
    id -- a straggler of one is then never credited to the other.

    (Datagram mode needs no blocks: the kernel gives each flow socket a port no other socket
    holds, and the socket lives as long as its keys.)
    """

    def __init__(self) -> None:
        #: ``(target, protocol) -> [(base, size), ...]`` reserved now
        self.blocks: dict[tuple[bytes, int], list[tuple[int, int]]] = {}
        self.cursor = random.randrange(0x10000)
        #: called after a block is given back (the Tracer wakes traces waiting for one)
        self.on_free: Callable[[], None] | None = None

    def alloc(self, dst: bytes, proto: int, size: int) -> int:
        """The first id of a block of ``size`` flow ids (source ports, or echo identifiers)
        that no reserved block towards ``dst`` with ``proto`` overlaps."""
        # Echo identifiers come from the flow ports' range too: the ICMP socket's kernel filter
        # then lets through only echo replies (and errors quoting requests) with our ids.
        lo, hi = PORT_LO, PORT_HI
        span = hi - lo + 1
        if size > span:
            raise ValueError(f"at most {span} flows per trace")
        used = self.blocks.setdefault((dst, proto), [])
        # The rotating cursor spreads traces over the range (ids are not reused soon after a
        # trace ends); first fit after existing blocks uses the gaps when the cursor spot is
        # taken.
        candidates = [lo + self.cursor % span, *(b + s for b, s in used), lo]
        for base in candidates:
            if base + size - 1 > hi:
                continue
            if all(base + size <= b or b + s <= base for b, s in used):
                used.append((base, size))
                self.cursor = base - lo + size
                return base
        raise FlowsExhausted(f"too many concurrent traces to one target ({len(used)})")

    def free(self, dst: bytes, proto: int, base: int) -> None:
        """Give back the block starting at ``base``."""
        used = self.blocks.get((dst, proto), [])
        for i, (b, _s) in enumerate(used):
            if b == base:
                del used[i]
                break
        if not used:
            self.blocks.pop((dst, proto), None)
        if self.on_free is not None:
            self.on_free()


class Tracer(Diagnostic):
    """Trace routes to many targets concurrently over one set of raw sockets per family.

    Use it as an async context manager: entering opens the sockets and starts the receive loops
    (missing privileges raise :class:`~netdiag.errors.PrivilegeError`); leaving cancels every
    trace still running. A family that cannot be opened does not stop the other: tracing a
    target of that family raises :class:`FamilyUnavailableError` saying why.

    ``privileged``: ``None`` (default) uses raw sockets if permitted, else datagram mode (UDP
    traces over ordinary UDP sockets, no CAP_NET_RAW needed; ICMP and TCP traces then raise
    :class:`~netdiag.errors.PrivilegeError`); ``True`` raw sockets only; ``False`` datagram
    mode only. :attr:`mode` says which was chosen once entered.
    """

    def __init__(
        self,
        bind: Bind | None = None,
        *,
        privileged: bool | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> None:
        super().__init__(bind, rcvbuf, privileged)
        self._flows = FlowBlocks()
        self._flows.on_free = self._block_freed
        self._freed: trio.Event | None = None
        self._names: dict[IPAddress, str | None] = {}
        self._pending_names: dict[IPAddress, trio.Event] = {}
        #: answers that came after their probe expired or its trace ended (never credited)
        self.late = 0
        #: answers that matched a key but carried another trace's token
        self.foreign = 0

    def _close_family(self, fam: ProbeSockets) -> None:
        fam.close()

    def _open_mode(self, dgram: bool) -> None:
        """Raw sockets, or the datagram mode's UDP flow sockets. Raw sockets already handed to
        the engine are closed by it; the route finder is ours."""
        if dgram:
            self._families.open(
                lambda v6: DgramSockets(v6, self._engine, self.bind), ProbeSockets.close
            )
        else:
            self._families.open(
                lambda v6: RawSockets(v6, self._engine, self.bind, self.rcvbuf, self._flows),
                ProbeSockets.close,
            )

    def _check_mode(self, trace: Trace) -> None:
        if self.mode == "datagram" and trace.proto != "udp":
            flag = "-I" if trace.proto == "icmp" else "-T"
            raise PrivilegeError(
                message=f"{trace.proto.upper()} traces ({flag}) need raw sockets, and "
                + raw_socket_advice()
                + "; UDP traces work without it"
            )

    # -- tracing -------------------------------------------------------------------------------

    async def results(self, trace: Trace) -> AsyncIterator[Hop]:
        """Trace the route and yield each :class:`Hop`, in TTL order, as soon as it is settled.
        The last one has ``last=True``."""
        async for hop in self._hops(trace, None):
            yield hop

    async def collect(self, trace: Trace) -> TraceResult:
        """Run a whole trace and return the route with its counters."""
        box: list[TraceSession] = []
        start = time.monotonic()
        hops = [hop async for hop in self._hops(trace, box)]
        s = box[0]
        elapsed = (s.finished_at - s.started) if s.finished_at else time.monotonic() - start
        return TraceResult(
            s.target,
            trace.proto,
            trace.dport,
            tuple(hops),
            any(h.reached for h in hops),
            s.sent,
            s.late,
            elapsed,
            s.planner.past_route(),
        )

    async def monitor(
        self,
        trace: Trace | Monitor,
        *,
        rounds: int | None = None,
        every: float = 1.0,
        rediscover: int | None = None,
        grace: int = 8,
    ) -> AsyncIterator[Snapshot]:
        """Trace the route in rounds, as mtr does, and yield a
        :class:`~netdiag.trace.monitor.Snapshot` of the statistics after each: per hop and
        per responder sent, received, loss, last/avg/best/worst/stdev RTT, jitter, reply TTL,
        per-flow counts, and the route changes seen. The rounds send the same Paris flows
        every time (their ids stay reserved until the iteration ends), so loss on one
        branch shows on that branch's responders. ``trace`` may be a
        :class:`~netdiag.trace.monitor.Monitor` (keep it to :meth:`~Monitor.reset` the
        statistics while it runs); the keyword arguments are then ignored. See
        :mod:`netdiag.trace.monitor` for how rounds are planned."""
        from .monitor import Monitor

        mon = (
            trace
            if isinstance(trace, Monitor)
            else Monitor(trace, rounds=rounds, every=every, rediscover=rediscover, grace=grace)
        )
        t = mon.trace
        self._check_mode(t)
        target, sockets, src, first_hops = await self._route(t)
        owner: list[TraceSession] = []

        async def run_round(rt: Trace, attempt: int) -> list[Hop]:
            session = await self._session(
                lambda: TraceSession(
                    self,
                    rt,
                    target,
                    sockets,
                    src,
                    flows_of=owner[0] if owner else None,
                    attempt=attempt,
                    keep_flows=True,
                    first_hops=first_hops,
                )
            )
            if not owner:
                owner.append(session)
            hops = []
            async for hop in stream(self._engine, session):
                if rt.dns:
                    hop = await self._named(hop, rt.dns_timeout)
                hops.append(hop)
            return hops

        try:
            async for snap in mon.run(run_round, target):
                yield snap
        finally:
            if owner:
                self._linger([], owner[0].flows, max(LINGER, 2 * t.expiry))

    def trace(self, trace: Trace) -> AsyncIterator[Hop]:
        """Deprecated alias of :meth:`results` (the name Pinger and Knocker use)."""
        warnings.warn(
            "Tracer.trace() is deprecated: use Tracer.results() (renamed in netdiag 0.2; the old "
            "name goes in 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.results(trace)

    async def route(self, trace: Trace) -> TraceResult:
        """Deprecated alias of :meth:`collect` (the name Pinger and Knocker use)."""
        warnings.warn(
            "Tracer.route() is deprecated: use Tracer.collect() (renamed in netdiag 0.2; the old "
            "name goes in 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        return await self.collect(trace)

    def prepare(self, trace: Trace) -> None:
        """Check ``trace`` can run here: nothing to open per trace in raw mode (every socket is
        opened on entry; datagram mode opens ordinary UDP sockets, which need no privilege);
        kept for symmetry with the Pinger so CLIs can drop privileges after preparing.
        Raises :class:`~netdiag.errors.PrivilegeError` for ICMP/TCP traces in datagram mode."""
        if not isinstance(trace, Trace):
            raise TypeError(f"expected a netdiag.Trace, got {trace!r}")
        self._check_mode(trace)

    async def _hops(self, trace: Trace, box: list[TraceSession] | None) -> AsyncIterator[Hop]:
        if not isinstance(trace, Trace):
            raise TypeError(f"expected a netdiag.Trace, got {trace!r}")
        self._check_mode(trace)
        target, sockets, src, first_hops = await self._route(trace)
        session = await self._session(
            lambda: TraceSession(self, trace, target, sockets, src, first_hops=first_hops)
        )
        if box is not None:
            box.append(session)
        async for hop in stream(self._engine, session):
            if trace.dns:
                hop = await self._named(hop, trace.dns_timeout)
            yield hop

    async def _route(self, trace: Trace) -> tuple[IPAddress, ProbeSockets, bytes, int | None]:
        """What every trace to ``trace.addr`` starts from: the target resolved, its family's
        sockets, the source address the kernel routes it from, and hop 1's next hops from the
        kernel's route -- asked only when the trace starts at TTL 1 and runs the MDA (fixed
        flows probe every hop alike)."""
        target = await resolve(trace.addr)
        sockets: ProbeSockets = self._family(target.version == 6)
        src = sockets.source(target)
        mda_at_hop_1 = trace.first_ttl == 1 and trace.flows is None
        return target, sockets, src, sockets.first_hops(target) if mda_at_hop_1 else None

    async def _session(self, make: Callable[[], TraceSession]) -> TraceSession:
        """``make()``, once a flow id block towards the target is free. A block is held for
        the whole trace and its linger (``LINGER`` s, so stragglers are recognised), and the
        raw mode's 4,536 source ports make ~70 blocks of 64: traces to one target beyond that
        -- a loop of short traces, or many at once -- wait for a block to come back rather
        than fail."""
        while True:
            try:
                return make()
            except FlowsExhausted:
                if self._freed is None:
                    self._freed = trio.Event()
                await self._freed.wait()

    def _block_freed(self) -> None:
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    # -- linger --------------------------------------------------------------------------------

    def _linger(self, leases: list[Lease], flows: Flows | None, seconds: float) -> None:
        """Keep a finished trace's keys registered (and its flow ids reserved, unless ``flows``
        is ``None``: a monitor's round keeps them for the next) ``seconds`` more, then release
        them."""

        def free() -> None:
            for lease in leases:
                lease.release()
            if flows is not None:
                flows.release()

        async def later() -> None:
            try:
                await trio.sleep(seconds)
            finally:
                free()

        try:
            self._engine.nursery.start_soon(later)
        except RuntimeError:  # the Tracer is closing: nothing can arrive any more
            free()

    # -- reverse DNS ---------------------------------------------------------------------------

    def _lookup(self, addr: IPAddress, timeout: float) -> None:
        if addr in self._names or addr in self._pending_names:
            return
        done = self._pending_names[addr] = trio.Event()

        async def look() -> None:
            name = None
            try:
                with trio.move_on_after(timeout):
                    name = await reverse(addr)
            finally:
                self._names[addr] = name
                self._pending_names.pop(addr, None)
                done.set()

        self._engine.nursery.start_soon(look)

    async def _named(self, hop: Hop, timeout: float) -> Hop:
        if not hop.responders:
            return hop
        with trio.move_on_after(timeout):
            for r in hop.responders:
                self._lookup(r.addr, timeout)
                ev = self._pending_names.get(r.addr)
                if ev is not None:
                    await ev.wait()
        rs = tuple(replace(r, name=self._names.get(r.addr)) for r in hop.responders)
        return replace(hop, responders=rs)
