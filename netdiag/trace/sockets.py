"""How a trace probe is sent: each family's socket set, raw or datagram, behind one interface.

A family's :class:`ProbeSockets` is opened when the Tracer is entered and shared by every trace
of that family. For one trace it hands out a :class:`Flows`: the trace's way onto the wire,
with two operations the session needs and nothing else -- ``flow_id(flow)`` (the source port
or echo identifier that flow ``flow`` carries, part of the demux key) and ``outgoing(flow, ttl,
pid)`` (the socket, bytes, destination and ancillary data of one probe, which the session hands
to the engine's probe template to register and send). ``release()`` gives the flow ids (and
datagram mode's sockets) back after the linger.

* **Raw mode** (:class:`RawSockets`, needs CAP_NET_RAW). Per family a raw ICMP socket receives
  time-exceeded / unreachable / echo replies, a raw TCP socket receives SYN-ACK / RST. IPv4
  probes of all three protocols leave through one ``IPPROTO_RAW`` socket with an IPv4 header we
  build (``IP_HDRINCL``): the TTL and the IP ID (= probe id) are per packet and nothing
  socket-wide is touched, so concurrent probes cannot race. IPv6 probes leave through a raw
  socket of their protocol, with the hop limit and the source address as ``sendmsg`` ancillary
  data and the checksum filled by the kernel (IPV6_CHECKSUM; for ICMPv6 always). Flow ids come
  from a block reserved per trace (:class:`~netdiag.trace.tracer.FlowBlocks`).
* **Datagram mode** (:class:`DgramSockets`, no privilege), as Linux traceroute's default method
  does: UDP traces only, each flow an ordinary UDP socket bound to the source address with a
  port the kernel picks -- that port is the flow id -- sending with the TTL / hop limit as
  ancillary data and reading ICMP errors from its error queue (IP_RECVERR / IPV6_RECVERR); the
  probe id and the trace's token ride in the payload. Each flow socket has its own receive loop
  on the engine and is removed from it on ``release()`` or when the Tracer closes.

In both modes the source address is found per target with a connected UDP socket
(:class:`~netdiag.sock.RouteFinder`), because the UDP/TCP checksums cover it and the raw UDP
checksum is the probe id. The classifiers turn received packets into the same
``(key, Reply)`` pairs in both modes (:mod:`netdiag.wire.trace`).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..engine import Engine
from ..errors import FamilyUnavailableError, NetdiagError
from ..sock import Bind, IPAddress, Packet, ProbeSocket, RouteFinder
from ..wire.bpf import tcp_port_filter, trace_icmp_filter
from ..wire.cmsg import Cmsg
from ..wire.ip import build_ipv4_header
from ..wire.tcp import TCP6_CHECKSUM_OFFSET
from ..wire.trace import (
    PROTO_ICMP6,
    PROTO_TCP,
    PROTO_UDP,
    ProbeKey,
    Reply,
    build_dgram_payload,
    build_probe,
    classify_icmp,
    classify_queued_udp,
    classify_tcp,
)
from ..wire.udp import UDP6_CHECKSUM_OFFSET

if TYPE_CHECKING:
    from .tracer import FlowBlocks

__all__ = [
    "DgramSockets",
    "FlowSpec",
    "Flows",
    "Outgoing",
    "ProbeSockets",
    "RawSockets",
    "icmp_classifier",
    "queued_udp_classifier",
    "tcp_classifier",
]

#: What a classifier of received packets returns: the demux key and the reply, or ``None``.
Classified = tuple[ProbeKey, Reply] | None
Classifier = Callable[[Packet], Classified]

#: Source ports of raw-mode UDP/TCP flows: above Linux's default ephemeral range (32768-60999),
#: so the kernel's own connections rarely share one (and the kernel filters of the receive
#: sockets pass only these). ICMP flows take their echo identifiers from the same range, so
#: the ICMP socket's filter keeps other programs' echo replies (a Pinger beside us) out.
PORT_LO, PORT_HI = 61000, 65535
#: ICMP types the receive sockets need; the kernel filters out the rest.
_TYPES4 = (0, 3, 11, 12)
_TYPES6 = (1, 2, 3, 4, 129)


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """What every probe of one trace shares: protocol number, addresses, destination port
    (0 for ICMP), the trace's tokens, and how many flows it may use."""

    proto: int
    src: bytes
    dst: bytes
    dst_str: str
    dport: int
    token: int
    icmp_token: bytes
    max_flows: int


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One probe ready for :meth:`~netdiag.engine.ProbeSession.launch`: the socket it leaves
    through, its bytes, the destination, the ancillary data (TTL, source) and port."""

    sock: ProbeSocket
    data: bytes
    dst: str
    anc: list[Cmsg]
    port: int = 0


class Flows:
    """One trace's flows on the wire (see the module docstring)."""

    def flow_id(self, flow: int) -> int:
        """The flow id (source port, echo identifier) flow ``flow`` carries, the third part
        of its probes' demux key. Flows are first used in order, from 0."""
        raise NotImplementedError

    def outgoing(self, flow: int, ttl: int, pid: int) -> Outgoing:
        """Flow ``flow``'s probe ``pid`` with ``ttl``, ready to send: nothing leaves here."""
        raise NotImplementedError

    def release(self) -> None:
        """Give the flow ids (and any per-flow sockets) back. Idempotent."""
        raise NotImplementedError


