"""What a caller iterates: a diagnostic call's results, as they come.

:class:`ResultStream` is the object ``Pinger.results()``, ``Knocker.results()``, ``sweep()`` and
the Tracer's hop iterator return. It starts the call on first iteration, yields results until
every probe is resolved, and closes the call when the loop ends, breaks, is cancelled or raises
(each probe's key is released). Its counters (:attr:`~ResultStream.sent`,
:attr:`~ResultStream.outstanding`) and :meth:`~ResultStream.unresolved` stay readable after the
loop was interrupted, so a summary printed on Ctrl-C counts the requests that left but were
still waiting for their answer -- as iputils does.

Errors come out of ``async for`` as themselves: a bad host name raises
:class:`~netdiag.errors.ResolveError`, not a group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

from .core import Engine
from .schedule import Scheduled
from .session import Session

__all__ = ["ResultStream", "in_order", "stream"]

R = TypeVar("R")


class ResultStream(Generic[R]):
    """An async iterator over one call's results; see the module docstring.

    ``start`` builds the call's session (resolving names, say) on first iteration, so nothing
    is sent before the caller starts iterating.
    """

    def __init__(self, engine: Engine, start: Callable[[], Awaitable[Session]]) -> None:
        self._engine = engine
        self._start: Callable[[], Awaitable[Session]] | None = start
        self.session: Session | None = None
        self._done = False

    def __aiter__(self) -> ResultStream[R]:
        return self

    async def __anext__(self) -> R:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._start is not None:
                start, self._start = self._start, None
                self.session = await start()
                if isinstance(self.session, Scheduled):  # ping, knock: the engine's sender
                    self._engine.nursery  # noqa: B018 -- raises if the object is not entered
                    self._engine.scheduler.add(self.session)
                else:  # its own sender task (a trace)
                    await self._engine.nursery.start(self.session.run_sender)
            s = self.session
            assert s is not None
            while True:
                if s.events:
                    result: R = s.events.popleft()
                    return result
                if s.failure is not None:
                    raise s.failure
                if s.finished:
                    raise StopAsyncIteration
                await s.wait()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """End the call now: stop sending and release every probe's key. Idempotent."""
        self._done = True
        self._start = None
        if self.session is not None:
            self.session.close()

    async def aclose(self) -> None:
        self.close()

    def __del__(self) -> None:
        # A loop left with `break` drops the stream: stop its sender at once, as an async
        # generator's finaliser would (later).
        if not self._done and self.session is not None:
            self.session.close()

    @property
    def sent(self) -> int:
        """Probes that left so far (0 before the first iteration)."""
        return getattr(self.session, "sent", 0)

    @property
    def outstanding(self) -> int:
        """Probes that left and are still waiting for their answer (when the loop was
        interrupted: the ones whose fate is unknown)."""
        s = self.session
        return s.outstanding if s is not None else 0

    def unresolved(self) -> list[Any]:
        """The result each still-waiting probe would get if it expired now (ping: a
        ``"timeout"``, knock: ``"filtered"``), for summaries of an interrupted call."""
        s = self.session
        get = getattr(s, "unresolved", None)
        return list(get()) if get is not None else []


def stream(engine: Engine, session: Session) -> ResultStream[Any]:
    """A :class:`ResultStream` over a session that is already built."""

    async def start() -> Session:
        return session

    return ResultStream(engine, start)


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
