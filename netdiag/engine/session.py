"""One diagnostic call (a ping, a sweep, a knock, a trace): its sender and result queue.

A :class:`Session` is what a caller's ``async for`` drains (through
:class:`~netdiag.engine.stream.ResultStream`): whoever sends -- the engine's scheduler for ping
and knock (:mod:`.schedule`), the session's own task in the object's nursery for a trace
(:meth:`Session.run_sender`) -- pushes results; the caller waits for them. Waiting parks the
caller's task directly (no event object per wait), and a push reschedules it. It knows nothing
about probes -- the per-probe template is :class:`~netdiag.engine.probe.ProbeSession`.
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
        self._waiter: Any = None  # the task parked in wait(), if any
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
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Until a result is queued, the call settled or failed."""
        if self.events or self.settled or self.failure:
            await trio.lowlevel.checkpoint()
            return
        self._waiter = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

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