class ProbeSockets:
    """One family's socket set, shared by every trace of that family."""

    v6: bool
    route: RouteFinder

    def source(self, dst: IPAddress) -> bytes:
        """The local address the kernel routes ``dst`` from (connecting sends nothing)."""
        raise NotImplementedError

    def first_hops(self, dst: IPAddress) -> int | None:
        """How many next hops the kernel's route to ``dst`` has -- hop 1's interfaces: 1 for
        one gateway (or on-link), the ECMP set's size -- or ``None`` when it does not say.
        Asked over netlink: nothing is sent."""
        return self.route.first_hops(dst)

    def flows(self, spec: FlowSpec) -> Flows:
        """The flows of one new trace."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine does not close (the route finder; see subclasses)."""
        raise NotImplementedError


# -- classifiers -----------------------------------------------------------------------------


def icmp_classifier(v6: bool) -> Classifier:
    """The raw ICMP socket's classifier (IPv4 raw sockets hand us the IP header too)."""

    def classify(pkt: Packet) -> Classified:
        return classify_icmp(pkt.data, v6, pkt.src, ip_header=not v6)

    return classify


def tcp_classifier(v6: bool) -> Classifier:
    """The raw TCP socket's classifier: SYN-ACK / RST answering our SYNs."""

    def classify(pkt: Packet) -> Classified:
        return classify_tcp(pkt.data, v6, pkt.src, ip_header=not v6)

    return classify


def queued_udp_classifier(v6: bool, sport: int) -> Classifier:
    """The classifier of one datagram-mode flow socket: only its error queue matters (a
    datagram the target sent back to our port is not an answer to a traceroute probe)."""

    def classify(pkt: Packet) -> Classified:
        err = pkt.err
        if err is None:
            return None
        return classify_queued_udp(
            v6, err.origin, err.type, err.code, err.info, err.offender, pkt.src, sport, pkt.data
        )

    return classify


# -- raw mode --------------------------------------------------------------------------------


