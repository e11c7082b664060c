"""The engine without privileges: a UDP socket on loopback stands in for a raw socket.

These tests pin the engine's promises: keys registered before sending, one expiry mechanism,
late replies reported as late (never to another probe), leases removed on every exit path, and
a receive loop that survives any packet.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing

from netdiag.engine import Engine, Lease
from netdiag.errors import KeyInUseError
from netdiag.sock import Packet, ProbeSocket


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any, bool]] = []

    def on_event(self, lease: Lease, event: Any, packet: Packet) -> None:
        self.events.append(("event", event, lease.expired))
        if event == "boom":
            raise RuntimeError("sink bug")
        lease.finish()

    def on_expire(self, lease: Lease) -> None:
        self.events.append(("expire", lease.key, True))


def udp_rawsocket() -> tuple[ProbeSocket, socket.socket]:
    """A ProbeSocket on an ordinary UDP socket (no privileges needed), and a sender to it."""
    rs = ProbeSocket.udp_flow(False, bytes([127, 0, 0, 1]), None)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(("127.0.0.1", rs.local_port()))
    return rs, tx


def classify(pkt: Packet) -> tuple[str, str] | None:
    text = pkt.data.decode()
    if text == "raise":
        raise ValueError("classifier bug")
    if text == "ignore":
        return None
    key, _, event = text.partition(":")
    return key, event


async def test_reply_reaches_the_registered_lease_and_garbage_does_not_kill_the_loop() -> None:
    rs, tx = udp_rawsocket()
    sink = Recorder()
    async with Engine() as engine:
        engine.add_socket(rs, classify)
        lease = engine.register("a", sink, expiry=10)
        for payload in (b"raise", b"\xff\xfe", b"ignore", b"nobody:x", b"a:boom", b"a:hello"):
            tx.send(payload)
        with trio.fail_after(5):
            while len(sink.events) < 2:
                await trio.sleep(0.01)
        assert [e[1] for e in sink.events] == ["boom", "hello"]
        s = engine.stats
        assert s.classifier_errors == 2  # "raise" and the undecodable bytes
        assert s.ignored == 1 and s.unmatched == 1 and s.sink_errors == 1 and s.matched == 2
        lease.release()
        assert engine.table == {}
    tx.close()


async def test_kernel_timestamp_is_used() -> None:
    rs, tx = udp_rawsocket()
    got: list[Packet] = []

    class Sink(Recorder):
        def on_event(self, lease: Lease, event: Any, packet: Packet) -> None:
            got.append(packet)

    async with Engine() as engine:
        engine.add_socket(rs, classify)
        engine.register("k", Sink(), expiry=10)
        tx.send(b"k:x")
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
    assert got[0].kernel_stamp
    tx.close()


async def test_register_rejects_a_live_key() -> None:
    async with Engine() as engine:
        sink = Recorder()
        with engine.register("k", sink, 1), pytest.raises(KeyInUseError):
            engine.register("k", sink, 1)
        # Released by the context manager: the key is free again.
        engine.register("k", sink, 1).release()
        assert engine.table == {}


async def test_expiry_is_one_mechanism_in_deadline_order() -> None:
    sink = Recorder()
    async with Engine() as engine:
        start = trio.current_time()
        engine.register("late", sink, 3.0)
        engine.register("early", sink, 1.0)  # registered later, due earlier: must fire first
        answered = engine.register("answered", sink, 0.5)
        answered.finish()  # an answered probe never expires
        await trio.sleep(3.5)
        assert [e[1] for e in sink.events] == ["early", "late"]
        assert engine.stats.expired == 2
        assert trio.current_time() - start >= 3.0
        # Expired leases stay registered until released, so late replies are recognised.
        assert set(engine.table) == {"late", "early", "answered"}
        # Only the engine's own tasks run: one expiry task, no timer per probe.
        assert len(engine.nursery.child_tasks) == 2  # expiry + scheduler


async def test_late_reply_goes_to_its_own_probe_marked_late() -> None:
    rs, tx = udp_rawsocket()
    sink = Recorder()
    async with Engine() as engine:
        engine.add_socket(rs, classify)
        old = engine.register("p1", sink, 0.05)
        await trio.sleep(0.2)
        assert sink.events == [("expire", "p1", True)]
        new = engine.register("p2", sink, 10)
        tx.send(b"p1:reply")  # the answer to the expired probe arrives now
        with trio.fail_after(5):
            while len(sink.events) < 2:
                await trio.sleep(0.01)
        assert sink.events[1] == ("event", "reply", True)  # late, credited to p1 only
        old.release()
        new.release()
        assert engine.table == {}
    tx.close()


async def test_cancellation_releases_leases() -> None:
    sink = Recorder()
    async with Engine() as engine:

        async def prober(n: int) -> None:
            with engine.register(("probe", n), sink, 60):
                await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            for n in range(1000):
                nursery.start_soon(prober, n)
            await trio.sleep(0.1)
            assert len(engine.table) == 1000
            nursery.cancel_scope.cancel()
        assert engine.table == {}


async def test_engine_closes_its_sockets() -> None:
    rs, tx = udp_rawsocket()
    async with Engine() as engine:
        engine.add_socket(rs, classify)
    assert rs.closed
    tx.close()


def test_mock_clock_expiry() -> None:
    """With trio's autojump clock, a 1-hour expiry is checked without waiting an hour."""

    async def main() -> None:
        sink = Recorder()
        async with Engine() as engine:
            engine.register("k", sink, 3600)
            await trio.sleep(3599)
            assert sink.events == []
            await trio.sleep(2)
            assert sink.events == [("expire", "k", True)]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_remove_socket_stops_its_loop_and_closes_it_alone() -> None:
    keep, tx_keep = udp_rawsocket()
    gone, tx_gone = udp_rawsocket()
    early, _tx = udp_rawsocket()
    sink = Recorder()
    async with Engine() as engine:
        engine.add_socket(keep, classify)
        engine.add_socket(gone, classify)
        await trio.sleep(0.05)  # both loops are waiting on their sockets
        assert len(engine.nursery.child_tasks) == 4  # expiry, scheduler, two receive loops
        engine.remove_socket(gone)
        # Removed before its loop ever ran: the loop must not touch the closed descriptor.
        engine.add_socket(early, classify)
        engine.remove_socket(early)
        engine.remove_socket(gone)  # idempotent
        await trio.sleep(0.05)
        assert gone.closed and early.closed
        assert len(engine.nursery.child_tasks) == 3  # expiry, scheduler, the kept loop
        assert engine.stats.socket_errors == 0
        engine.register("a", sink, expiry=10)
        tx_keep.send(b"a:still")
        with trio.fail_after(5):
            while not sink.events:
                await trio.sleep(0.01)
        assert sink.events == [("event", "still", False)]
        assert not keep.closed
    assert keep.closed
    engine.remove_socket(keep)  # after the engine closed: harmless
    for s in (tx_keep, tx_gone, _tx):
        s.close()


async def test_a_reply_read_late_by_a_busy_process_is_not_called_late() -> None:
    """A reply that reached the socket before its probe's deadline, while the process was too
    busy to read it, is credited: the expiry task drains the sockets before expiring. (Without
    that, whether the receive task or the expiry task runs first after the stall is trio's
    coin flip; ten rounds make a regression all but certain to show.)"""
    import time

    rs, tx = udp_rawsocket()
    sink = Recorder()
    async with Engine() as engine:
        engine.add_socket(rs, classify)
        await trio.sleep(0.01)  # the receive loop is waiting on the socket
        for i in range(10):
            key = f"busy{i}"
            lease = engine.register(key, sink, 0.02)
            tx.send(f"{key}:reply".encode())
            time.sleep(0.05)  # the process is busy past the deadline: no checkpoint
            await trio.sleep(0.05)
            assert sink.events[-1] == ("event", "reply", False), sink.events
            lease.release()
        assert engine.stats.expired == 0
    tx.close()
