"""The transmit-stamp bookkeeping (netdiag/sock/tx_stamps.py) without a socket: which send a
stamp belongs to, with per-send keys and with the kernel's counter, refused sends included."""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pytest

from netdiag.sock import tx_stamps
from netdiag.sock.tx_stamps import TxStamps
from netdiag.wire import cmsg


@dataclass
class P:
    sent_ns: int
    tx_kernel: bool = False


def test_per_send_keys_travel_with_each_send() -> None:
    tx = TxStamps()
    probes = [P(1_000 + i) for i in range(3)]
    for p in probes:
        assert tx.ancillary([]) == [cmsg.ts_opt_id(tx.key)]
        tx.sent(p)
    tx.stamped(2, 5_000)
    tx.stamped(0, 3_000)
    assert [(p.sent_ns, p.tx_kernel) for p in probes] == [(3_000, True), (1_001, False),
                                                          (5_000, True)]  # fmt: skip
    assert tx.used == 2 and list(tx.pending) == [1]
    tx.stamped(0, 9_999)  # a second stamp for a key: nobody waits for it any more
    assert probes[0].sent_ns == 3_000 and tx.used == 2


def test_a_kernel_without_per_send_keys_falls_back_to_its_counter() -> None:
    tx = TxStamps()
    assert tx.refused(errno.EINVAL) is True  # retry the send without the key
    assert not tx.optid and tx.key == 0 and tx.ancillary([]) == []
    assert tx.refused(errno.EINVAL) is False  # only once


def test_counter_mode_skips_the_key_of_a_send_netfilter_refused() -> None:
    tx = TxStamps()
    tx.refused(errno.EINVAL)
    a, b = P(1_000), P(2_000)
    tx.sent(a)  # key 0
    assert tx.refused(errno.EPERM) is False  # refused after the kernel took key 1
    tx.sent(b)  # key 2
    tx.stamped(2, 2_500)
    tx.stamped(0, 1_500)
    assert (a.sent_ns, b.sent_ns) == (1_500, 2_500) and a.tx_kernel and b.tx_kernel
    tx.refused(errno.ENOBUFS)  # refused before a key was taken: no skip
    assert tx.key == 3


def test_counter_mode_takes_only_plausible_stamps() -> None:
    tx = TxStamps()
    tx.refused(errno.EINVAL)
    early, late = P(10_000), P(10_000)
    tx.sent(early)
    tx.sent(late)
    tx.stamped(0, 9_000)  # before the clock read before its send: not its own
    tx.stamped(1, 10_000 + tx_stamps.PLAUSIBLE_NS)  # a second later: not its own either
    assert not early.tx_kernel and not late.tx_kernel and tx.used == 0


def test_stamps_never_sent_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tx_stamps, "PENDING_MAX", 4)
    tx = TxStamps()
    for i in range(10):
        tx.sent(P(i))
    assert list(tx.pending) == [6, 7, 8, 9]
    tx.sent(None)  # a send nobody times: its key is used, nothing waits
    assert tx.key == 11 and len(tx.pending) == 4
