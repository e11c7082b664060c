"""Half-open TCP knock: :class:`Knocker` measures TCP round trips without ever connecting.

A knock sends a SYN that looks like a real client's (Linux's options: MSS, SACK-permitted,
timestamps, window scale; a random initial sequence number per probe) and times what comes back:

* a SYN-ACK acknowledging our SYN -- the port is **open**;
* a RST acknowledging it -- the port is **closed**;
* an ICMP error quoting it (unreachable, admin prohibited...) -- reported as that error;
* nothing before ``expiry`` -- **filtered**.

Why it stays half-open: the SYN is sent from a raw socket, so our own TCP stack has no connection
for it. When the SYN-ACK arrives the kernel finds no socket in SYN-SENT, ESTABLISHED or LISTEN
state for that port and answers with a RST, which makes the server drop the embryonic
connection: the application behind the port never sees an ``accept()``.

Why probes hold a bound TCP socket: the source port must not collide with the kernel's own
connections (their replies would be taken for ours, and ours would reset theirs) nor with other
knocks. A normal TCP socket bound to port 0 gets a port the kernel guarantees nobody else holds,
and holds it until closed; being bound but not listening or connected, it does not stop the
kernel from resetting the SYN-ACK. One reserved port serves any number of probes to
*different* destinations at once -- their 4-tuples (and so their demux keys) still differ --
so the Knocker keeps a small pool of them per family (:class:`_PortPool`): descriptors grow
with the number of probes in flight to *one* ``(address, port)``, not with all probes in
flight. See docs/knock.md.

Read top to bottom like :mod:`netdiag.ping`: per-call state (:class:`_Session`) registers each
probe's key ``(local address, source port, target, port)`` with the engine *before* sending,
sends the bytes built by :mod:`netdiag.wire.tcp`, and turns what the engine hands back (see
:mod:`netdiag.wire.knock` for the classification) into :class:`KnockResult` values.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .._deprecated import deprecated_alias
from ..engine import (
    Classifier,
    Diagnostic,
    Lease,
    Probe,
    ProbeSession,
    ResultStream,
    in_order,
)
from ..engine.schedule import SLACK, Scheduled
from ..resolve import resolve
from ..results import ErrorReply, jsonable
from ..sock import (
    DEFAULT_RCVBUF,
    Bind,
    IPAddress,
    ProbeSocket,
    RouteFinder,
    ephemeral_ports,
    reserve_tcp_port,
)
from ..stats import ProbeStats
from ..validate import check_float, check_int, expiry_not_timeout
from ..wire.bpf import icmp_error_port_filter, tcp_port_filter
from ..wire.icmp import (
    DEST_UNREACH4,
    DEST_UNREACH6,
    PARAMETER_PROBLEM4,
    PARAMETER_PROBLEM6,
    TIME_EXCEEDED4,
    TIME_EXCEEDED6,
)
from ..wire.knock import QuotedSyn, answers, classify_icmp, classify_tcp, outcome
from ..wire.packet import Packet
from ..wire.tcp import TCP6_CHECKSUM_OFFSET, build_syn, syn_options

__all__ = ["Knock", "KnockResult", "KnockStats", "Knocker"]

#: ICMP errors that can be about a SYN: unreachable, time exceeded, parameter problem.
_ICMP_TYPES4 = (DEST_UNREACH4, TIME_EXCEEDED4, PARAMETER_PROBLEM4)
_ICMP_TYPES6 = (DEST_UNREACH6, TIME_EXCEEDED6, PARAMETER_PROBLEM6)

Outcome = Literal["open", "closed", "filtered", "error"]


@expiry_not_timeout
@dataclass(frozen=True, slots=True)
class Knock:
    """What to knock on and how. Durations are seconds.

    ``count`` SYNs go to ``addr`` port ``port``, one every ``interval`` seconds (on schedule,
    whatever came back); each waits ``expiry`` seconds for its answer before it counts as
    filtered.
    """

    addr: IPAddress | str
    port: int
    count: int = 4
    interval: float = 1.0
    expiry: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.addr, str):
            if not self.addr:
                raise ValueError("Knock.addr must not be empty")
        elif not isinstance(self.addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise TypeError(f"Knock.addr must be an address or host name, not {self.addr!r}")
        check_int("port", self.port, 1, 65535)
        check_int("count", self.count, 1, 10**9)
        check_float("interval", self.interval, 0.0, 3600.0)
        check_float("expiry", self.expiry, 0.0, 3600.0, open_low=True)


@dataclass(frozen=True, slots=True)
class KnockResult:
    """The outcome of one SYN, or a duplicate/late copy of an answer.

    ``seq`` is the 1-based probe number (ping's ``icmp_seq``). ``kind`` is ``"open"``
    (SYN-ACK), ``"closed"`` (RST), ``"filtered"`` (no answer before expiry) or ``"error"`` (an
    ICMP error came back, or the SYN could not be sent; see ``error``). ``rtt`` is set for every
    answer. ``responder`` is who answered (the target, or the router that sent the ICMP error);
    ``ttl`` its TTL/hop limit; ``flags`` the TCP flags of a TCP answer; ``sport`` the source
    port the SYN used. ``duplicate`` marks a second answer to the same SYN; ``late`` an answer
    that came after the probe had been reported filtered (it does not change the counts).
    ``tx_kernel``: ``rtt`` starts at the kernel's transmit timestamp of the SYN (both ends
    kernel stamps, as :class:`~netdiag.PingResult`'s); False, at the clock read just before
    ``sendmsg``.
    """

    seq: int
    addr: IPAddress
    port: int
    kind: Outcome
    rtt: float | None = None
    responder: IPAddress | None = None
    ttl: int | None = None
    flags: int = 0
    sport: int = 0
    duplicate: bool = False
    late: bool = False
    error: ErrorReply | None = None
    tx_kernel: bool = False

    @property
    def label(self) -> str:
        """What hping3-like output prints: ``open``, ``closed (RST)``, ``filtered (timeout)``,
        ``unreachable (admin-prohibited)``..."""
        if self.kind == "open":
            return "open"
        if self.kind == "closed":
            return "closed (RST)"
        if self.kind == "filtered":
            return "filtered (timeout)"
        err = self.error
        if err is None:
            return "error"
        if err.local:
            return f"error ({err.text})"
        if err.unreach is not None:
            return f"unreachable ({err.unreach.label})"
        return f"{err.kind.value if err.kind else 'error'} ({err.text})"

    @property
    def flag_letters(self) -> str:
        """The TCP flags as hping3 prints them: ``"SA"`` (SYN-ACK), ``"RA"`` (RST-ACK); ``""``
        when no TCP answer came. :attr:`flags` stays the integer."""
        return _flag_text(self.flags)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        d: dict[str, Any] = jsonable(self)
        d["flags"] = _flag_text(self.flags) if self.flags else None
        if self.error is None:
            del d["error"]
        return d


def _flag_text(flags: int) -> str:
    """hping3's flag letters: ``SA`` for a SYN-ACK, ``RA`` for a RST-ACK."""
    return "".join(c for bit, c in _FLAG_LETTERS if flags & bit)


_FLAG_LETTERS = ((1, "F"), (2, "S"), (4, "R"), (8, "P"), (16, "A"))


@dataclass(slots=True)
class KnockStats(ProbeStats):
    """The summary of one knock: Pinger's statistics plus the outcome counts.

    ``sent`` counts SYNs that left; ``open``, ``closed``, ``filtered`` and ``errors`` (ICMP
    errors) partition them; ``received = open + closed + errors``. ``rtt`` covers every
    answered probe (SYN-ACK, RST or ICMP error), as hping3's summary does.
    """

    open: int = 0
    closed: int = 0
    filtered: int = 0
    errors: int = 0

    def _count(self, r: KnockResult, local: bool) -> None:
        if local:
            return
        if r.kind == "open":
            self.open += 1
        elif r.kind == "closed":
            self.closed += 1
        elif r.kind == "filtered":
            self.filtered += 1
        else:
            self.errors += 1
        if r.rtt is not None:
            self.rtt.add(r.rtt)

    @property
    def received(self) -> int:
        """Probes that got an answer: open + closed + ICMP errors."""
        return self.open + self.closed + self.errors

    @property
    def loss(self) -> float:
        """The share of SYNs nothing answered (``(filtered + pending) / sent``)."""
        return (self.filtered + self.pending) / self.sent if self.sent else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        return {
            "sent": self.sent,
            "open": self.open,
            "closed": self.closed,
            "filtered": self.filtered,
            "errors": self.errors,
            "received": self.received,
            "duplicates": self.duplicates,
            "late": self.late,
            "pending": self.pending,
            "loss": self.loss,
            **self.rtt.as_dict(),
        }


class _Family:
    """One family's raw TCP socket (send SYNs, hear SYN-ACKs and RSTs) and whether its raw
    ICMP socket (hear errors about our SYNs) could be opened."""

    def __init__(self, tcp: ProbeSocket, v6: bool, route: RouteFinder) -> None:
        self.tcp = tcp
        self.v6 = v6
        self.route = route
        self.icmp: ProbeSocket | BaseException | None = None


class _Target:
    """One (address, port) of a session, with what sending to it needs."""

    __slots__ = ("addr", "anc", "cursor", "dst", "error", "fam", "local", "packed", "port")

    def __init__(self, addr: IPAddress, port: int, fam: _Family) -> None:
        self.addr = addr
        self.port = port
        self.fam = fam
        self.packed = addr.packed
        # inet_ntop: str() of an ipaddress object costs a few microseconds per target.
        self.dst = socket.inet_ntop(socket.AF_INET6 if fam.v6 else socket.AF_INET, self.packed)
        self.local = b""
        self.anc: list[tuple[int, int, bytes]] = []
        self.error: str | None = None
        #: where this target's next probe starts looking for a free shared port
        self.cursor = 0


class _PortSlot:
    """One reserved source port and how many live probes use it."""

    __slots__ = ("port", "sock", "users", "v6")

    def __init__(self, sock: socket.socket, v6: bool) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.v6 = v6
        self.users = 0


class _PortPool:
    """The reserved source ports of one family, shared by probes to different destinations.

    A probe takes the first port (scanning from its target's cursor) whose key
    ``(local, port, target, target port)`` is not live in the demux table; only when the
    :data:`_SCAN` ports it looked at are all busy *for that destination* is a new port
    reserved. Probes to different destinations thus share one port, and the pool grows only
    with the probes in flight to a single ``(address, port)``. A port is released (its socket
    closed) when its last probe is forgotten.
    """

    def __init__(self, v6: bool) -> None:
        self.v6 = v6
        self.slots: list[_PortSlot] = []

    def pick(self, table: dict, local: bytes, dst: bytes, dport: int, start: int) -> int:
        """The index of a slot free for this destination, reserving a new port if needed
        (``OSError`` when the kernel has none left)."""
        slots = self.slots
        n = len(slots)
        for k in range(min(n, _SCAN)):
            j = (start + k) % n
            if (local, slots[j].port, dst, dport) not in table:
                return j
        slots.append(_PortSlot(reserve_tcp_port(self.v6), self.v6))
        return n

    def release(self, slot: _PortSlot) -> None:
        slot.users -= 1
        if slot.users <= 0:
            slot.sock.close()
            with contextlib.suppress(ValueError):
                self.slots.remove(slot)

    def close(self) -> None:
        for slot in self.slots:
            slot.sock.close()
        self.slots.clear()


#: Ports a probe looks at before it reserves a new one (all busy for its destination).
_SCAN = 8


class _Probe(Probe):
    __slots__ = ("isn", "seq", "slot", "sport", "target")

    def __init__(
        self, target: _Target, seq: int, isn: int = 0, sport: int = 0,
        slot: _PortSlot | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.target = target
        self.seq = seq
        self.isn = isn
        self.sport = sport
        self.slot = slot


class _Session(ProbeSession[_Probe, KnockResult], Scheduled):
    """The state of one :meth:`Knocker.results` or :meth:`Knocker.sweep` call: any number of
    (address, port) targets, sent by the engine's scheduler through :meth:`step` (rounds as
    in :mod:`netdiag.ping`); each SYN goes through the engine's probe template."""

    def __init__(self, knocker: Knocker, knock: Knock, rate: float | None = None) -> None:
        super().__init__(knocker.engine, knock.expiry)
        self.knocker = knocker
        self.knock = knock
        self.rate = rate
        self.targets: list[_Target] = []
        self._gap = 1.0 / rate if rate else 0.0
        self._round = 0
        self._idx = 0
        self._anchor: float | None = None
        self._next = -math.inf
        self._options: dict[bool, bytes] = {}

    def add_target(self, addr: IPAddress, port: int) -> None:
        knocker = self.knocker
        target = _Target(addr, port, knocker._family(addr.version == 6))
        try:
            local = knocker._source_packed(addr)
        except OSError as e:
            # No route: every probe to it fails locally, the way sendmsg would have failed.
            target.error = e.strerror or str(e)
        else:
            target.local = local
            # IPv6: the kernel fills the checksum (IPV6_CHECKSUM) and IPV6_PKTINFO pins the
            # source it covers. IPv4: we compute it over the pseudo-header with the route's
            # source address, which is the address the kernel puts in the header it builds.
            if target.fam.v6:
                target.anc = target.fam.tcp.ancillary(src=target.local)
        self.targets.append(target)

    # -- what the template asks of a diagnostic ----------------------------------------------

    def answer(self, probe: _Probe, event: Any, packet: Packet) -> KnockResult | None:
        if not answers(event, probe.isn):
            # Right ports, wrong sequence: a stale answer to an earlier SYN on this 4-tuple, or
            # someone else's traffic. Never ours.
            self.knocker.foreign += 1
            return None
        t = probe.target
        rtt = probe.rtt(packet)
        responder = ipaddress.ip_address(packet.src)
        kind: Outcome = outcome(event)
        if isinstance(event, QuotedSyn):
            return KnockResult(
                probe.seq, t.addr, t.port, kind, rtt, responder, packet.ttl,
                sport=probe.sport, error=ErrorReply.of(event.error), tx_kernel=probe.tx_kernel,
            )  # fmt: skip
        return KnockResult(
            probe.seq, t.addr, t.port, kind, rtt, responder, packet.ttl,
            flags=event.flags, sport=probe.sport, tx_kernel=probe.tx_kernel,
        )  # fmt: skip

    def timeout(self, probe: _Probe) -> KnockResult:
        t = probe.target
        return KnockResult(probe.seq, t.addr, t.port, "filtered", sport=probe.sport)

    def refused(self, probe: _Probe, text: str) -> KnockResult:
        t = probe.target
        return KnockResult(
            probe.seq, t.addr, t.port, "error", sport=probe.sport,
            error=ErrorReply.local_failure(text),
        )  # fmt: skip

    def forget(self, lease: Lease) -> None:
        lease.release()
        probe: _Probe = lease.probe
        slot = probe.slot
        if slot is not None:
            probe.slot = None
            self.knocker._pools[slot.v6].release(slot)

    def _round_options(self) -> None:
        """SYN options for this round: the timestamp moves on once per round."""
        self._options = self.knocker._syn_options()

    def step(self, now: float, budget: int) -> int:
        """Send up to ``budget`` SYNs due at ``now`` (called by the scheduler)."""
        k = self.knock
        knocker = self.knocker
        if self._anchor is None:
            self._anchor = now
            self.forget_old(now, k.expiry)
            self._round_options()
        targets = self.targets
        n = len(targets)
        i = self._idx
        rnd = self._round
        table = self.engine.table
        pools = knocker._pools
        options = self._options
        getrandbits = random.getrandbits
        gap = self._gap
        done = 0
        while done < budget:
            t = targets[i]
            if t.error is not None:
                self.push(self.refused(_Probe(t, rnd + 1), t.error))
            else:
                if gap:
                    if self._next > now + SLACK:
                        self._idx = i
                        self.due = self._next
                        return done
                    self._next = max(self._next, now - SLACK) + gap
                v6 = t.fam.v6
                pool = pools[v6]
                try:
                    j = pool.pick(table, t.local, t.packed, t.port, t.cursor)
                except OSError as e:
                    text = f"no free source port: {e.strerror or e}"
                    self.push(self.refused(_Probe(t, rnd + 1), text))
                else:
                    t.cursor = j + 1
                    slot = pool.slots[j]
                    slot.users += 1
                    sport = slot.port
                    if not knocker._filter_lo <= sport <= knocker._filter_hi:  # issue 12
                        knocker._kernel_filter(sport)
                    isn = getrandbits(32)
                    data = build_syn(
                        t.local, t.packed, sport, t.port, isn,
                        options=options[v6], checksum_field=not v6,
                    )  # fmt: skip
                    probe = _Probe(t, rnd + 1, isn, sport, slot)  # 1-based, as ping's icmp_seq
                    key = (t.local, sport, t.packed, t.port)
                    try:
                        ok = self.send_now(key, probe, t.fam.tcp, data, t.dst, t.anc, now)
                    except BlockingIOError:
                        self.blocked = t.fam.tcp
                        self._idx = i
                        self.due = now
                        return done
                    if ok:
                        knocker.sent += 1
                    elif probe.slot is not None:  # refused before it was registered
                        probe.slot = None
                        pool.release(slot)
            done += 1
            i += 1
            if i == n:
                i = 0
                rnd = self._round = rnd + 1
                if rnd >= k.count:
                    self._idx = 0
                    self.finish_sending()
                    return done
                due = self._anchor + rnd * k.interval
                # Forget probes resolved long enough ago (one extra expiry past their
                # deadline, so late answers are still recognised as late): memory and
                # reserved ports stay bounded on a knock that runs for days.
                self.forget_old(max(now, due), k.expiry)
                self._round_options()
                options = self._options
                if due > now + SLACK:
                    self._idx = 0
                    self._next = max(self._next, due)
                    self.due = due
                    return done
        self._idx = i
        self.due = now
        return done


class Knocker(Diagnostic):
    """Knock on many (host, port) pairs concurrently over one raw TCP socket per family.

    Each family also gets a raw ICMP socket to hear errors quoting our SYNs. Use it as an async
    context manager: entering opens the sockets and starts the receive loops; leaving cancels
    every knock still running and closes the sockets. A family that cannot be opened (no IPv6
    on the host) does not stop the other: knocking it raises :class:`FamilyUnavailableError`.
    Missing privileges raise :class:`~netdiag.errors.PrivilegeError` on entry.
    """

    def __init__(self, bind: Bind | None = None, *, rcvbuf: int = DEFAULT_RCVBUF) -> None:
        super().__init__(bind, rcvbuf)
        self._ts_offset = random.getrandbits(32)
        self._netns: tuple[int, int] | None = None
        #: reserved source ports per family, shared by probes to different destinations
        self._pools = {False: _PortPool(False), True: _PortPool(True)}
        self._opts_ts = -1
        self._opts: dict[bool, bytes] = {}
        #: Answers on a probe's ports that did not acknowledge its SYN (stale or foreign).
        self.foreign = 0
        #: SYNs sent by this Knocker so far.
        self.sent = 0

    async def __aenter__(self) -> Knocker:
        self._netns = _netns()
        return await super().__aenter__()

    def _close_family(self, fam: _Family) -> None:
        fam.route.close()
        self._pools[fam.v6].close()

    def _open(self) -> None:
        def open_family(v6: bool) -> _Family:
            tcp = ProbeSocket.raw_transport(
                v6,
                socket.IPPROTO_TCP,
                self.bind,
                rcvbuf=self.rcvbuf,
                checksum_offset=TCP6_CHECKSUM_OFFSET if v6 else None,
            )
            fam = _Family(tcp, v6, RouteFinder(v6, self.bind))
            self._engine.add_socket(tcp, tcp_classifier(v6))
            tcp.enable_tx_stamps()  # kernel-to-kernel RTTs, as the Pinger's (issue 12)
            try:
                icmp = ProbeSocket.raw_icmp(
                    v6,
                    self.bind,
                    types=_ICMP_TYPES6 if v6 else _ICMP_TYPES4,
                    rcvbuf=self.rcvbuf,
                )
            except OSError as e:
                # Without it knocks still work; ICMP-refused probes then show as filtered.
                fam.icmp = e
                return fam
            fam.icmp = icmp
            self._engine.add_socket(icmp, icmp_classifier(v6))
            return fam

        # Raw sockets already handed to the engine are closed by it; the finder is ours.
        self._families.open(open_family, lambda fam: fam.route.close())
        self._kernel_filter()

    # -- kernel filter (issue 12): a hook kept apart from the probing code ---------------------

    #: the source ports the kernel filters let through (all until they are attached)
    _filter_lo, _filter_hi = 0, 0xFFFF

    def _kernel_filter(self, port: int | None = None) -> None:
        """Let only segments to, and ICMP errors quoting segments from, the ephemeral port
        range (where every reserved source port comes from) reach Python. A socket the kernel
        refuses a filter stays unfiltered: the ISN check still decides what is ours. Called
        again with a reserved ``port`` outside the range (ip_local_port_range changed since):
        the range grows to cover it before that probe leaves."""
        if port is None:
            ports = ephemeral_ports()
            if ports is None:
                return
            lo, hi = ports
        else:
            lo, hi = min(self._filter_lo, port), max(self._filter_hi, port)
        self._filter_lo, self._filter_hi = lo, hi
        for v6, fam in self._families.items():
            if fam.tcp.attach_filter(tcp_port_filter(v6, lo, hi)):
                self._engine.stats.filter_updates += 1
            if isinstance(fam.icmp, ProbeSocket) and fam.icmp.attach_filter(
                icmp_error_port_filter(v6, socket.IPPROTO_TCP, lo, hi)
            ):
                self._engine.stats.filter_updates += 1

    def _syn_options(self) -> dict[bool, bytes]:
        """SYN options per family with the current timestamp (TSval ticks each millisecond;
        thousands of calls starting a round in the same millisecond share one build)."""
        ts = (self._ts_offset + time.monotonic_ns() // 1_000_000) & 0xFFFFFFFF
        if ts != self._opts_ts:
            self._opts = {v6: syn_options(v6, ts) for v6 in (False, True)}
            self._opts_ts = ts
        return self._opts

    def _source_packed(self, target: IPAddress) -> bytes:
        """Our address towards ``target``, packed (what keys and checksums use): the bound one,
        or what the kernel's route picks."""
        bound = self.bind.for_family(target.version == 6)
        if bound is not None:
            return bound.packed
        return self._family(target.version == 6).route.source(target)

    def reserved_ports(self) -> set[tuple[int, int]]:
        """``(IP version, port)`` of every source port a live probe holds right now."""
        out: set[tuple[int, int]] = set()
        for lease in self._engine.table.values():
            probe = lease.probe
            if isinstance(probe, _Probe) and probe.slot is not None:
                out.add((6 if probe.slot.v6 else 4, probe.sport))
        return out

    def results(self, knock: Knock) -> ResultStream[KnockResult]:
        """Knock and yield every outcome as it happens: open/closed answers (in arrival order),
        ICMP errors, filtered probes, duplicates and late answers. Ends when every probe is
        resolved. The stream's ``sent`` and ``unresolved()`` tell about an interrupted loop."""
        if not isinstance(knock, Knock):
            raise TypeError(f"expected a netdiag.Knock, got {knock!r}")

        async def start() -> _Session:
            target = await resolve(knock.addr)
            self._family(target.version == 6)
            self._check_netns()
            session = _Session(self, knock)
            session.add_target(target, knock.port)
            return session

        return ResultStream(self._engine, start)

    def sweep(
        self,
        targets: Iterable[tuple[IPAddress | str, int]],
        *,
        count: int = 1,
        interval: float = 1.0,
        expiry: float = 2.0,
        rate: float | None = None,
    ) -> ResultStream[KnockResult]:
        """Knock many ``(address, port)`` pairs from one sender task; yield results as they
        come. Round ``i`` sends one SYN to every pair, ``i * interval`` after the first;
        ``rate`` caps SYNs per second (default: as fast as the socket takes them). The path for
        thousands of hosts and ports: no task per target."""
        if rate is not None:
            check_float("rate", rate, 0.0, 1e7, open_low=True)

        async def start() -> _Session:
            pairs = [(await resolve(a), p) for a, p in targets]
            if not pairs:
                raise ValueError("sweep needs at least one (address, port)")
            for _, port in pairs:
                check_int("port", port, 1, 65535)
            knock = Knock(pairs[0][0], pairs[0][1], count, interval, expiry)
            self._check_netns()
            session = _Session(self, knock, rate)
            for addr, port in pairs:
                session.add_target(addr, port)
            return session

        return ResultStream(self._engine, start)

    def _check_netns(self) -> None:
        if _netns() != self._netns:
            # Source discovery and port reservation open sockets per probe, in the current
            # thread's namespace; they must be the raw sockets' namespace or nothing matches.
            raise RuntimeError(
                "the Knocker was opened in another network namespace: knock from that one"
            )

    def knock(self, knock: Knock) -> AsyncIterator[float | None]:
        """Yield, in probe order, each SYN's RTT in seconds if the port answered open
        (SYN-ACK), else ``None`` (closed, filtered or refused; :meth:`results` tells which).
        A wrong argument raises ``TypeError`` here, before iterating."""
        # The in-order iterator itself, not a generator around it: one layer less per result.
        return in_order(self.results(knock), 1, _open_rtt)

    async def collect(self, knock: Knock) -> list[KnockResult]:
        """Run a whole knock and return every result; see :meth:`KnockStats.of`."""
        return [r async for r in self.results(knock)]


def _open_rtt(r: KnockResult) -> float | None:
    return r.rtt if r.kind == "open" else None


def _netns() -> tuple[int, int] | None:
    """The identity of this thread's network namespace (``None`` where /proc cannot say)."""
    try:
        st = os.stat("/proc/thread-self/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def tcp_classifier(v6: bool) -> Classifier:
    """The classifier of a raw TCP socket: SYN-ACKs and RSTs answering our SYNs."""

    def classify(pkt: Packet) -> Any:
        return classify_tcp(pkt.data, v6, pkt.src, pkt.dst)

    return classify


def icmp_classifier(v6: bool) -> Classifier:
    """The classifier of a raw ICMP socket: errors quoting our SYNs."""

    def classify(pkt: Packet) -> Any:
        return classify_icmp(pkt.data, v6)

    return classify


__getattr__ = deprecated_alias(__name__, {"KnockError": ErrorReply})
