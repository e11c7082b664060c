"""ICMP echo: :class:`Pinger` carries any number of concurrent pings over one socket per family.

Read top to bottom, this module is the whole diagnostic: per-call state (:class:`_Session`)
allocates an identifier, and for each probe registers the key ``(target, id, seq)`` with the
engine *before* sending, sends the bytes built by :mod:`netdiag.wire.icmp`, and turns what the
engine hands back (reply, ICMP error, expiry) into :class:`PingResult` values. Every reply must
also carry the probe's random 8-byte token, so replies to other processes that happen to use the
same identifier and sequence (iputils picks identifiers too) are never taken for ours.
"""

from __future__ import annotations

import ipaddress
import math
import random
import socket
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
from ..engine.table import ACTIVE, RELEASED
from ..errors import PrivilegeError
from ..privilege import ping_group_advice
from ..resolve import literal, resolve
from ..results import ErrorReply, jsonable
from ..sock import DEFAULT_RCVBUF, IP_PMTUDISC_DO, IP_PMTUDISC_DONT, Bind, IPAddress, ProbeSocket
from ..stats import ProbeStats
from ..validate import check_float, check_int, expiry_not_timeout
from ..wire.bpf import Range, echo_filter
from ..wire.icmp import (
    ECHO_REPLY4,
    ECHO_REPLY6,
    ERROR_TYPES4,
    ERROR_TYPES6,
    TOKEN_LEN,
    Echo,
    EchoBuilder,
    build_echo,
    classify_echo,
    classify_echo_queued_error,
    echo_payload,
    token_matches,
)
from ..wire.packet import Packet
from .idents import IdentPool

__all__ = ["Ping", "PingResult", "PingStats", "Pinger"]

#: ICMP types a ping socket needs to see; the kernel filters out everything else.
_TYPES4 = (ECHO_REPLY4, *ERROR_TYPES4)
_TYPES6 = (*ERROR_TYPES6, ECHO_REPLY6)
#: Probes are forgotten this many expiries past their deadline (late replies until then).
_GRACE_EXPIRIES = 2
MAX_SIZE = 65507  # largest ICMPv4 echo payload in one IPv4 datagram (65535 - 20 - 8)


