"""Multipath traceroute: :class:`Tracer` runs many concurrent Paris/MDA traces over shared sockets.

Read top to bottom, this module is the whole diagnostic. One :class:`_Session` per trace is the
engine's sink for its probes. Its sender task launches *flows* (see :mod:`netdiag.wire.trace`):
a scout flow probes ``reach`` TTLs at once and is pushed deeper by answers from the deep end;
every hop known to be on the route gets the flows the MDA rule asks for, all at once (bounded by
a window of probes in flight); the destination's hop is settled by the answer already in. So a
whole route costs a few round trips -- or about one expiry when hops are silent -- instead of
hops x probes x expiry, and no MDA flow goes beyond the destination. For each probe it
registers the key
``(target, protocol, flow field, probe id)`` with the engine *before* sending, then sends bytes
built by :mod:`netdiag.wire.trace`. Replies come back through the engine's receive loops (one
per socket, one demux table) already classified; the session records them per hop, and the MDA
rule decides whether a hop needs more flows. Hops are yielded in TTL order as soon as each is
settled: every probe sent to it answered or expired, and the stopping rule satisfied.

Sockets, per family: a raw ICMP socket receives time-exceeded / unreachable / echo replies, a raw
TCP socket receives SYN-ACK / RST. IPv4 probes of all three protocols leave through one
``IPPROTO_RAW`` socket with an IPv4 header we build (``IP_HDRINCL``): the TTL and the IP ID
(= probe id) are per packet and nothing socket-wide is touched, so concurrent probes cannot race.
IPv6 probes leave through a raw socket of their protocol, with the hop limit and the source
address as ``sendmsg`` ancillary data and the checksum filled by the kernel (IPV6_CHECKSUM; for
ICMPv6 always). The source address is found per target with a connected UDP socket, because the
UDP/TCP checksums cover it and the UDP checksum is the probe id.

Without CAP_NET_RAW (``Tracer(privileged=False)``, or the fallback of ``privileged=None``) the
Tracer runs in *datagram mode*, as Linux traceroute's default method does: UDP traces only, each
flow an ordinary UDP socket (:class:`_DgramFamily`) bound to the source address with a port the
kernel picks -- that port is the flow id -- sending with the TTL / hop limit as ancillary data and
reading ICMP errors from its error queue (IP_RECVERR / IPV6_RECVERR); the probe id and the
trace's token ride in the payload. Each flow socket has its own receive loop on the engine and is
removed from it when the trace's keys are released (after the linger) or the Tracer closes.
Keys, sessions, MDA and late/duplicate handling are the raw mode's.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import trio

from ..engine import Diagnostic, Engine, Lease, Session, stream
from ..errors import FamilyUnavailableError, KeyInUseError, NetdiagError, PrivilegeError
from ..privilege import raw_socket_advice
from ..resolve import resolve, reverse
from ..sock import DEFAULT_RCVBUF, Bind, IPAddress, Packet, ProbeSocket, RouteFinder
from ..validate import check_float, check_int, expiry_not_timeout
from ..wire.bpf import tcp_port_filter, trace_icmp_filter
from ..wire.ip import build_ipv4_header
from ..wire.tcp import TCP6_CHECKSUM_OFFSET
from ..wire.trace import (
    PROTO_ICMP,
    PROTO_ICMP6,
    PROTO_TCP,
    PROTO_UDP,
    Reply,
    ReplyKind,
    build_dgram_payload,
    build_probe,
    classify_icmp,
    classify_queued_udp,
    classify_tcp,
    encode_pid,
    mda_probes,
)
from ..wire.udp import UDP6_CHECKSUM_OFFSET

__all__ = ["Hop", "Responder", "Trace", "TraceProbe", "TraceResult", "Tracer"]

Proto = Literal["udp", "tcp", "icmp"]
DEFAULT_PORTS = {"udp": 33434, "tcp": 80}

#: ICMP types the receive sockets need; the kernel filters out the rest.
_TYPES4 = (0, 3, 11, 12)
_TYPES6 = (1, 2, 3, 4, 129)

#: Source ports of UDP/TCP flows: above Linux's default ephemeral range (32768-60999), so the
#: kernel's own connections rarely share one. ICMP flows use echo identifiers 0..65535.
_PORT_LO, _PORT_HI = 61000, 65535
#: How long a finished trace keeps its keys (and flow ids) reserved, at least: replies arriving
#: in that time are recognised as late, never credited to a later trace that reuses the ids.
_LINGER = 2.0
#: Default ``Trace.reach``: the scout probes this many TTLs ahead (traceroute's 16 probes in
#: flight at 3 per hop look ~5 hops ahead). Probes beyond the destination are wasted -- and
#: spend the target's ICMP rate limit -- so not the whole ``max_ttl`` range at once.
_REACH = 8


@expiry_not_timeout
@dataclass(frozen=True, slots=True)
class Trace:
    """What to trace and how. Durations are seconds.

    ``proto`` is ``"udp"`` (destination port ``port``, default 33434), ``"tcp"`` (SYN to
    ``port``, default 80) or ``"icmp"`` (echo). Hops ``first_ttl``..``max_ttl`` are probed.
    ``expiry`` is how long each probe waits for an answer.

    Flows per hop: by default the MDA stopping rule with ``confidence`` (0.95, or 0.99 for the
    stricter table; any value in (0, 1) works through the formula) decides, capped at
    ``max_flows`` flows per trace. ``flows=N`` instead sends exactly N flows through every hop,
    like traceroute's ``-q N`` but with N *different* flows. ``window`` bounds the probes of this
    trace in flight at once. ``dns`` looks up responder names concurrently, waiting at most
    ``dns_timeout`` before yielding a hop without them.

    ``reach``: the destination's distance is unknown, so a scout flow probes ``reach`` TTLs
    from ``first_ttl`` and is pushed further as answers (or silence) come from the deep end;
    probes beyond the destination are wasted (and spend its ICMP rate limit). ``max_ttl``
    probes the whole range at once: one round trip on long paths, many wasted probes on short
    ones.
    """

    addr: IPAddress | str
    proto: Proto = "udp"
    port: int | None = None
    first_ttl: int = 1
    max_ttl: int = 30
    expiry: float = 1.0
    flows: int | None = None
    confidence: float = 0.95
    max_flows: int = 64
    window: int = 32
    dns: bool = False
    dns_timeout: float = 1.0
    reach: int = _REACH

    def __post_init__(self) -> None:
        if isinstance(self.addr, str):
            if not self.addr:
                raise ValueError("Trace.addr must not be empty")
        elif not isinstance(self.addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise TypeError(f"Trace.addr must be an address or host name, not {self.addr!r}")
        if self.proto not in ("udp", "tcp", "icmp"):
            raise ValueError(f"Trace.proto must be 'udp', 'tcp' or 'icmp', not {self.proto!r}")
        if self.port is not None:
            if self.proto == "icmp":
                raise ValueError("Trace.port does not apply to ICMP traces")
            check_int("port", self.port, 1, 65535)
        check_int("first_ttl", self.first_ttl, 1, 255)
        check_int("max_ttl", self.max_ttl, 1, 255)
        if self.first_ttl > self.max_ttl:
            raise ValueError(
                f"first_ttl ({self.first_ttl}) must not exceed max_ttl ({self.max_ttl})"
            )
        check_float("expiry", self.expiry, 0.0, 3600.0, open_low=True)
        check_int("max_flows", self.max_flows, 1, 1024)
        if self.flows is not None:
            check_int("flows", self.flows, 1, self.max_flows)
        if (
            not isinstance(self.confidence, int | float)
            or isinstance(self.confidence, bool)
            or not 0 < self.confidence < 1
        ):
            raise ValueError(
                f"confidence must be a fraction between 0 and 1 (0.95, 0.99), got "
                f"{self.confidence!r}"
            )
        check_int("window", self.window, 1, 65536)
        check_int("reach", self.reach, 1, 255)
        if not isinstance(self.dns, bool):
            raise TypeError(f"dns must be True or False, not {self.dns!r}")
        check_float("dns_timeout", self.dns_timeout, 0.0, 60.0, open_low=True)

    @property
    def dport(self) -> int:
        """The destination port (0 for ICMP)."""
        if self.proto == "icmp":
            return 0
        return self.port if self.port is not None else DEFAULT_PORTS[self.proto]


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceProbe:
    """The outcome of one probe: who answered (``addr``, ``None`` on timeout) and how.

    ``flow`` numbers the trace's flows from 0 (probes with the same number took the same path).
    ``kind`` is ``"timeout"`` or a :class:`~netdiag.wire.trace.ReplyKind` value
    (``"time-exceeded"``, ``"unreachable"``, ``"echo-reply"``, ``"syn-ack"``, ``"rst"``,
    ``"packet-too-big"``, ``"parameter-problem"``). ``mark`` is traceroute's annotation
    (``!X``, ``!F-1280`` ...). ``destination`` says the target itself answered. ``reply_ttl`` is
    the TTL/hop limit the answer arrived with; ``info`` the MTU or parameter-problem pointer.
    """

    ttl: int
    flow: int
    kind: str
    addr: IPAddress | None = None
    rtt: float | None = None
    mark: str = ""
    destination: bool = False
    reply_ttl: int | None = None
    info: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "addr": str(self.addr) if self.addr is not None else None,
            "rtt": self.rtt,
            "flow": self.flow,
            "kind": self.kind,
            "mark": self.mark,
            "destination": self.destination,
            "reply_ttl": self.reply_ttl,
        }


@dataclass(frozen=True, slots=True)
class Responder:
    """One interface that answered at a hop, with every RTT and the flows that reached it."""

    addr: IPAddress
    rtts: tuple[float, ...]
    flows: tuple[int, ...]
    mark: str = ""
    destination: bool = False
    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "addr": str(self.addr),
            "name": self.name,
            "rtts": list(self.rtts),
            "flows": list(self.flows),
            "mark": self.mark,
            "destination": self.destination,
        }


@dataclass(frozen=True, slots=True)
class Hop:
    """Everything learnt at one TTL.

    ``responders`` are in order of first answer. ``timeouts`` counts probes nobody answered.
    ``last`` is true for the final hop of the trace: the target answered (``reached``), an
    unreachable ended it (``mark`` is then ``!H``, ``!N``, ``!P``, ``!X`` ...), or ``max_ttl``.
    """

    ttl: int
    probes: tuple[TraceProbe, ...]
    responders: tuple[Responder, ...]
    timeouts: int
    last: bool
    reached: bool
    mark: str = ""

    @property
    def addrs(self) -> frozenset[IPAddress]:
        """The set of interfaces that answered at this hop."""
        return frozenset(r.addr for r in self.responders)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl,
            "probes": [p.as_dict() for p in self.probes],
            "responders": [r.as_dict() for r in self.responders],
            "timeouts": self.timeouts,
            "last": self.last,
            "reached": self.reached,
            "mark": self.mark,
        }


@dataclass(frozen=True, slots=True)
class TraceResult:
    """A whole route, as :meth:`Tracer.route` collects it.

    ``sent`` counts probes, ``late`` answers that came after their probe expired (never credited
    to anything), ``elapsed`` the seconds from the first probe to the last hop.
    """

    target: IPAddress
    protocol: Proto
    port: int
    hops: tuple[Hop, ...]
    reached: bool
    sent: int
    late: int
    elapsed: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "protocol": self.protocol,
            "port": self.port if self.protocol != "icmp" else None,
            "reached": self.reached,
            "sent": self.sent,
            "late": self.late,
            "elapsed": self.elapsed,
            "hops": [h.as_dict() for h in self.hops],
        }


# -- per-trace state ---------------------------------------------------------------------------


class _Probe:
    __slots__ = ("done", "flow", "sent_ns", "ttl")

    def __init__(self, flow: int, ttl: int) -> None:
        self.flow = flow
        self.ttl = ttl
        self.sent_ns = 0
        self.done = False


class _HopState:
    __slots__ = ("addrs", "mark", "outstanding", "probes", "reached", "sent", "ttl")

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.sent = 0
        self.outstanding = 0
        self.probes: list[TraceProbe] = []
        self.addrs: dict[IPAddress, None] = {}
        self.reached = False
        self.mark = ""


class _Family:
    """One family's sockets: receivers run on the engine; ``send`` puts a probe on the wire."""

    dgram = False

    def __init__(self, v6: bool, tracer: Tracer) -> None:
        self.v6 = v6
        bind, rcvbuf = tracer.bind, tracer.rcvbuf
        engine = self._owned = _Owned(tracer._engine)
        try:
            self._open(v6, bind, rcvbuf, engine)
        except BaseException:
            engine.drop()  # a later socket was refused: keep none (datagram mode may follow)
            raise
        self._kernel_filter(tracer)
        # Source discovery: opened now, so it lives in the same network namespace as the
        # probing sockets even if the caller moves threads between namespaces later.
        self.route = RouteFinder(v6, bind)
        self._anc: dict[tuple[int, bytes], list[tuple[int, int, bytes]]] = {}

    def _open(self, v6: bool, bind: Bind, rcvbuf: int, engine: _Owned) -> None:
        self.icmp = ProbeSocket.raw_icmp(
            v6, bind, types=_TYPES6 if v6 else _TYPES4, rcvbuf=rcvbuf
        )
        engine.add_socket(self.icmp, _icmp_classifier(v6))
        self.tcp = ProbeSocket.raw_transport(
            v6, socket.IPPROTO_TCP, bind, rcvbuf=rcvbuf,
            checksum_offset=TCP6_CHECKSUM_OFFSET if v6 else None,
        )  # fmt: skip
        engine.add_socket(self.tcp, _tcp_classifier(v6))
        if v6:
            self.udp = ProbeSocket.raw_sender(
                True, socket.IPPROTO_UDP, bind, checksum_offset=UDP6_CHECKSUM_OFFSET
            )
            engine.add_socket(self.udp, None)
            self._out = {PROTO_UDP: self.udp, PROTO_TCP: self.tcp, PROTO_ICMP6: self.icmp}
        else:
            self.raw = ProbeSocket.ipv4_header_sender(bind)
            engine.add_socket(self.raw, None)

    def _kernel_filter(self, tracer: Tracer) -> None:
        """Issue 12: only echo replies and errors quoting echo requests or our flow ports
        reach the ICMP socket, only segments to our flow ports the TCP one. A socket the kernel
        refuses a filter stays unfiltered (the classifiers decide, as before)."""
        v6 = self.v6
        for sock, prog in (
            (self.icmp, trace_icmp_filter(v6, _PORT_LO, _PORT_HI)),
            (self.tcp, tcp_port_filter(v6, _PORT_LO, _PORT_HI)),
        ):
            if sock.attach_filter(prog):
                tracer._engine.stats.filter_updates += 1

    def source(self, dst: IPAddress) -> bytes:
        """The local address the kernel routes ``dst`` from (connecting sends nothing)."""
        return self.route.source(dst)

    async def send(
        self, proto: int, src: bytes, dst: bytes, dst_str: str, ttl: int, pid: int, data: bytes
    ) -> int:
        if self.v6:
            sock = self._out[proto]
            anc = self._anc.get((ttl, src))
            if anc is None:
                anc = self._anc[(ttl, src)] = sock.ancillary(ttl=ttl, src=src)
            return await sock.send(data, dst_str, anc)
        head = build_ipv4_header(src, dst, proto, len(data), ttl=ttl, ident=pid)
        return await self.raw.send(head + data, dst_str, [])

    def close(self) -> None:
        # Normally the engine has closed the sockets already; when the *other* family was
        # refused (and datagram mode may follow), this takes them back from the running engine.
        self._owned.drop()
        self.route.close()


