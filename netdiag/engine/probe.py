"""The one template every probe of every diagnostic goes through.

A diagnostic call (:class:`ProbeSession`) supplies only what differs -- the probe's bytes and
key, how to tell an answer is really its own (token, ISN), and how to turn events into its
result type -- and this module does the rest, once:

1. **register before send** (:meth:`ProbeSession.launch`): the key is claimed before the bytes
   leave, so a reply racing ``sendmsg`` still finds its probe; a key still in flight becomes a
   local failure result, never a silent overwrite;
2. **send** with the socket layer's retry policy (a full buffer is waited out; a datagram socket
   retries past a pending error); a send the kernel refuses releases the key and becomes a
   local failure result (:meth:`ProbeSession.refused`) -- not counted as sent;
3. **account**: :attr:`~ProbeSession.sent` counts probes that left, :attr:`outstanding` those
   waiting for their answer (both readable after an interrupted call);
4. **answers** (:meth:`ProbeSession.on_event`): the diagnostic checks the answer is its own
   (:meth:`ProbeSession.answer` returns ``None`` when not), then one :func:`~.verdict.verdict`
   says first / duplicate / late, and :meth:`ProbeSession.accept` reports it;
5. **expiry** (:meth:`ProbeSession.on_expire`): a timeout result;
6. **release**: keys of probes resolved long enough ago are forgotten as the call goes on
   (:meth:`ProbeSession.forget_old`, bounded memory on a ping that runs for days), and all of
   them when the call ends (:meth:`ProbeSession.close`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Hashable, Iterator
from typing import Any, Generic, TypeVar

from ..errors import KeyInUseError
from ..sock import ProbeSocket
from ..wire.cmsg import Cmsg
from ..wire.packet import Packet
from .core import Engine
from .pacing import Pacer
from .schedule import Scheduled
from .session import Session
from .table import RELEASED, Lease
from .verdict import Verdict, verdict

__all__ = ["Probe", "ProbeSession"]

P = TypeVar("P", bound="Probe")
R = TypeVar("R")


class Probe(Lease):
    """Per-probe state the template needs; diagnostics subclass it with their own fields
    (``__slots__`` throughout: a sweep holds one per target).

    A probe sent through :meth:`ProbeSession.send_now` is its own demux-table lease (``lease.
    probe is lease``): one object per probe in flight instead of two. :meth:`ProbeSession.
    launch` (a sender task of its own) registers a separate lease, as before."""

    __slots__ = ("answered", "due", "sent_ns", "tx_kernel")

    def __init__(self) -> None:
        self.probe = self
        self.state = RELEASED  # until the table adopts it
        #: a first answer arrived (later ones are duplicates)
        self.answered = False
        #: the original deadline (trio clock); ``lease.deadline`` becomes inf once answered
        self.due = 0.0
        #: CLOCK_REALTIME nanoseconds read just before ``sendmsg`` (0: not sent), replaced by
        #: the kernel's transmit stamp when the socket has them (issue 12)
        self.sent_ns = 0
        #: ``sent_ns`` is the kernel's transmit stamp (set by the socket layer)
        self.tx_kernel = False

    def rtt(self, packet: Packet) -> float | None:
        """Seconds from send to the kernel's receive stamp of ``packet`` (clamped at 0: a
        wall-clock step backwards must not give a negative RTT)."""
        if not self.sent_ns:
            return None
        return max(packet.stamp_ns - self.sent_ns, 0) / 1e9


class ProbeSession(Session, Generic[P, R]):
    """One diagnostic call built on the template; see the module docstring.

    Subclasses implement :meth:`answer`, :meth:`timeout` and :meth:`refused`, and either
    also derive from :class:`~.schedule.Scheduled` and implement its ``step`` (the engine's
    scheduler sends: ping, knock), which calls :meth:`send_now` per probe, or implement
    ``_send_all`` (a sender task of its own: trace), which calls :meth:`launch`.
    """

    def __init__(self, engine: Engine, expiry: float) -> None:
        super().__init__()
        self.due = -math.inf  # a new call wants to send at once
        self.engine = engine
        self.expiry = expiry
        #: probes that left (a refused send is not counted)
        self.sent = 0
        #: leases of this call, oldest first
        self.leases: deque[Lease] = deque()
        #: what :meth:`unresolved` said when the call was closed (its leases are gone then)
        self._unresolved_at_close: list[R] | None = None

    # -- what a diagnostic supplies --------------------------------------------------------

    def answer(self, probe: P, event: Any, packet: Packet) -> R | None:
        """The result ``event`` (from the classifier) means for ``probe``, or ``None`` when
        the event only matched the key and is not really an answer to it (wrong token, wrong
        ISN: another process's traffic, or a forgery)."""
        raise NotImplementedError

    def timeout(self, probe: P) -> R:
        """The result of ``probe`` when nothing answered before its deadline."""
        raise NotImplementedError

    def refused(self, probe: P, text: str) -> R:
        """The result of ``probe`` when it could not be sent (``text`` says why). A diagnostic
        that treats this as fatal raises instead."""
        raise NotImplementedError

    def accept(self, lease: Lease, probe: P, result: R, verdict: Verdict) -> None:
        """Report an answer: by default push the result, marked ``duplicate`` or ``late``
        (result types are dataclasses with those two fields)."""
        if verdict is Verdict.FIRST:
            self.push(result)
        elif verdict is Verdict.DUPLICATE:
            self.push(dataclasses.replace(result, duplicate=True))  # type: ignore[type-var]
        else:
            self.push(dataclasses.replace(result, late=True))  # type: ignore[type-var]

    def expired(self, lease: Lease, probe: P) -> None:
        """Report an expiry: by default push :meth:`timeout`."""
        self.push(self.timeout(probe))

    def forget(self, lease: Lease) -> None:
        """Release what one probe holds: its key (and, in a subclass, more -- a reserved
        port, say)."""
        lease.release()

    # -- the template ----------------------------------------------------------------------

    async def launch(
        self,
        key: Hashable,
        probe: P,
        sock: ProbeSocket,
        data: bytes,
        dst: str,
        anc: list[Cmsg],
        *,
        port: int = 0,
        now: float | None = None,
        pacer: Pacer | None = None,
    ) -> bool:
        """Register ``key`` for ``probe``, send ``data`` to ``dst`` on ``sock``, account for
        it. Returns False when it could not (a failure result was pushed, or raised)."""
        try:
            lease = self.engine.register(key, self, self.expiry, probe, now)
        except KeyInUseError:
            self.push(self.refused(probe, "probe key still in flight"))
            return False
        probe.due = lease.deadline
        leases = self.leases
        leases.append(lease)
        self.outstanding += 1
        try:
            try:
                probe.sent_ns = sock.send_nowait(data, dst, anc, port, probe)
            except BlockingIOError:
                probe.sent_ns = await sock.send(data, dst, anc, port, probe)
                if pacer is not None:
                    pacer.waited()
        except OSError as e:
            if leases and leases[-1] is lease:
                leases.pop()
            self.forget(lease)
            self.outstanding -= 1
            self.push(self.refused(probe, e.strerror or str(e)))
            return False
        self.sent += 1
        return True

    def send_now(
        self,
        key: Hashable,
        probe: P,
        sock: ProbeSocket,
        data: bytes,
        dst: str,
        anc: list[Cmsg],
        now: float,
        port: int = 0,
    ) -> bool:
        """:meth:`launch` for the scheduler: never waits. A full send buffer undoes the
        registration and raises ``BlockingIOError`` (the caller gives the probe back and the
        scheduler waits until the socket is writable); anything else is as :meth:`launch`."""
        try:
            self.engine.adopt(probe, key, self, self.expiry, now)
        except KeyInUseError:
            self.push(self.refused(probe, "probe key still in flight"))
            return False
        probe.due = probe.deadline
        leases = self.leases
        leases.append(probe)
        self.outstanding += 1
        try:
            probe.sent_ns = sock.send_nowait(data, dst, anc, port, probe)
        except OSError as e:
            if leases and leases[-1] is probe:
                leases.pop()
            self.forget(probe)
            self.outstanding -= 1
            if isinstance(e, BlockingIOError):
                raise
            self.push(self.refused(probe, e.strerror or str(e)))
            return False
        self.sent += 1
        return True

    def finish_sending(self) -> None:
        """Every probe was handed out: no more sends; the call ends once all are resolved.
        The caller is woken only if that is now (the answers still due wake it otherwise)."""
        self.done_sending = True
        self.due = math.inf
        if self.outstanding == 0 or self.failure is not None:
            self.wake()

    def fail(self, error: Exception) -> None:
        self.failure = error
        self.finish_sending()

    def on_event(self, lease: Lease, event: Any, packet: Packet) -> None:
        probe: P = lease.probe
        result = self.answer(probe, event, packet)
        if result is None:
            return
        v = verdict(lease.expired or self.closed, probe.answered)
        if v is Verdict.FIRST:
            probe.answered = True
            lease.finish()
            self.outstanding -= 1
        self.accept(lease, probe, result, v)

    def on_expire(self, lease: Lease) -> None:
        self.outstanding -= 1
        self.expired(lease, lease.probe)

    def forget_old(self, now: float, grace: float) -> None:
        """Forget probes resolved more than ``grace`` seconds past their deadline: no answer
        can matter any more (a later one would be foreign). Unresolved ones are kept."""
        leases = self.leases
        while leases:
            lease = leases[0]
            probe = lease.probe
            if probe.due + grace >= now or (lease.active and not probe.answered):
                break
            leases.popleft()
            self.forget(lease)

    def unresolved(self) -> Iterator[R]:
        """:meth:`timeout` of every probe that left and is still waiting for its answer (as
        of the close, once the call is closed)."""
        if self._unresolved_at_close is not None:
            yield from self._unresolved_at_close
            return
        for lease in self.leases:
            if lease.active and not lease.probe.answered:
                yield self.timeout(lease.probe)

    def close(self) -> None:
        if not self.closed and isinstance(self, Scheduled):
            self.engine.scheduler.discard(self)
        if self._unresolved_at_close is None:
            self._unresolved_at_close = list(self.unresolved())
        super().close()
        leases = self.leases
        while leases:
            self.forget(leases.popleft())