@expiry_not_timeout
@dataclass(frozen=True, slots=True)
class Ping:
    """What to ping and how. Durations are seconds.

    ``interval`` is the time between requests (they leave on schedule whether or not earlier
    replies came back); ``expiry`` is how long each request waits for its reply. ``size`` is the
    echo payload in bytes (56 gives the classic 64-byte ICMP message). ``ttl`` and ``tos`` default
    to the kernel's. ``df``: ``None`` is the kernel default (Linux sets DF but may fragment
    locally), ``True`` never fragments (an oversized probe is an error result), ``False`` lets
    routers fragment, like ``ping -M do|dont``.
    """

    addr: IPAddress | str
    count: int = 4
    interval: float = 1.0
    expiry: float = 2.0
    size: int = 56
    ttl: int | None = None
    tos: int | None = None
    df: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.addr, str):
            if not self.addr:
                raise ValueError("Ping.addr must not be empty")
        elif not isinstance(self.addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise TypeError(f"Ping.addr must be an address or host name, not {self.addr!r}")
        check_int("count", self.count, 1, 10**9)
        check_float("interval", self.interval, 0.0, 3600.0)
        check_float("expiry", self.expiry, 0.0, 3600.0, open_low=True)
        check_int("size", self.size, 0, MAX_SIZE)
        if self.ttl is not None:
            check_int("ttl", self.ttl, 1, 255)
        if self.tos is not None:
            check_int("tos", self.tos, 0, 255)
        if self.df is not None and not isinstance(self.df, bool):
            raise TypeError(f"df must be None, True or False, not {self.df!r}")


@dataclass(frozen=True, slots=True)
class PingResult:
    """The outcome of one echo request, or a duplicate/late copy of a reply.

    ``kind`` is ``"reply"``, ``"timeout"`` or ``"error"`` (an ICMP error came back, see
    ``error``; or the request could not be sent, see ``error.text``). ``seq`` is the 1-based
    request number, as iputils' ``icmp_seq``. ``responder`` is who answered (the target, or
    the router that sent the error). ``ttl`` is the reply's TTL/hop limit and ``size`` its ICMP
    length. ``duplicate`` marks a second reply to the same request; ``late`` a reply that came
    after the request had expired (it is not counted as received, as it was reported lost).
    ``tx_kernel``: ``rtt`` starts at the kernel's transmit timestamp of the request (both ends
    kernel stamps); False, it starts at the clock read just before ``sendmsg``.
    """

    seq: int
    addr: IPAddress
    kind: Literal["reply", "timeout", "error"]
    rtt: float | None = None
    responder: IPAddress | None = None
    ttl: int | None = None
    size: int = 0
    duplicate: bool = False
    late: bool = False
    error: ErrorReply | None = None
    tx_kernel: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        d: dict[str, Any] = jsonable(self)
        if self.error is None:
            del d["error"]
        return d


@dataclass(slots=True)
class PingStats(ProbeStats):
    """The summary of one ping: what iputils prints, plus percentiles and jitter.

    ``received`` counts requests answered by a reply (not duplicates or late copies);
    ``errors`` the ICMP errors that came back instead, and requests the kernel refused to
    send (those are not ``sent``); ``loss`` is ``1 - received / sent``.
    """

    received: int = 0
    errors: int = 0

    def _count(self, r: PingResult, local: bool) -> None:
        if r.kind == "reply":
            self.received += 1
            if r.rtt is not None:
                self.rtt.add(r.rtt)
        elif r.kind == "error":
            self.errors += 1

    @property
    def loss(self) -> float:
        """Fraction of the sent requests that got no reply (0.0 to 1.0)."""
        return 1.0 - self.received / self.sent if self.sent else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what ``--json`` prints)."""
        return {
            "sent": self.sent,
            "received": self.received,
            "errors": self.errors,
            "duplicates": self.duplicates,
            "late": self.late,
            "pending": self.pending,
            "loss": self.loss,
            **self.rtt.as_dict(),
        }


class _Family:
    """One family's socket(s) and how to talk to them.

    ``dgram`` marks unprivileged ICMP datagram ("ping") sockets: the kernel then owns the echo
    identifier (``idents[sock]``, the socket's port) and only delivers replies carrying it, so
    probes are told apart by sequence number (allocated Pinger-wide per socket, ``next_seq``)
    and payload token instead.
    """

    def __init__(self, sock: ProbeSocket, v6: bool, dgram: bool = False) -> None:
        self.sock = sock
        self.v6 = v6
        self.dgram = dgram
        self.df_socks: dict[bool, ProbeSocket] = {}
        self.idents: dict[ProbeSocket, int] = {}
        if dgram:
            self.idents[sock] = sock.local_port()
        self._seq = random.randrange(0x10000)

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq


class _Target:
    """One destination of a session: its address, socket, identifier and ancillary data."""

    __slots__ = ("addr", "anc", "dst", "fam", "ident", "packed", "sock")

    def __init__(
        self, addr: IPAddress, packed: bytes, fam: _Family, sock: ProbeSocket, anc: list,
        ident: int,
    ) -> None:  # fmt: skip
        self.addr = addr
        self.packed = packed
        # inet_ntop: str() of an ipaddress object costs a few microseconds per target.
        self.dst = socket.inet_ntop(socket.AF_INET6 if fam.v6 else socket.AF_INET, packed)
        self.fam = fam
        self.sock = sock
        self.anc = anc
        self.ident = ident


class _Probe(Probe):
    __slots__ = ("seq", "target", "token")

    def __init__(self, target: _Target, seq: int, token: bytes) -> None:
        # Probe.__init__ inlined: one of these per request, on the hot path.
        self.probe = self
        self.state = RELEASED
        self.answered = False
        self.due = 0.0
        self.sent_ns = 0
        self.tx_kernel = False
        self.target = target
        self.seq = seq
        self.token = token


class _Session(ProbeSession[_Probe, PingResult], Scheduled):
    """The state of one :meth:`Pinger.results` or :meth:`Pinger.sweep` call: any number of
    targets, sent by the engine's scheduler (:mod:`netdiag.engine.schedule`) through
    :meth:`step`; each request goes through the engine's probe template.

    Round ``i`` of requests starts ``i * interval`` after the call's first request actually
    left; within a round, requests to the targets leave back to back (in bursts the scheduler
    sizes), or paced at ``rate`` per second when given. A call costs no task of its own, and
    its setup (payload template, ancillary data) comes from the Pinger's caches.
    """

    def __init__(self, pinger: Pinger, ping: Ping, rate: float | None = None) -> None:
        super().__init__(pinger.engine, ping.expiry)
        self.pinger = pinger
        self.ping = ping
        self.rate = rate
        self.targets: list[_Target] = []
        # One identifier for the whole session where it is free for each target (the demux
        # key holds the target anyway); a target another running ping uses it for gets its own.
        self._ident: int | None = None
        self._where: dict[bool, tuple[_Family, ProbeSocket, list]] = {}
        self._builders, self._fill, self._tlen = pinger._template(ping.size)
        self._gap = 1.0 / rate if rate else 0.0
        self._grace = _GRACE_EXPIRIES * ping.expiry
        # where the sender is: round, next target, when round 0 began, next paced send
        self._round = 0
        self._idx = 0
        self._anchor: float | None = None
        self._next = -math.inf

    def add_target(self, addr: IPAddress) -> None:
        pinger = self.pinger
        v6 = addr.version == 6
        where = self._where.get(v6)
        if where is None:  # once per family and call, not per target
            ping = self.ping
            fam = pinger._family(v6)
            sock = fam.sock if ping.df is None else pinger._df_socket(fam, ping.df)
            where = self._where[v6] = (fam, sock, pinger._ancillary(sock, ping, v6))
        fam, sock, anc = where
        packed = addr.packed
        if fam.dgram:
            ident = fam.idents[sock]
        elif self._ident is not None and pinger._claim_ident(packed, self._ident):
            ident = self._ident
        else:
            ident = self._ident = pinger._allocate_ident(packed)
        self.targets.append(_Target(addr, packed, fam, sock, anc, ident))

    # -- what the template asks of a diagnostic ----------------------------------------------

    def answer(self, probe: _Probe, event: Any, packet: Packet) -> PingResult | None:
        if not token_matches(event, probe.token):
            self.pinger.foreign += 1
            return None
        addr = probe.target.addr
        rtt = probe.rtt(packet)
        if isinstance(event, Echo):
            # The key holds the source address, so the responder is the target itself.
            size = 8 + len(event.payload)
            return PingResult(
                probe.seq, addr, "reply", rtt, addr, packet.ttl, size, tx_kernel=probe.tx_kernel
            )
        # Datagram sockets report the router in the queued error, not as the source.
        src = packet.err.offender if packet.err and packet.err.offender else packet.src
        return PingResult(
            probe.seq, addr, "error", rtt, ipaddress.ip_address(src), packet.ttl, 0,
            error=ErrorReply.of(event), tx_kernel=probe.tx_kernel,
        )  # fmt: skip

    def on_event(self, lease: Lease, event: Any, packet: Packet) -> None:
        # The common case inline: the first reply, in time, carrying the whole token. Same
        # outcome as the template's path (which handles everything else).
        if (
            type(event) is Echo
            and lease.state == ACTIVE
            and not self.closed
            and not lease.answered  # type: ignore[attr-defined]
            and event.payload[:8] == lease.token  # type: ignore[attr-defined]
            and len(lease.token) == 8  # type: ignore[attr-defined]
        ):
            probe: _Probe = lease  # type: ignore[assignment]
            addr = probe.target.addr
            rtt = probe.rtt(packet)
            size = 8 + len(event.payload)
            probe.answered = True
            lease.finish()
            self.outstanding -= 1
            self.push(
                PingResult(
                    probe.seq, addr, "reply", rtt, addr, packet.ttl, size,
                    tx_kernel=probe.tx_kernel,
                )
            )  # fmt: skip
            return
        super().on_event(lease, event, packet)

    def timeout(self, probe: _Probe) -> PingResult:
        return PingResult(probe.seq, probe.target.addr, "timeout")

    def refused(self, probe: _Probe, text: str) -> PingResult:
        error = ErrorReply.local_failure(text)
        return PingResult(probe.seq, probe.target.addr, "error", error=error)

    def step(self, now: float, budget: int) -> int:
        """Send up to ``budget`` requests due at ``now`` (called by the scheduler)."""
        if self._anchor is None:
            self._anchor = now
        ping = self.ping
        targets = self.targets
        n = len(targets)
        i = self._idx
        seq = self._round + 1
        wire_seq = seq & 0xFFFF
        table = self.engine.table
        builders = self._builders
        tlen = self._tlen
        getrandbits = random.getrandbits
        send_now = self.send_now
        gap = self._gap
        done = 0
        while done < budget:
            if gap:
                if self._next > now + SLACK:
                    self._idx = i
                    self.due = self._next
                    return done
                self._next = max(self._next, now - SLACK) + gap
            target = targets[i]
            tok = getrandbits(64)
            fam = target.fam
            key = (target.packed, target.ident, wire_seq)
            if fam.dgram:
                # The identifier is the socket's: find a sequence number not in flight.
                for _ in range(64):
                    wire_seq = fam.next_seq()
                    key = (target.packed, target.ident, wire_seq)
                    if key not in table:
                        break
            if builders is not None:
                data = builders[fam.v6].build(target.ident, wire_seq, tok)
                token = tok.to_bytes(8, "big")
            else:
                token = tok.to_bytes(8, "big")[:tlen]
                data = build_echo(target.ident, wire_seq, token + self._fill[tlen:], fam.v6)
            try:
                send_now(key, _Probe(target, seq, token), target.sock, data, target.dst,
                         target.anc, now)  # fmt: skip
            except BlockingIOError:
                self.blocked = target.sock
                self._idx = i
                self.due = now
                return done
            done += 1
            i += 1
            if i == n:
                i = 0
                self._round += 1
                # Forget probes old enough that no reply can matter any more: memory stays
                # bounded on a ping that runs for days.
                self.forget_old(now, self._grace)
                if self._round >= ping.count:
                    self._idx = 0
                    self.finish_sending()
                    return done
                seq = self._round + 1
                wire_seq = seq & 0xFFFF
                due = self._anchor + self._round * ping.interval
                if due > now + SLACK:
                    self._idx = 0
                    self._next = max(self._next, due)
                    self.due = due
                    return done
        self._idx = i
        self.due = now
        return done

    def close(self) -> None:
        super().close()
        for t in self.targets:
            self.pinger._release_ident(t.packed, t.ident)
        self.targets = []


class Pinger(Diagnostic):
    """Ping many targets concurrently over one raw ICMP socket per family.

    Use it as an async context manager: entering opens the sockets and starts the receive
    loops; leaving cancels every ping still running and closes the sockets. A family that
    cannot be opened (no IPv6 on the host, say) does not stop the other one: pinging it raises
    :class:`FamilyUnavailableError` saying why. Missing privileges raise
    :class:`~netdiag.errors.PrivilegeError` on entry.
    """

    def __init__(
        self,
        bind: Bind | None = None,
        *,
        privileged: bool | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> None:
        super().__init__(bind, rcvbuf, privileged)
        # Identifiers from one aligned block, so the kernel filter is one mask-and-compare.
        self._ident_pool = IdentPool()
        self._ident_pool.on_grow = self._kernel_filter
        # per-call setup, cached: payload templates by size, ancillary data by socket+options
        self._templates: dict[int, tuple[dict[bool, EchoBuilder] | None, bytes, int]] = {}
        self._anc: dict[tuple[ProbeSocket, int | None, int | None, bool | None], list] = {}
        #: replies whose identifier and sequence matched but whose token did not (another
        #: process's pings, or forgeries): never credited
        self.foreign = 0

    _unprivileged = "unprivileged ping"

    def _open_mode(self, dgram: bool) -> None:
        """Raw ICMP sockets, or ICMP datagram ("ping") sockets."""

        def open_family(v6: bool) -> _Family:
            return _Family(self._new_socket(v6, dgram), v6, dgram)

        self._families.open(open_family, lambda fam: fam.sock.close())
        for v6, fam in self._families.items():
            self._engine.add_socket(fam.sock, classifier(v6, dgram))
        if not dgram:
            self._kernel_filter(self._ident_pool.range)
        for _, fam in self._families.items():  # issue 12: kernel-to-kernel RTTs
            fam.sock.enable_tx_stamps()

    def _new_socket(self, v6: bool, dgram: bool, pmtudisc: int | None = None) -> ProbeSocket:
        if not dgram:
            types = _TYPES6 if v6 else _TYPES4
            return ProbeSocket.raw_icmp(v6, self.bind, types=types, rcvbuf=self.rcvbuf)
        try:
            return ProbeSocket.icmp_datagram(v6, self.bind, rcvbuf=self.rcvbuf, pmtudisc=pmtudisc)
        except PrivilegeError:
            raise PrivilegeError(message=ping_group_advice()) from None

    def _df_socket(self, fam: _Family, df: bool) -> ProbeSocket:
        """IPv4 has no per-packet DF control, so DF-forced and DF-cleared probes go out through
        a sibling socket with that IP_MTU_DISCOVER mode (IPv6 uses a cmsg). A raw sibling only
        sends (replies reach the main raw socket too); a datagram sibling has its own echo
        identifier, so it gets its own receive loop."""
        if fam.v6:
            return fam.sock
        sock = fam.df_socks.get(df)
        if sock is None:
            mode = IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT
            if fam.dgram:
                sock = self._new_socket(False, True, pmtudisc=mode)
                fam.idents[sock] = sock.local_port()
                self._engine.add_socket(sock, classifier(False, True))
            else:
                sock = ProbeSocket.raw_sender(False, socket.IPPROTO_ICMP, self.bind, pmtudisc=mode)
                self._engine.add_socket(sock, None)
            fam.df_socks[df] = sock
        return sock

    def _template(self, size: int) -> tuple[dict[bool, EchoBuilder] | None, bytes, int]:
        """Echo builders (v4, v6) for ``size``-byte payloads, the fill, the token length:
        built once per size, not once per call (``echo_payload`` goes byte by byte)."""
        t = self._templates.get(size)
        if t is None:
            fill = echo_payload(b"\x00" * TOKEN_LEN, size)
            tlen = min(TOKEN_LEN, size)
            fast = {v6: EchoBuilder(size, v6) for v6 in (False, True)} if tlen == 8 else None
            if len(self._templates) > 64:
                self._templates.clear()
            t = self._templates[size] = (fast, fill, tlen)
        return t

    def _ancillary(self, sock: ProbeSocket, ping: Ping, v6: bool) -> list:
        key = (sock, ping.ttl, ping.tos, ping.df)
        anc = self._anc.get(key)
        if anc is None:
            if len(self._anc) > 1024:
                self._anc.clear()
            anc = sock.ancillary(ttl=ping.ttl, tos=ping.tos, dontfrag=ping.df if v6 else None)
            self._anc[key] = anc
        return anc

    def prepare(self, ping: Ping) -> None:
        """Open now any extra socket ``ping`` will need (the IPv4 DF sibling), so a CLI can
        drop root right after and still send it. Pinging calls this itself."""
        if ping.df is not None:
            for v6, fam in self._families.items():
                if not v6:
                    self._df_socket(fam, ping.df)

    def _allocate_ident(self, packed: bytes) -> int:
        """An identifier no other running ping of this Pinger uses for the same target."""
        return self._ident_pool.allocate(packed)

    def _claim_ident(self, packed: bytes, ident: int) -> bool:
        return self._ident_pool.claim(packed, ident)

    def _release_ident(self, packed: bytes, ident: int) -> None:
        self._ident_pool.release(packed, ident)

    # -- kernel filter (issue 12): a hook kept apart from the probing code ---------------------

    def _kernel_filter(self, idents: Range) -> None:
        """(Re)attach each raw socket's cBPF filter for the identifier block: only replies
        and errors with our identifiers reach Python. Attaching replaces the old program
        atomically; a kernel that refuses leaves the socket unfiltered (tokens still decide)."""
        for v6, fam in self._families.items():
            if not fam.dgram and fam.sock.attach_filter(echo_filter(v6, [idents])):
                self._engine.stats.filter_updates += 1

    def results(self, ping: Ping) -> ResultStream[PingResult]:
        """Ping and yield every outcome as it happens: replies (in arrival order), timeouts,
        ICMP errors, duplicates and late replies. Ends when every request is resolved.

        The returned :class:`~netdiag.engine.ResultStream` also tells, after an interrupted
        loop, how many requests left (``sent``) and which were still waiting
        (``unresolved()``)."""
        if not isinstance(ping, Ping):
            raise TypeError(f"expected a netdiag.Ping, got {ping!r}")

        async def start() -> _Session:
            addr = await resolve(ping.addr)
            session = _Session(self, ping)
            session.add_target(addr)
            return session

        return ResultStream(self._engine, start)

    def sweep(
        self,
        targets: Iterable[IPAddress | str],
        *,
        count: int = 1,
        interval: float = 1.0,
        expiry: float = 2.0,
        size: int = 56,
        ttl: int | None = None,
        tos: int | None = None,
        df: bool | None = None,
        rate: float | None = None,
    ) -> ResultStream[PingResult]:
        """Ping many targets from one sender task, fping style; yield results as they come.

        Round ``i`` sends one request to every target, starting ``i * interval`` after the
        first; ``rate`` caps requests per second across all targets (default: as fast as the
        socket takes them). This is the path for thousands of targets: no task per target.
        """
        if rate is not None:
            check_float("rate", rate, 0.0, 1e7, open_low=True)
        # Validate every option before anything is resolved or sent.
        Ping("0.0.0.0", count, interval, expiry, size, ttl, tos, df)

        async def start() -> _Session:
            addrs = []
            for t in targets:
                try:  # literal addresses without a trip through the resolver's coroutine
                    addrs.append(
                        t
                        if isinstance(t, ipaddress.IPv4Address | ipaddress.IPv6Address)
                        else literal(t)
                    )
                except (ValueError, TypeError):
                    addrs.append(await resolve(t))
            if not addrs:
                raise ValueError("sweep needs at least one target")
            ping = Ping(addrs[0], count, interval, expiry, size, ttl, tos, df)
            session = _Session(self, ping, rate)
            try:
                for a in addrs:
                    session.add_target(a)
            except BaseException:
                session.close()
                raise
            return session

        return ResultStream(self._engine, start)

    def ping(self, ping: Ping) -> AsyncIterator[float | None]:
        """Yield, in sequence order, each request's RTT in seconds or ``None`` if it got no
        reply (timed out, or an ICMP error came back instead). A wrong argument raises
        ``TypeError`` here, before iterating."""
        # The in-order iterator itself, not a generator around it: one layer less per result.
        return in_order(self.results(ping), 1, _reply_rtt)

    async def collect(self, ping: Ping) -> list[PingResult]:
        """Run a whole ping and return every result; see :meth:`PingStats.of`."""
        return [r async for r in self.results(ping)]


def _reply_rtt(r: PingResult) -> float | None:
    return r.rtt if r.kind == "reply" else None


def classifier(v6: bool, dgram: bool = False) -> Classifier:
    """The engine's classifier for one socket: raw IPv4 ICMP sockets deliver the IP header,
    raw ICMPv6 and datagram sockets start at ICMP; datagram sockets also deliver ICMP errors
    through their error queue (``packet.err``)."""
    ip_header = not v6 and not dgram

    def classify(pkt: Packet) -> Any:
        err = pkt.err
        if err is not None:
            if not err.from_network:  # a local error (EMSGSIZE ...) names no router
                return None
            return classify_echo_queued_error(v6, err.type, err.code, err.info, pkt.src, pkt.data)
        return classify_echo(pkt.data, v6, pkt.src, ip_header=ip_header)

    return classify


__getattr__ = deprecated_alias(__name__, {"PingError": ErrorReply})