class _Owned:
    """The engine, remembering which sockets one family handed it (to take them back)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.socks: list[ProbeSocket] = []

    def add_socket(self, sock: ProbeSocket, classify: Any) -> None:
        self.socks.append(sock)
        self.engine.add_socket(sock, classify)

    def drop(self) -> None:
        for sock in self.socks:
            self.engine.remove_socket(sock)
        self.socks.clear()


class _DgramFamily:
    """One family in datagram mode (no CAP_NET_RAW): UDP probes only, one ordinary UDP socket
    per flow, ICMP errors read from each socket's error queue.

    Nothing is opened per family but the route finder; flow sockets are opened by the trace
    that needs them (:meth:`open_flow`) and handed back with :meth:`close_flow`.
    """

    dgram = True

    def __init__(self, v6: bool, tracer: Tracer) -> None:
        self.v6 = v6
        self.bind = tracer.bind
        self.engine = tracer._engine
        try:
            self.route = RouteFinder(v6, tracer.bind)
        except OSError as e:
            if e.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                raise FamilyUnavailableError(
                    e.errno, f"IPv{6 if v6 else 4} is not available on this host: {e.strerror}"
                ) from None
            raise
        self._anc: dict[int, list[tuple[int, int, bytes]]] = {}
        #: flow sockets currently open (all traces), for introspection and leak tests
        self.open_flows = 0

    def source(self, dst: IPAddress) -> bytes:
        """The local address the kernel routes ``dst`` from (connecting sends nothing)."""
        return self.route.source(dst)

    def open_flow(self, src: bytes) -> tuple[ProbeSocket, int]:
        """A new flow: a UDP socket with RECVERR bound to ``src`` and a port the kernel picks
        (the flow id), its receive loop started on the engine. Binding the source pins it as
        the raw mode's explicit source does (and a :class:`Bind` device still applies)."""
        sock = ProbeSocket.udp_flow(self.v6, src, self.bind.device)
        port = sock.local_port()
        self.engine.add_socket(sock, _queued_udp_classifier(self.v6, port))
        self.open_flows += 1
        return sock, port

    def close_flow(self, sock: ProbeSocket) -> None:
        """Stop the flow socket's receive loop and close it. Idempotent."""
        if sock.fileno() != -1:
            self.open_flows -= 1
        self.engine.remove_socket(sock)

    async def send_flow(
        self, sock: ProbeSocket, data: bytes, dst_str: str, port: int, ttl: int
    ) -> int:
        """Send ``data`` on flow ``sock`` with ``ttl`` as ancillary data (never IP_TTL on the
        socket, so no other probe's TTL can change). A pending error left by an ICMP error
        (which the error queue also holds) fails a sendmsg without sending; retry then."""
        anc = self._anc.get(ttl)
        if anc is None:
            anc = self._anc[ttl] = sock.ancillary(ttl=ttl)
        # The socket waits out a full buffer and retries past a pending error.
        return await sock.send(data, dst_str, anc, port)

    def close(self) -> None:
        self.route.close()


