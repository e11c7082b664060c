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

__all__ = ["Classifier", "EngineStats", "receive_loop"]

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


async def receive_loop(
    sock: ProbeSocket, classify: Classifier, table: DemuxTable, stats: EngineStats, batch: int
) -> None:
    """Receive from ``sock`` forever, handing each packet that ``classify`` maps to a
    registered key to that lease's sink."""
    leases = table.leases
    drops = sock.drops
    warned = -math.inf
    while True:
        await sock.wait_readable()
        packets, err = sock.recv_batch(batch)
        if err is not None:
            stats.socket_errors += 1
            log.warning("receive error on %s socket: %s", _family(sock), err)
        if sock.drops != drops:
            # The kernel threw replies away: they will show as timeouts. Say why, at most
            # once a second per socket, so an overloaded host is not also flooded with logs.
            lost = (sock.drops - drops) & 0xFFFFFFFF
            drops = sock.drops
            stats.kernel_drops += lost
            if trio.current_time() - warned >= _WARN_EVERY:
                warned = trio.current_time()
                log.warning(
                    "receive buffer full on %s socket: the kernel dropped %d packets "
                    "(%d so far); their probes will be reported lost. A bigger rcvbuf, "
                    "a lower rate or a less busy process helps",
                    _family(sock),
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
        if len(packets) >= batch:
            # A full batch: let the probes' consumers run before draining more.
            await trio.lowlevel.checkpoint()
