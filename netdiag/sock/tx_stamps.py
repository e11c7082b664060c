"""Which send a kernel transmit stamp belongs to: the bookkeeping of one socket's TX stamps.

With ``SO_TIMESTAMPING`` on, the kernel reports each packet's transmit time on the socket's
error queue, tagged with a 32-bit key. Since Linux 6.13 the sender chooses the key per send
(``SCM_TS_OPT_ID``); before, the socket counts its sends itself and the key is that counter.
:class:`TxStamps` keeps both cases straight without touching a socket: it says what ancillary
data a send carries, is told which sends left (or were refused after the kernel took a key),
and hands each stamp to the probe it belongs to. :class:`~netdiag.sock.ProbeSocket` does the
IO (see ``enable_tx_stamps``).
"""

from __future__ import annotations

import errno
from typing import Any

from ..wire import cmsg

__all__ = ["TxStamps"]

#: Transmit stamps awaited at most (a dropped packet never gets one): the oldest go first.
PENDING_MAX = 1 << 16
#: Send errors raised after the kernel took a transmit-stamp key (netfilter's verdict on
#: the way out): in the counter fallback such a send still moves the key on.
KEY_TAKEN = frozenset({errno.EPERM})
#: In the counter fallback, how far after the clock read before a send its stamp may be.
PLAUSIBLE_NS = 1_000_000_000


class TxStamps:
    """One socket's transmit-stamp keys and the probes waiting for their stamps.

    A probe is any object with ``sent_ns`` (the clock read before ``sendmsg``, replaced by the
    kernel's stamp) and ``tx_kernel`` (set True when it is)."""

    __slots__ = ("key", "optid", "pending", "used")

    def __init__(self) -> None:
        #: the key of the next send
        self.key = 0
        #: per-send keys (SCM_TS_OPT_ID) until the kernel refuses them; then its counter
        self.optid = True
        self.pending: dict[int, Any] = {}
        #: stamps that replaced a probe's user-space send time
        self.used = 0

    def ancillary(self, anc: list[cmsg.Cmsg]) -> list[cmsg.Cmsg]:
        """The ancillary data of the next send: ``anc`` plus its key, in per-send-key mode."""
        return [*anc, cmsg.ts_opt_id(self.key)] if self.optid else anc

    def refused(self, err: int) -> bool:
        """A send failed with ``err``. True: the kernel refuses per-send keys (EINVAL, before
        6.13) -- from now on its counter is the key, and the send should be tried again. In
        counter mode a send refused after the kernel took its key (netfilter) moves the key
        on, so later stamps still match their sends."""
        if self.optid and err == errno.EINVAL:
            self.optid = False  # the counter started at 0 and took no key
            return True
        if not self.optid and err in KEY_TAKEN:
            self.key = (self.key + 1) & 0xFFFFFFFF
        return False

    def sent(self, probe: Any | None) -> None:
        """A send left: its key is ``probe``'s (keys advance on every send, as the kernel's
        counter does in the fallback mode)."""
        key = self.key
        self.key = (key + 1) & 0xFFFFFFFF
        if probe is not None:
            pending = self.pending
            if len(pending) >= PENDING_MAX:  # stamps the kernel never sent (dropped)
                del pending[next(iter(pending))]
            pending[key] = probe

    def stamped(self, key: int, stamp_ns: int) -> None:
        """The kernel's stamp for ``key``: it becomes the probe's send time."""
        probe = self.pending.pop(key, None)
        if probe is None:
            return
        # With the socket's own counter a send refused after the kernel took its key would
        # shift every later key by one: only a stamp no earlier than the clock read before
        # that send, and close to it, can be its own.
        if self.optid or 0 <= stamp_ns - probe.sent_ns < PLAUSIBLE_NS:
            probe.sent_ns = stamp_ns
            probe.tx_kernel = True
            self.used += 1