def _queued_udp_classifier(v6: bool, sport: int):  # type: ignore[no-untyped-def]
    """The classifier of one datagram-mode flow socket: only its error queue matters (a
    datagram the target sent back to our port is not an answer to a traceroute probe)."""

    def classify(pkt: Packet) -> Any:
        err = pkt.err
        if err is None:
            return None
        return classify_queued_udp(
            v6, err.origin, err.type, err.code, err.info, err.offender, pkt.src, sport, pkt.data
        )

    return classify


def _icmp_classifier(v6: bool):  # type: ignore[no-untyped-def]
    def classify(pkt: Packet) -> Any:
        return classify_icmp(pkt.data, v6, pkt.src, ip_header=not v6)

    return classify


def _tcp_classifier(v6: bool):  # type: ignore[no-untyped-def]
    def classify(pkt: Packet) -> Any:
        return classify_tcp(pkt.data, v6, pkt.src, ip_header=not v6)

    return classify


class _Session(Session):
    """The state of one trace; the engine's sink for its probes. Its results are whole hops,
    pushed in TTL order as each is settled."""

    def __init__(
        self,
        tracer: Tracer,
        trace: Trace,
        target: IPAddress,
        fam: _Family | _DgramFamily,
        src: bytes,
    ) -> None:
        super().__init__()
        self.tracer = tracer
        self.trace = trace
        self.target = target
        self.dst = target.packed
        self.dst_str = str(target)
        self.src = src
        self.fam = fam
        v6 = fam.v6
        self.v6 = v6
        self.proto = {"udp": PROTO_UDP, "tcp": PROTO_TCP}.get(
            trace.proto, PROTO_ICMP6 if v6 else PROTO_ICMP
        )
        self.dport = trace.dport
        self.token = random.getrandbits(16)
        self.icmp_token = random.getrandbits(32).to_bytes(4, "big")
        #: datagram mode: flow n is the UDP socket flow_socks[n], its port flow_ports[n]
        self.dgram = bool(getattr(fam, "dgram", False))
        self.flow_socks: list[ProbeSocket] = []
        self.flow_ports: list[int] = []
        if self.dgram:
            # The kernel hands each flow socket a port no other socket holds, and the socket
            # (so its port) is kept until the keys are released: no block to reserve.
            self.flow_base = 0
        else:
            self.flow_base = tracer._alloc_flows(self.dst, self.proto, trace.max_flows)
        self.hops: dict[int, _HopState] = {}
        #: The last hop, exactly: ``max_ttl`` until a terminal answer lowers it.
        self.horizon = trace.max_ttl
        #: How deep probes may go for now (the destination's distance is unknown): the scout
        #: flow probes ``first_ttl..reach``; answers from the deep end push it further.
        self.reach = min(trace.first_ttl + trace.reach - 1, trace.max_ttl)
        #: The deepest TTL known to lie before the end of the route (it sent a non-terminal
        #: answer). Hops up to it may get more flows; deeper ones only once their own scout
        #: probe is resolved, so no MDA flow is spent beyond the destination.
        self.known = 0
        self.next_emit = trace.first_ttl
        #: Flows used so far (hop h's probes are flows 0, 1, ... h.sent - 1, in that order).
        self.flows_used = 0
        self.sent = 0
        self.late = 0
        self.duplicates = 0
        self.complete = False
        self.closed = False
        self.leases: list[Lease] = []
        self.started = 0.0
        self.finished_at = 0.0
        self._sender_wake: trio.Event | None = None

    @property
    def settled(self) -> bool:
        # Done at the destination (or max TTL), whatever probes beyond it are still in flight.
        return self.complete

    # -- the MDA bookkeeping -------------------------------------------------------------

    def _needed(self, h: _HopState) -> int:
        """Flows hop ``h`` needs in all. The MDA rule for the interfaces seen so far -- except at
        the destination's hop: once only the target answered there, the hop is settled with the
        answers already in (as scamper's tracelb does): every further flow would reach the same
        host, and the route ends there whatever hop ``d + 1`` would show."""
        if self.trace.flows is not None:
            return self.trace.flows
        if h.reached and h.ttl == self.horizon and len(h.addrs) == 1:
            return 0
        return mda_probes(max(1, len(h.addrs)), self.trace.confidence)

    def _open(self, h: _HopState) -> bool:
        """May hop ``h`` get flows beyond the scout's? Only once it is known to be on the route
        (a deeper hop answered as a router) or its own scout probe is resolved."""
        return h.ttl <= self.known or bool(h.probes)

    def _resolved(self, ttl: int, terminal: bool) -> None:
        """Book-keeping when the probe at ``ttl`` is answered or expires: a router's answer (or
        silence) near the deep end of the reach extends it, so the scout keeps ``reach`` hops
        ahead of what is known, up to ``max_ttl``."""
        if terminal:
            return
        step = self.trace.reach
        if ttl > self.reach - max(1, step // 2) and self.reach < self.trace.max_ttl:
            self.reach = min(ttl + step, self.trace.max_ttl)

    def _hop(self, ttl: int) -> _HopState:
        h = self.hops.get(ttl)
        if h is None:
            h = self.hops[ttl] = _HopState(ttl)
        return h

    def _quota(self, h: _HopState) -> int:
        return min(self._needed(h), self.trace.max_flows)

    def _plan(self) -> list[int]:
        """The probes to send next, as TTLs in order (a TTL repeated once per probe): a scout
        probe for every TTL within reach not yet probed, and for every open, unsettled hop the
        flows it is short of its quota."""
        if self.complete:
            return []
        out: list[int] = []
        for ttl in range(self.next_emit, min(self.horizon, self.reach) + 1):
            h = self.hops.get(ttl)
            if h is None:
                out.append(ttl)
            elif self._open(h):
                out.extend([ttl] * (self._quota(h) - h.sent))
        return out

    def _advance(self) -> None:
        """Emit, in TTL order, every hop that is settled."""
        while not self.complete:
            ttl = self.next_emit
            h = self.hops.get(ttl)
            if h is None or h.outstanding or h.sent < self._quota(h):
                return
            last = ttl >= self.horizon
            self.events.append(self._freeze(h, last))
            self.next_emit += 1
            if last:
                self.complete = True
                self.finished_at = trio.current_time()

    def _freeze(self, h: _HopState, last: bool) -> Hop:
        groups: dict[IPAddress, list[TraceProbe]] = {}
        timeouts = 0
        for p in h.probes:
            if p.addr is None:
                timeouts += 1
            else:
                groups.setdefault(p.addr, []).append(p)
        responders = tuple(
            Responder(
                addr,
                tuple(p.rtt for p in ps if p.rtt is not None),
                tuple(p.flow for p in ps),
                next((p.mark for p in ps if p.mark), ""),
                any(p.destination for p in ps),
            )
            for addr, ps in groups.items()
        )
        probes = tuple(sorted(h.probes, key=lambda p: p.flow))
        return Hop(h.ttl, probes, responders, timeouts, last, h.reached, h.mark)

    # -- engine sink -----------------------------------------------------------------------

    def on_event(self, lease: Lease, event: Reply, packet: Packet) -> None:
        probe: _Probe = lease.probe
        tracer = self.tracer
        if not self._token_ok(event):
            tracer.foreign += 1
            return
        if lease.expired or self.closed:
            self.late += 1
            tracer.late += 1
            return
        if probe.done:
            self.duplicates += 1
            return
        probe.done = True
        lease.finish()
        self.outstanding -= 1
        h = self._hop(probe.ttl)
        h.outstanding -= 1
        # An error-queue entry comes "from" our destination and names the router as offender.
        who = packet.src if event.addr is None else event.addr
        addr = ipaddress.ip_address(who)
        rtt = max(packet.stamp_ns - probe.sent_ns, 0) / 1e9 if probe.sent_ns else None
        reached = event.terminal and event.from_destination and who == self.dst
        mark = event.mark
        if event.terminal and not reached and not mark:
            mark = "!?"
        h.probes.append(
            TraceProbe(
                probe.ttl,
                probe.flow,
                event.kind.value,
                addr,
                rtt,
                mark,
                reached,
                packet.ttl,
                event.info,
            )
        )
        h.addrs[addr] = None
        if not event.terminal:
            self.known = max(self.known, probe.ttl)
        self._resolved(probe.ttl, event.terminal)
        if event.terminal and probe.ttl <= self.horizon:
            self.horizon = probe.ttl
            if reached:
                h.reached = True
            elif not h.mark:
                h.mark = mark
        if self.trace.dns:
            self.tracer._lookup(addr, self.trace.dns_timeout)
        self._advance()
        self._notify()

    def _token_ok(self, event: Reply) -> bool:
        """Does ``event`` carry this trace's token? Echo replies must echo it whole; an error
        quoting an echo probe only as far as the router quoted it (as ping does)."""
        token = event.token
        if token is None:
            return True
        if event.kind is ReplyKind.ECHO_REPLY:
            return token == self.icmp_token
        if isinstance(token, bytes):
            return self.icmp_token.startswith(token)
        return token == self.token

    def on_expire(self, lease: Lease) -> None:
        probe: _Probe = lease.probe
        self.outstanding -= 1
        h = self._hop(probe.ttl)
        h.outstanding -= 1
        h.probes.append(TraceProbe(probe.ttl, probe.flow, "timeout"))
        self._resolved(probe.ttl, False)
        self._advance()
        self._notify()

    # -- plumbing --------------------------------------------------------------------------

    def _notify(self) -> None:
        if self._sender_wake is not None:
            self._sender_wake.set()
        self.wake()

    async def _sender_wait(self) -> None:
        self._sender_wake = ev = trio.Event()
        await ev.wait()

    async def _send_all(self) -> None:
        engine = self.tracer._engine
        trace = self.trace
        expiry = trace.expiry
        window = trace.window
        fam = self.fam
        proto, src, dst, dst_str, dport = self.proto, self.src, self.dst, self.dst_str, self.dport
        v6 = self.v6
        self.started = trio.current_time()
        while not self.complete:
            ttls = self._plan()
            if not ttls:
                self._advance()
                if self.complete:
                    break
                await self._sender_wait()
                continue
            for ttl in ttls:
                while self.outstanding >= window and not self.complete:
                    await self._sender_wait()
                if ttl > self.horizon or self.complete:
                    break
                h = self.hops.get(ttl)
                if h is not None and h.sent >= self._quota(h):
                    continue  # answers meanwhile settled it (the destination's hop, say)
                # Flows go to each hop in order, so a hop's probes are flows 0..sent-1 and
                # every flow keeps its id at every TTL it is sent to (Paris).
                flow = h.sent if h is not None else 0
                self.flows_used = max(self.flows_used, flow + 1)
                # (datagram mode: the port of the flow's own socket, opened on first use)
                fid = self._flow_port(flow) if self.dgram else self.flow_base + flow
                pid = encode_pid(ttl)
                key = (dst, proto, fid, pid)
                probe = _Probe(flow, ttl)
                try:
                    lease = engine.register(key, self, expiry, probe)
                except KeyInUseError:  # cannot happen with reserved flow blocks
                    raise NetdiagError(f"probe key {key!r} already in use") from None
                self.leases.append(lease)
                h = self._hop(ttl)
                h.sent += 1
                h.outstanding += 1
                self.outstanding += 1
                self.sent += 1
                try:
                    if self.dgram:
                        probe.sent_ns = await fam.send_flow(  # type: ignore[union-attr]
                            self.flow_socks[flow],
                            build_dgram_payload(pid, self.token),
                            dst_str,
                            dport,
                            ttl,
                        )
                    else:
                        data = build_probe(
                            proto,
                            src,
                            dst,
                            fid,
                            dport,
                            pid,
                            token=self.token,
                            icmp_token=self.icmp_token,
                            v6=v6,
                        )
                        probe.sent_ns = await fam.send(  # type: ignore[union-attr]
                            proto, src, dst, dst_str, ttl, pid, data
                        )
                except OSError as e:
                    lease.release()
                    raise OSError(e.errno, f"cannot send to {dst_str}: {e.strerror}") from None

    def _flow_port(self, flow: int) -> int:
        """Datagram mode: the source port of flow ``flow``, opening its socket on first use
        (flows are used in order, and at most ``max_flows`` of them)."""
        while len(self.flow_socks) <= flow:
            if len(self.flow_socks) >= self.trace.max_flows:
                raise NetdiagError(f"flow {flow} beyond max_flows ({self.trace.max_flows})")
            sock, port = self.fam.open_flow(self.src)  # type: ignore[union-attr]
            self.flow_socks.append(sock)
            self.flow_ports.append(port)
        return self.flow_ports[flow]

    def close(self) -> None:
        """Stop sending; keep the keys registered (and, in datagram mode, the flow sockets
        open) a while so stragglers count as late."""
        if self.closed:
            return
        self.closed = True
        super().close()
        linger = max(_LINGER, 2 * self.trace.expiry)
        socks = [(self.fam, s) for s in self.flow_socks]
        base = None if self.dgram else self.flow_base
        self.tracer._linger(self.leases, self.dst, self.proto, base, linger, socks)
        self.leases = []
        self.flow_socks = []


# -- the Tracer --------------------------------------------------------------------------------


class Tracer(Diagnostic):
    """Trace routes to many targets concurrently over one set of raw sockets per family.

    Use it as an async context manager: entering opens the sockets and starts the receive loops
    (missing privileges raise :class:`~netdiag.errors.PrivilegeError`); leaving cancels every
    trace still running. A family that cannot be opened does not stop the other: tracing a
    target of that family raises :class:`FamilyUnavailableError` saying why.

    ``privileged``: ``None`` (default) uses raw sockets if permitted, else datagram mode (UDP
    traces over ordinary UDP sockets, no CAP_NET_RAW needed; ICMP and TCP traces then raise
    :class:`~netdiag.errors.PrivilegeError`); ``True`` raw sockets only; ``False`` datagram
    mode only. :attr:`mode` says which was chosen once entered.
    """

    def __init__(
        self,
        bind: Bind | None = None,
        *,
        privileged: bool | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> None:
        super().__init__(bind, rcvbuf, privileged)
        self._blocks: dict[tuple[bytes, int], list[tuple[int, int]]] = {}
        self._cursor = random.randrange(0x10000)
        self._names: dict[IPAddress, str | None] = {}
        self._pending_names: dict[IPAddress, trio.Event] = {}
        #: answers that came after their probe expired or its trace ended (never credited)
        self.late = 0
        #: answers that matched a key but carried another trace's token
        self.foreign = 0

    def _close_family(self, fam: _Family) -> None:
        fam.close()

    def _open_mode(self, dgram: bool) -> None:
        """Raw sockets, or the datagram mode's UDP flow sockets. Raw sockets already handed to
        the engine are closed by it; the route finder is ours."""
        if dgram:
            self._families.open(lambda v6: _DgramFamily(v6, self), _DgramFamily.close)
        else:
            self._families.open(lambda v6: _Family(v6, self), _Family.close)

    def _check_mode(self, trace: Trace) -> None:
        if self.mode == "datagram" and trace.proto != "udp":
            flag = "-I" if trace.proto == "icmp" else "-T"
            raise PrivilegeError(
                message=f"{trace.proto.upper()} traces ({flag}) need raw sockets, and "
                + raw_socket_advice()
                + "; UDP traces work without it"
            )

    # -- flow id blocks ----------------------------------------------------------------------

    def _alloc_flows(self, dst: bytes, proto: int, size: int) -> int:
        """A block of ``size`` flow ids (source ports, or echo identifiers) that no running or
        lingering trace of this Tracer uses towards ``dst`` with ``proto``."""
        lo, hi = (0, 0xFFFF) if proto in (PROTO_ICMP, PROTO_ICMP6) else (_PORT_LO, _PORT_HI)
        span = hi - lo + 1
        if size > span:
            raise ValueError(f"at most {span} flows per trace")
        used = self._blocks.setdefault((dst, proto), [])
        # The rotating cursor spreads traces over the range (ids are not reused soon after a
        # trace ends); first fit after existing blocks uses the gaps when the cursor spot is
        # taken.
        candidates = [lo + self._cursor % span, *(b + s for b, s in used), lo]
        for base in candidates:
            if base + size - 1 > hi:
                continue
            if all(base + size <= b or b + s <= base for b, s in used):
                used.append((base, size))
                self._cursor = base - lo + size
                return base
        raise NetdiagError(f"too many concurrent traces to one target ({len(used)})")

    def _linger(
        self,
        leases: list[Lease],
        dst: bytes,
        proto: int,
        base: int | None,
        seconds: float,
        socks: Sequence[tuple[Any, ProbeSocket]] = (),
    ) -> None:
        def free() -> None:
            for lease in leases:
                lease.release()
            # Datagram mode: the flow sockets (and so their ports) go with the keys.
            for fam, sock in socks:
                fam.close_flow(sock)
            if base is None:
                return
            used = self._blocks.get((dst, proto), [])
            for i, (b, _s) in enumerate(used):
                if b == base:
                    del used[i]
                    break

        async def later() -> None:
            try:
                await trio.sleep(seconds)
            finally:
                free()

        try:
            self._engine.nursery.start_soon(later)
        except RuntimeError:  # the Tracer is closing: nothing can arrive any more
            free()

    # -- reverse DNS ---------------------------------------------------------------------------

    def _lookup(self, addr: IPAddress, timeout: float) -> None:
        if addr in self._names or addr in self._pending_names:
            return
        done = self._pending_names[addr] = trio.Event()

        async def look() -> None:
            name = None
            try:
                with trio.move_on_after(timeout):
                    name = await reverse(addr)
            finally:
                self._names[addr] = name
                self._pending_names.pop(addr, None)
                done.set()

        self._engine.nursery.start_soon(look)

    async def _named(self, hop: Hop, timeout: float) -> Hop:
        if not hop.responders:
            return hop
        with trio.move_on_after(timeout):
            for r in hop.responders:
                self._lookup(r.addr, timeout)
                ev = self._pending_names.get(r.addr)
                if ev is not None:
                    await ev.wait()
        rs = tuple(replace(r, name=self._names.get(r.addr)) for r in hop.responders)
        return replace(hop, responders=rs)

    # -- tracing -------------------------------------------------------------------------------

    async def trace(self, trace: Trace) -> AsyncIterator[Hop]:
        """Trace the route and yield each :class:`Hop`, in TTL order, as soon as it is settled.
        The last one has ``last=True``."""
        async for hop in self._hops(trace, None):
            yield hop

    async def route(self, trace: Trace) -> TraceResult:
        """Run a whole trace and return the route with its counters."""
        box: list[_Session] = []
        start = time.monotonic()
        hops = [hop async for hop in self._hops(trace, box)]
        s = box[0]
        elapsed = (s.finished_at - s.started) if s.finished_at else time.monotonic() - start
        return TraceResult(
            s.target,
            trace.proto,
            trace.dport,
            tuple(hops),
            any(h.reached for h in hops),
            s.sent,
            s.late,
            elapsed,
        )

    def prepare(self, trace: Trace) -> None:
        """Check ``trace`` can run here: nothing to open per trace in raw mode (every socket is
        opened on entry; datagram mode opens ordinary UDP sockets, which need no privilege);
        kept for symmetry with the Pinger so CLIs can drop privileges after preparing.
        Raises :class:`~netdiag.errors.PrivilegeError` for ICMP/TCP traces in datagram mode."""
        if not isinstance(trace, Trace):
            raise TypeError(f"expected a netdiag.Trace, got {trace!r}")
        self._check_mode(trace)

    async def _hops(self, trace: Trace, box: list[_Session] | None) -> AsyncIterator[Hop]:
        if not isinstance(trace, Trace):
            raise TypeError(f"expected a netdiag.Trace, got {trace!r}")
        self._check_mode(trace)
        target = await resolve(trace.addr)
        fam = self._family(target.version == 6)
        src = fam.source(target)
        session = _Session(self, trace, target, fam, src)
        if box is not None:
            box.append(session)
        async for hop in stream(self._engine, session):
            if trace.dns:
                hop = await self._named(hop, trace.dns_timeout)
            yield hop