class _Owned:
    """The engine, remembering which sockets one family handed it (to take them back)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.socks: list[ProbeSocket] = []

    def add_socket(self, sock: ProbeSocket, classify: Classifier | None) -> None:
        self.socks.append(sock)
        self.engine.add_socket(sock, classify)

    def drop(self) -> None:
        for sock in self.socks:
            self.engine.remove_socket(sock)
        self.socks.clear()


class RawSockets(ProbeSockets):
    """One family's raw sockets: receivers run on the engine; :meth:`send_raw` puts a probe's
    bytes on the wire. Flow ids come from ``blocks``."""

    def __init__(
        self, v6: bool, engine: Engine, bind: Bind, rcvbuf: int, blocks: FlowBlocks
    ) -> None:
        self.v6 = v6
        self.blocks = blocks
        owned = self._owned = _Owned(engine)
        try:
            self._open(v6, bind, rcvbuf, owned)
        except BaseException:
            owned.drop()  # a later socket was refused: keep none (datagram mode may follow)
            raise
        self._kernel_filter(engine)
        # Source discovery: opened now, so it lives in the same network namespace as the
        # probing sockets even if the caller moves threads between namespaces later.
        self.route = RouteFinder(v6, bind)
        self._anc: dict[tuple[int, bytes], list[tuple[int, int, bytes]]] = {}

    def _open(self, v6: bool, bind: Bind, rcvbuf: int, engine: _Owned) -> None:
        self.icmp = ProbeSocket.raw_icmp(v6, bind, types=_TYPES6 if v6 else _TYPES4, rcvbuf=rcvbuf)
        engine.add_socket(self.icmp, icmp_classifier(v6))
        self.tcp = ProbeSocket.raw_transport(
            v6, socket.IPPROTO_TCP, bind, rcvbuf=rcvbuf,
            checksum_offset=TCP6_CHECKSUM_OFFSET if v6 else None,
        )  # fmt: skip
        engine.add_socket(self.tcp, tcp_classifier(v6))
        if v6:
            self.udp = ProbeSocket.raw_sender(
                True, socket.IPPROTO_UDP, bind, checksum_offset=UDP6_CHECKSUM_OFFSET
            )
            engine.add_socket(self.udp, None)
            self._out = {PROTO_UDP: self.udp, PROTO_TCP: self.tcp, PROTO_ICMP6: self.icmp}
        else:
            self.raw = ProbeSocket.ipv4_header_sender(bind)
            engine.add_socket(self.raw, None)

    def _kernel_filter(self, engine: Engine) -> None:
        """Issue 12: only echo replies and errors quoting echo requests or our flow ports
        reach the ICMP socket, only segments to our flow ports the TCP one. A socket the kernel
        refuses a filter stays unfiltered (the classifiers decide, as before)."""
        v6 = self.v6
        for sock, prog in (
            (self.icmp, trace_icmp_filter(v6, PORT_LO, PORT_HI)),
            (self.tcp, tcp_port_filter(v6, PORT_LO, PORT_HI)),
        ):
            if sock.attach_filter(prog):
                engine.stats.filter_updates += 1

    def source(self, dst: IPAddress) -> bytes:
        return self.route.source(dst)

    def flows(self, spec: FlowSpec) -> Flows:
        return RawFlows(self, spec, self.blocks)

    def raw_packet(
        self, proto: int, src: bytes, dst: bytes, dst_str: str, ttl: int, pid: int, data: bytes
    ) -> Outgoing:
        """One probe's transport bytes ``data`` with ``ttl``, ready to send (IPv4: under a
        header we build, whose ID is ``pid``; IPv6: TTL and source as ancillary data)."""
        if self.v6:
            sock = self._out[proto]
            anc = self._anc.get((ttl, src))
            if anc is None:
                anc = self._anc[(ttl, src)] = sock.ancillary(ttl=ttl, src=src)
            return Outgoing(sock, data, dst_str, anc)
        head = build_ipv4_header(src, dst, proto, len(data), ttl=ttl, ident=pid)
        return Outgoing(self.raw, head + data, dst_str, [])

    def close(self) -> None:
        # Normally the engine has closed the sockets already; when the *other* family was
        # refused (and datagram mode may follow), this takes them back from the running engine.
        self._owned.drop()
        self.route.close()


class RawFlows(Flows):
    """A raw-mode trace's flows: ids ``base .. base + max_flows - 1`` from a reserved block,
    probes built by :func:`~netdiag.wire.trace.build_probe`."""

    def __init__(self, sockets: RawSockets, spec: FlowSpec, blocks: FlowBlocks) -> None:
        self.sockets = sockets
        self.spec = spec
        self.blocks = blocks
        self.base = blocks.alloc(spec.dst, spec.proto, spec.max_flows)
        self._released = False

    def flow_id(self, flow: int) -> int:
        return self.base + flow

    def outgoing(self, flow: int, ttl: int, pid: int) -> Outgoing:
        s = self.spec
        data = build_probe(
            s.proto,
            s.src,
            s.dst,
            self.base + flow,
            s.dport,
            pid,
            token=s.token,
            icmp_token=s.icmp_token,
            v6=self.sockets.v6,
        )
        return self.sockets.raw_packet(s.proto, s.src, s.dst, s.dst_str, ttl, pid, data)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.blocks.free(self.spec.dst, self.spec.proto, self.base)


# -- datagram mode ---------------------------------------------------------------------------


class DgramSockets(ProbeSockets):
    """One family in datagram mode (no CAP_NET_RAW): UDP probes only, one ordinary UDP socket
    per flow, ICMP errors read from each socket's error queue.

    Nothing is opened per family but the route finder; flow sockets are opened by the trace
    that needs them (:meth:`open_flow`) and handed back with :meth:`close_flow`.
    """

    def __init__(self, v6: bool, engine: Engine, bind: Bind) -> None:
        self.v6 = v6
        self.bind = bind
        self.engine = engine
        try:
            self.route = RouteFinder(v6, bind)
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
        return self.route.source(dst)

    def flows(self, spec: FlowSpec) -> Flows:
        return DgramFlows(self, spec)

    def open_flow(self, src: bytes) -> tuple[ProbeSocket, int]:
        """A new flow: a UDP socket with RECVERR bound to ``src`` and a port the kernel picks
        (the flow id), its receive loop started on the engine. Binding the source pins it as
        the raw mode's explicit source does (and a :class:`Bind` device still applies)."""
        sock = ProbeSocket.udp_flow(self.v6, src, self.bind.device)
        port = sock.local_port()
        self.engine.add_socket(sock, queued_udp_classifier(self.v6, port))
        self.open_flows += 1
        return sock, port

    def close_flow(self, sock: ProbeSocket) -> None:
        """Stop the flow socket's receive loop and close it. Idempotent."""
        if sock.fileno() != -1:
            self.open_flows -= 1
        self.engine.remove_socket(sock)

    def flow_packet(
        self, sock: ProbeSocket, data: bytes, dst_str: str, port: int, ttl: int
    ) -> Outgoing:
        """``data`` on flow ``sock`` with ``ttl`` as ancillary data (never IP_TTL on the
        socket, so no other probe's TTL can change), ready to send. The socket itself retries
        a send refused by a pending error that an earlier ICMP error left."""
        anc = self._anc.get(ttl)
        if anc is None:
            anc = self._anc[ttl] = sock.ancillary(ttl=ttl)
        return Outgoing(sock, data, dst_str, anc, port)

    def close(self) -> None:
        self.route.close()


