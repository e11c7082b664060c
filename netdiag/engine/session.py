"""One diagnostic call (a ping, a sweep, a knock, a trace): its sender task and result queue.

A :class:`Session` is what a caller's ``async for`` drains (through
:class:`~netdiag.engine.stream.ResultStream`): the diagnostic's sender task runs in the object's
nursery and pushes results; the caller waits for them. It knows nothing about probes -- the
per-probe template is :class:`~netdiag.engine.probe.ProbeSession`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

__all__ = ["Session"]


class Session:
    """Result queue + one sender task + "is this call finished?".

    Subclasses implement :meth:`_send_all` and push results with :meth:`push`.
    """

    def __init__(self) -> None:
        self.events: deque[Any] = deque()
        #: probes sent (or being sent) and not yet resolved
        self.outstanding = 0
        self.done_sending = False
        self.closed = False
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

    def close(self) -> None:
        """Stop sending (subclasses also release what they hold, and call this)."""
        self.closed = True
        if self._scope is not None:
            self._scope.cancel()

    # -- for the stream --------------------------------------------------------------------

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
