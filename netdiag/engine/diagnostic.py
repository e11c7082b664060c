"""What Pinger, Tracer and Knocker share: a Bind, an engine, sockets per family, ``async with``.

Entering starts the engine (receive loops, expiry) and calls ``_open``, which opens each
family's sockets and hands them to the engine; leaving cancels every call still running, closes
the sockets (the engine's), then calls ``_close_family`` for what else a family holds. An
exception raised inside the ``async with`` block comes out as itself (see
:mod:`netdiag.engine.core`).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any, Self

from ..errors import PrivilegeError
from ..sock import Bind, PerFamily
from ..validate import check_int
from .core import Engine

__all__ = ["Diagnostic"]


class Diagnostic:
    """The lifecycle every diagnostic object shares; see the module docstring.

    ``privileged``: ``True`` raw sockets only, ``False`` the datagram mode only, ``None`` raw
    sockets if permitted, else the datagram mode -- one policy for every object that has both.
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
        self._stack: AsyncExitStack | None = None

    def _open(self) -> None:
        """Raw sockets, or the datagram mode when they are refused (or ``privileged=False``);
        ``privileged=True`` never falls back."""
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

    def __repr__(self) -> str:
        # What a user debugging a hang wants to see (issue 15): entered or not, the mode, the
        # families that opened, and the probes in flight (keys in the demux table).
        name = type(self).__name__
        families = [f"IPv{6 if v6 else 4}" for v6, _ in self._families.items()]
        if not families:
            return f"<{name} not open (outside async with), privileged={self.privileged}>"
        mode = f" mode={self.mode}" if self.mode else ""
        return f"<{name}{mode} families={','.join(families)} in_flight={len(self._engine.table)}>"

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        stack.callback(self._close_families)
        try:
            await stack.enter_async_context(self._engine.running())
            self._open()
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            raise RuntimeError(f"{type(self).__name__} exited without being entered")
        return await stack.__aexit__(*exc)

    def _close_families(self) -> None:
        for _, fam in self._families.items():
            self._close_family(fam)
        self._families.clear()