class DgramFlows(Flows):
    """A datagram-mode trace's flows: flow ``n`` is the UDP socket ``socks[n]``, opened on
    first use, its port ``ports[n]``. The kernel hands each socket a port no other socket
    holds, and the socket (so its port) is kept until :meth:`release`: no block to reserve."""

    def __init__(self, sockets: DgramSockets, spec: FlowSpec) -> None:
        self.sockets = sockets
        self.spec = spec
        self.socks: list[ProbeSocket] = []
        self.ports: list[int] = []

    def flow_id(self, flow: int) -> int:
        """The source port of flow ``flow``, opening its socket on first use (flows are used
        in order, and at most ``max_flows`` of them)."""
        while len(self.socks) <= flow:
            if len(self.socks) >= self.spec.max_flows:
                raise NetdiagError(f"flow {flow} beyond max_flows ({self.spec.max_flows})")
            sock, port = self.sockets.open_flow(self.spec.src)
            self.socks.append(sock)
            self.ports.append(port)
        return self.ports[flow]

    def outgoing(self, flow: int, ttl: int, pid: int) -> Outgoing:
        s = self.spec
        data = build_dgram_payload(pid, s.token)
        return self.sockets.flow_packet(self.socks[flow], data, s.dst_str, s.dport, ttl)

    def release(self) -> None:
        socks, self.socks = self.socks, []
        for sock in socks:
            self.sockets.close_flow(sock)
