"""Kernel transmit timestamps (issue 12): a ping's RTT runs from the kernel's stamp of the
request leaving to the kernel's stamp of the reply arriving, on raw and datagram sockets, with
per-send keys (SCM_TS_OPT_ID) or the socket's own counter; results say which send time they
used."""

from __future__ import annotations

import json

import pytest
import trio
from lab import Lab
from test_unprivileged import ping_group, unprivileged  # noqa: F401 (fixture)

from netdiag import Ping, Pinger

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("optid", [True, False])
async def test_ping_rtts_start_at_the_kernel_stamp(addr: str, optid: bool) -> None:
    async with Pinger() as p:
        sock = p._family(":" in addr).sock  # test-only peek at the socket
        assert sock.tx_stamps
        if not optid:  # the fallback for kernels before 6.13: the socket's own key counter
            sock.tx.optid = False
        rs = await p.collect(Ping(addr, count=20, interval=0.005))
        used = sock.tx_stamps_used
    assert [r.kind for r in rs] == ["reply"] * 20
    assert all(r.tx_kernel and r.rtt is not None and 0 < r.rtt < 0.5 for r in rs)
    assert used == 20


async def test_without_kernel_stamps_the_user_clock_is_used_and_said() -> None:
    async with Pinger() as p:
        for _, fam in p._families.items():
            fam.sock.tx_stamps = False  # as on a kernel that refused SO_TIMESTAMPING
        rs = await p.collect(Ping("127.0.0.1", count=3, interval=0.005))
    assert [r.kind for r in rs] == ["reply"] * 3
    assert not any(r.tx_kernel for r in rs)
    assert all(r.as_dict()["tx_kernel"] is False for r in rs)


@pytest.mark.parametrize("optid", [True, False])
async def test_a_refused_send_does_not_shift_later_stamps(clean_lab: Lab, optid: bool) -> None:
    """Sends netfilter refuses (EPERM, after the kernel took a stamp key) interleaved with ones
    that leave: with per-send keys, and with the counter fallback that knows EPERM takes a
    key, every stamp still belongs to its own probe."""
    lab = clean_lab
    dst, blocked = str(lab.dst.v4), str(lab.node("r3").addr(4))
    lab.nft("src", f"table ip t {{ chain o {{ type filter hook output priority 0; "
                   f"ip daddr {blocked} drop; }}; }}")  # fmt: skip
    with lab.enter("src"):
        async with Pinger() as p:
            p._family(False).sock.tx.optid = optid
            async with trio.open_nursery() as n:
                n.start_soon(p.collect, Ping(blocked, count=10, interval=0.005, expiry=0.5))
                rs = await p.collect(Ping(dst, count=10, interval=0.005))
    assert [r.kind for r in rs] == ["reply"] * 10
    assert all(r.tx_kernel and r.rtt is not None and 0 < r.rtt < 0.5 for r in rs)


TX_SCRIPT = """
import json, sys, trio
from netdiag import Ping, Pinger

async def main():
    async with Pinger(privileged=False) as p:
        rs = await p.collect(Ping(sys.argv[1], count=5, interval=0.01, expiry=1))
        print(json.dumps({"mode": p.mode, "kinds": [r.kind for r in rs],
                          "tx": [r.tx_kernel for r in rs]}))

trio.run(main)
"""


@pytest.mark.lab
def test_datagram_sockets_stamp_too(ping_group: Lab) -> None:  # noqa: F811
    out = unprivileged(ping_group, "-c", TX_SCRIPT, str(ping_group.dst.v6))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc == {"mode": "datagram", "kinds": ["reply"] * 5, "tx": [True] * 5}


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
async def test_knock_rtts_start_at_the_kernel_stamp_too(addr: str) -> None:
    """The Knocker's SYNs are stamped as they leave, as the Pinger's echoes: open and closed
    answers alike, through ``collect`` and ``sweep``."""
    import socket

    from netdiag import Knock, Knocker

    listener = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    listener.bind((addr, 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    closed = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    closed.bind((addr, 0))  # bound, never listening: the kernel answers RST
    try:
        async with Knocker() as k:
            rs = await k.collect(Knock(addr, port, count=5, interval=0.005, expiry=1.0))
            rs += await k.collect(
                Knock(addr, closed.getsockname()[1], count=5, interval=0.005, expiry=1.0)
            )
            rs += [r async for r in k.sweep([(addr, port)] * 3, expiry=1.0)]
    finally:
        listener.close()
        closed.close()
    assert [r.kind for r in rs] == ["open"] * 5 + ["closed"] * 5 + ["open"] * 3
    assert all(r.tx_kernel and r.rtt is not None and 0 < r.rtt < 0.5 for r in rs)
    assert all(r.as_dict()["tx_kernel"] is True for r in rs)
