"""Pinger across the namespace lab: routers, TTLs, filtered sequence numbers, the CLI."""

from __future__ import annotations

import ipaddress
import json

import pytest
import trio
from lab import Lab

from netdiag import Bind, Ping, Pinger, PingStats
from netdiag.testing import UNRESOLVABLE as NO_SUCH_HOST
from netdiag.wire.icmp import ErrorKind

pytestmark = pytest.mark.lab

V = [4, 6]


def dst(lab: Lab, v: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return lab.dst.v4 if v == 4 else lab.dst.v6


@pytest.mark.parametrize("v", V)
async def test_reply_ttl_is_64_minus_routers(lab: Lab, v: int) -> None:
    with lab.enter("src"):
        async with Pinger() as pinger:
            results = await pinger.collect(Ping(dst(lab, v), count=3, interval=0.05))
    assert [r.kind for r in results] == ["reply"] * 3
    # src -> r1 -> r2a|r2b -> r3 -> dst: three routers on the way back.
    assert {r.ttl for r in results} == {61}
    assert {r.responder for r in results} == {dst(lab, v)}


@pytest.mark.parametrize("v", V)
async def test_exact_loss_accounting_with_dropped_sequences(clean_lab: Lab, v: int) -> None:
    lab = clean_lab
    lab.nft(
        "dst",
        """
        table inet t {
            chain in {
                type filter hook input priority 0;
                icmp type echo-request icmp sequence { 2, 4 } drop
                icmpv6 type echo-request icmpv6 sequence { 2, 4 } drop
            }
        }""",
    )
    with lab.enter("src"):
        async with Pinger() as pinger:
            results = await pinger.collect(Ping(dst(lab, v), count=6, interval=0.02, expiry=0.5))
            assert pinger.engine.table == {}
    kinds = {r.seq: r.kind for r in results}
    assert kinds == {1: "reply", 2: "timeout", 3: "reply", 4: "timeout", 5: "reply", 6: "reply"}
    stats = PingStats.of(results)
    assert (stats.sent, stats.received, stats.loss) == (6, 4, pytest.approx(1 / 3))


@pytest.mark.parametrize("v", V)
async def test_time_exceeded_comes_from_the_router(lab: Lab, v: int) -> None:
    with lab.enter("src"):
        async with Pinger() as pinger:
            results = await pinger.collect(Ping(dst(lab, v), count=2, ttl=1, interval=0.02))
    r1 = lab.r1.v4 if v == 4 else lab.r1.v6
    for r in results:
        assert r.kind == "error"
        assert r.error is not None and r.error.kind is ErrorKind.TIME_EXCEEDED
        assert r.responder == r1
    assert PingStats.of(results).received == 0


@pytest.mark.parametrize("v", V)
async def test_admin_prohibited_is_reported(clean_lab: Lab, v: int) -> None:
    lab = clean_lab
    lab.nft(
        "r3",
        """
        table inet t {
            chain fw {
                type filter hook forward priority 0;
                icmp type echo-request reject with icmp type admin-prohibited
                icmpv6 type echo-request reject with icmpv6 type admin-prohibited
            }
        }""",
    )
    with lab.enter("src"):
        async with Pinger() as pinger:
            results = await pinger.collect(Ping(dst(lab, v), count=2, interval=0.02))
    for r in results:
        assert r.kind == "error" and r.error is not None
        assert r.error.kind is ErrorKind.UNREACHABLE and "admin" in r.error.text


async def test_many_concurrent_pings_across_the_lab(lab: Lab) -> None:
    targets = lab.topology.all_addresses()
    with lab.enter("src"):
        async with Pinger() as pinger:
            out: dict[str, list] = {}

            async def one(addr: object, n: int) -> None:
                out[f"{addr}/{n}"] = await pinger.collect(Ping(addr, count=4, interval=0.01))  # type: ignore[arg-type]

            async with trio.open_nursery() as nursery:
                for n in range(10):
                    for addr in targets:
                        nursery.start_soon(one, addr, n)
            assert pinger.engine.table == {}
    assert len(out) == 10 * len(targets)
    for name, results in out.items():
        addr = ipaddress.ip_address(name.split("/")[0])
        assert sorted(r.seq for r in results if r.kind == "reply") == [1, 2, 3, 4], name
        assert all(r.responder == addr for r in results)


def test_cli_in_the_lab(lab: Lab) -> None:
    out = lab.python("src", "-m", "netdiag.ping", "-c", "3", "-i", "0.05", str(lab.dst.v4))
    assert out.returncode == 0
    assert "ttl=61" in out.stdout
    assert "3 packets transmitted, 3 received, 0% packet loss" in out.stdout
    assert "rtt min/avg/max/mdev = " in out.stdout


def test_cli_json_and_unanswered_host(lab: Lab) -> None:
    silent = "198.18.6.99"  # on dst's link, but nobody has it: no reply, ever
    out = lab.python(
        "src",
        "-m",
        "netdiag.ping",
        "-c",
        "2",
        "-i",
        "0.05",
        "-W",
        "0.3",
        "--json",
        str(lab.dst.v6),
        silent,
        check=False,
    )
    assert out.returncode == 1  # one host never answered
    doc = json.loads(out.stdout)
    by_host = {p["host"]: p for p in doc["pings"]}
    assert by_host[str(lab.dst.v6)]["stats"]["received"] == 2
    assert by_host[silent]["stats"]["received"] == 0
    assert by_host[silent]["stats"]["loss"] == 1.0


def test_cli_ttl_exceeded_lines(lab: Lab) -> None:
    out = lab.python(
        "src", "-m", "netdiag.ping", "-c", "1", "-t", "2", str(lab.dst.v4), check=False
    )
    assert out.returncode == 1
    assert "Time to live exceeded" in out.stdout
    assert "From 198.18.2.2" in out.stdout or "From 198.18.3.2" in out.stdout


@pytest.mark.parametrize("v", V)
async def test_bind_to_source_address_and_interface(lab: Lab, v: int) -> None:
    src = lab.src.v4 if v == 4 else lab.src.v6
    iface = lab.node("src").iface("r1").name
    with lab.enter("src"):
        async with Pinger(Bind(v4=src) if v == 4 else Bind(v6=src)) as pinger:
            ok = await pinger.collect(Ping(dst(lab, v), count=1))
        async with Pinger(Bind(device=iface)) as pinger:
            via_iface = await pinger.collect(Ping(dst(lab, v), count=1))
        async with Pinger(Bind(device="lo")) as pinger:
            # Bound to loopback, the lab is unreachable: no route, or no reply.
            via_lo = await pinger.collect(Ping(dst(lab, v), count=1, expiry=0.3))
    assert ok[0].kind == "reply" and via_iface[0].kind == "reply"
    assert via_lo[0].kind in ("timeout", "error")


async def test_binding_an_address_the_host_lacks_is_a_clear_error(lab: Lab) -> None:
    with lab.enter("src"), pytest.raises(OSError, match=r"cannot bind to 198\.18\.6\.2"):
        async with Pinger(Bind(v4="198.18.6.2")):
            pass


async def test_sweep_many_targets_from_one_sender(lab: Lab) -> None:
    targets = lab.topology.all_addresses()
    with lab.enter("src"):
        async with Pinger() as pinger:
            results = [r async for r in pinger.sweep(targets, count=3, interval=0.05)]
            tasks = len(pinger.engine.nursery.child_tasks)
            assert pinger.engine.table == {}
    # the engine's own (expiry, scheduler, a receive loop per family): none for the sweep
    assert tasks <= 4
    got: dict[object, list[int]] = {}
    for r in results:
        assert r.kind == "reply" and r.responder == r.addr
        got.setdefault(r.addr, []).append(r.seq)
    assert set(got) == set(targets)
    assert all(sorted(seqs) == [1, 2, 3] for seqs in got.values())


async def test_sweep_rate_paces_requests(lab: Lab) -> None:
    """20 requests at 100 per second cannot all leave in less than ~0.19 s."""
    targets = [lab.dst.v4, lab.dst.v6, lab.r1.v4, lab.r1.v6] * 5
    with lab.enter("src"):
        async with Pinger() as pinger:
            start = trio.current_time()
            results = [r async for r in pinger.sweep(targets, rate=100)]
            elapsed = trio.current_time() - start
    assert len(results) == 20 and all(r.kind == "reply" for r in results)
    assert elapsed >= 0.18


async def test_sweep_rejects_bad_input_before_sending(lab: Lab) -> None:
    with lab.enter("src"):
        async with Pinger() as pinger:
            with pytest.raises(ValueError, match="at least one target"):
                [r async for r in pinger.sweep([])]
            with pytest.raises(ValueError, match="rate"):
                [r async for r in pinger.sweep([lab.dst.v4], rate=0)]
            with pytest.raises(ValueError, match="invalid"):
                [r async for r in pinger.sweep([lab.dst.v4, NO_SUCH_HOST])]
            # Nothing was registered, so nothing can have been sent or matched.
            assert pinger.engine.stats.matched == 0 and pinger.engine.table == {}
