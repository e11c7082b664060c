"""The receive loop: one per socket, turning datagrams into events for the probes they answer.

A receive loop never exits because of a packet: classifier and sink errors are counted and
logged, socket errors are counted, and the loop goes on. After one wake-up it drains the socket
in a batch, so a burst of thousands of replies costs one trip through the event loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import trio

from ..sock import ProbeSocket
from ..wire.packet import Packet
from .table import DemuxTable

__all__ = ["Classifier", "EngineStats", "Receiver"]

log = logging.getLogger("netdiag.engine")

#: A classifier maps one received packet to ``(key, event)``, or ``None`` for "not ours". It is
#: pure protocol code (netdiag.wire); the engine only looks the key up.
Classifier = Callable[[Packet], "tuple[Hashable, Any] | None"]

#: Seconds between two "receive buffer full" warnings of one socket.
_WARN_EVERY = 1.0


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
    #: kernel packet filters (cBPF) attached or replaced: with one on a socket, ``received``
    #: counts what the filter passed, and ``ignored + unmatched`` what Python then rejected
    filter_updates: int = 0


def _family(sock: ProbeSocket) -> str:
    return "IPv6" if sock.v6 else "IPv4"


class Receiver:
    """One socket's receive side: drain it and hand each packet that ``classify`` maps to a
    registered key to that lease's sink. :meth:`run` is the loop a task runs; :meth:`drain` is
    one non-blocking pass, which the expiry task also calls before it declares probes lost --
    so a reply that arrived before its deadline but was not read yet (a busy process) is
    credited, not reported late."""

    __slots__ = ("batch", "classify", "drops", "sock", "stats", "table", "warned")

    def __init__(
        self,
        sock: ProbeSocket,
        classify: Classifier,
        table: DemuxTable,
        stats: EngineStats,
        batch: int,
    ) -> None:
        self.sock = sock
        self.classify = classify
        self.table = table
        self.stats = stats
        self.batch = batch
        self.drops = sock.drops
        self.warned = -math.inf

    async def run(self) -> None:
        """Receive forever."""
        sock = self.sock
        while True:
            await sock.wait_readable()
            if self.drain() >= self.batch:
                # A full batch: let the probes' consumers run before draining more.
                await trio.lowlevel.checkpoint()

    def drain(self) -> int:
        """Read and dispatch up to one batch without blocking; return how many packets."""
        sock, stats = self.sock, self.stats
        packets, err = sock.recv_batch(self.batch)
        if err is not None:
            stats.socket_errors += 1
            log.warning("receive error on %s socket: %s", _family(sock), err)
        if sock.drops != self.drops:
            self._dropped()
        leases = self.table.leases
        classify = self.classify
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
            lease = leases.get(key)
            if lease is None:
                stats.unmatched += 1
                continue
            stats.matched += 1
            try:
                lease.sink.on_event(lease, event, pkt)
            except Exception:
                stats.sink_errors += 1
                log.exception("sink failed on %r", key)
        return len(packets)

    def _dropped(self) -> None:
        """The kernel threw replies away: they will show as timeouts. Say why, at most once a
        second per socket, so an overloaded host is not also flooded with logs."""
        sock, stats = self.sock, self.stats
        lost = (sock.drops - self.drops) & 0xFFFFFFFF
        self.drops = sock.drops
        stats.kernel_drops += lost
        if trio.current_time() - self.warned >= _WARN_EVERY:
            self.warned = trio.current_time()
            log.warning(
                "receive buffer full on %s socket: the kernel dropped %d packets "
                "(%d so far); their probes will be reported lost. A bigger rcvbuf, "
                "a lower rate or a less busy process helps",
                _family(sock),
                lost,
                stats.kernel_drops,
            )
