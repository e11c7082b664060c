"""One running trace: the engine's sink for its probes, between the planner and the sockets.

The session does the IO the :class:`~netdiag.trace.planner.Planner` asks for and nothing else
decides anything about the route. Its sender task asks the planner for the next probe, registers
its key ``(target, protocol, flow id, probe id)`` with the engine *before* sending (so even a
reply that arrives while ``sendmsg`` returns finds its waiter), and sends it through the trace's
:class:`~netdiag.trace.sockets.Flows`; when the planner has nothing to send it waits for the
next answer or expiry. Replies come back from the engine's receive loops already classified:
the session checks the trace's token, sorts out late and duplicate answers (a late one -- after
its probe expired or the trace ended -- is counted, never credited), turns the first answer into
a :class:`~netdiag.trace.results.TraceProbe` and tells the planner, then queues the hops the
planner settled for the caller's ``async for``. On close it hands its keys (and flows) to the
Tracer to linger, so stragglers are still recognised as late.
"""

from __future__ import annotations

import ipaddress
import random
from typing import TYPE_CHECKING

import trio

from ..engine import Lease, Probe, ProbeSession, Session, Verdict
from ..sock import IPAddress, Packet
from ..wire.trace import PROTO_ICMP, PROTO_ICMP6, PROTO_TCP, PROTO_UDP, Reply, ReplyKind, encode_pid
from .options import Trace
from .planner import Planner
from .results import TraceProbe
from .sockets import Flows, FlowSpec, ProbeSockets

if TYPE_CHECKING:
    from .tracer import Tracer

__all__ = ["LINGER", "TraceSession"]

#: How long a finished trace keeps its keys (and flow ids) reserved, at least: replies arriving
#: in that time are recognised as late, never credited to a later trace that reuses the ids.
LINGER = 2.0


class _Probe(Probe):
    """Per-probe state the engine keeps in the lease: which probe (TTL, flow)."""

    __slots__ = ("flow", "ttl")

    def __init__(self, ttl: int, flow: int) -> None:
        super().__init__()
        self.ttl = ttl
        self.flow = flow


#: What one answer means to a trace: the probe's outcome, and whether it ends the route at its
#: TTL (an arrival, or an unreachable other than fragmentation-needed).
Answer = tuple[TraceProbe, bool]


class TraceSession(ProbeSession[_Probe, Answer]):
    """The state of one trace, on the engine's probe template; its results are whole hops,
    pushed in TTL order as the planner settles each."""

    def __init__(
        self,
        tracer: Tracer,
        trace: Trace,
        target: IPAddress,
        sockets: ProbeSockets,
        src: bytes,
        *,
        flows_of: TraceSession | None = None,
        attempt: int = 0,
        keep_flows: bool = False,
        first_hops: int | None = None,
    ) -> None:
        """``first_hops`` is how many next hops the kernel's route to ``target`` has (hop 1's
        interfaces), if known. ``flows_of``, ``attempt`` and ``keep_flows`` serve traces
        repeated in rounds (:mod:`netdiag.trace.monitor`): a round sends on the flows (and
        with the tokens) of an earlier round's session ``flows_of`` -- the same Paris flows
        every round -- with probe ids of ``attempt`` so its keys never meet an earlier
        round's lingering ones; ``keep_flows`` (implied by ``flows_of``) leaves the flows
        reserved when the session closes: the monitor releases them at its end."""
        super().__init__(tracer.engine, trace.expiry)
        self.tracer = tracer
        self.trace = trace
        self.target = target
        self.dst = target.packed
        self.dst_str = str(target)
        v6 = sockets.v6
        self.proto = {"udp": PROTO_UDP, "tcp": PROTO_TCP}.get(
            trace.proto, PROTO_ICMP6 if v6 else PROTO_ICMP
        )
        self.token: int
        self.icmp_token: bytes
        self.flows: Flows
        self.attempt = attempt
        self.keep_flows = keep_flows or flows_of is not None
        if flows_of is not None:
            self.token, self.icmp_token = flows_of.token, flows_of.icmp_token
            self.flows = flows_of.flows
        else:
            self.token = random.getrandbits(16)
            self.icmp_token = random.getrandbits(32).to_bytes(4, "big")
            self.flows = sockets.flows(self._spec(src, trace.dport, trace.max_flows))
        self.planner = Planner(
            first_ttl=trace.first_ttl,
            max_ttl=trace.max_ttl,
            reach=trace.reach,
            flows=trace.flows,
            confidence=trace.confidence,
            max_flows=trace.max_flows,
            window=trace.window,
            minimize=trace.minimize,
            first_hops=first_hops,
            stop_at_first_arrival=trace.stop_at_first_arrival,
        )
        self.late = 0
        self.duplicates = 0
        self.started = 0.0
        self._sender_wake: trio.Event | None = None

    def _spec(self, src: bytes, dport: int, max_flows: int) -> FlowSpec:
        """What every probe of this trace shares (raw mode reserves a block of flow ids)."""
        return FlowSpec(
            self.proto, src, self.dst, self.dst_str, dport, self.token, self.icmp_token, max_flows
        )

    @property
    def settled(self) -> bool:
        # Done at the destination (or max TTL), whatever probes beyond it are still in flight.
        return self.planner.complete

    @property
    def finished_at(self) -> float:
        """trio's clock when the last hop was settled (0.0 until then)."""
        return self.planner.finished_at or 0.0

    # -- sending ---------------------------------------------------------------------------

    async def _send_all(self) -> None:
        planner, flows = self.planner, self.flows
        dst, proto = self.dst, self.proto
        self.started = trio.current_time()
        while not planner.complete:
            send = planner.next_probe()
            if send is None:
                await self._sender_wait()  # for an answer or an expiry
                continue
            fid = flows.flow_id(send.flow)  # (datagram mode: opens the flow's socket)
            pid = encode_pid(send.ttl, self.attempt)
            out = flows.outgoing(send.flow, send.ttl, pid)
            probe = _Probe(send.ttl, send.flow)
            await self.launch(
                (dst, proto, fid, pid), probe, out.sock, out.data, out.dst, out.anc,
                port=out.port,
            )  # fmt: skip

    async def _sender_wait(self) -> None:
        self._sender_wake = ev = trio.Event()
        await ev.wait()

    def _notify(self) -> None:
        """Queue the hops the planner settled; wake the sender and the caller."""
        self.events.extend(self.planner.settled_hops())
        if self._sender_wake is not None:
            self._sender_wake.set()
        self.wake()

    # -- what the template asks of a diagnostic ----------------------------------------------

    def answer(self, probe: _Probe, event: Reply, packet: Packet) -> Answer | None:
        if not self._token_ok(event):
            self.tracer.foreign += 1
            return None
        # An error-queue entry comes "from" our destination and names the router as offender.
        who = packet.src if event.addr is None else event.addr
        reached = event.terminal and event.from_destination and who == self.dst
        mark = event.mark
        if event.terminal and not reached and not mark:
            mark = "!?"
        outcome = TraceProbe(
            probe.ttl,
            probe.flow,
            event.kind.value,
            ipaddress.ip_address(who),
            probe.rtt(packet),
            mark,
            reached,
            packet.ttl,
            event.info,
            # issue 13: RFC 4884 extensions (MPLS label stack, interface information)
            mpls=event.ext.mpls if event.ext is not None else (),
            interfaces=event.ext.interfaces if event.ext is not None else (),
            quoted_ttl=event.quote_ttl,
        )
        return outcome, event.terminal

    def accept(self, lease: Lease, probe: _Probe, result: Answer, verdict: Verdict) -> None:
        """A first answer goes to the planner; late and duplicate ones are only counted (a
        late one -- after its probe expired or the trace ended -- is never credited)."""
        if verdict is Verdict.LATE:
            self.late += 1
            self.tracer.late += 1
            return
        if verdict is Verdict.DUPLICATE:
            self.duplicates += 1
            return
        outcome, terminal = result
        self.planner.answered(outcome, terminal=terminal, now=trio.current_time())
        if self.trace.dns and outcome.addr is not None:
            self.tracer._lookup(outcome.addr, self.trace.dns_timeout)
        self._notify()

    def timeout(self, probe: _Probe) -> Answer:
        return TraceProbe(probe.ttl, probe.flow, "timeout"), False

    def refused(self, probe: _Probe, text: str) -> Answer:
        """A probe that cannot be sent ends the trace: the route would have a hole."""
        raise OSError(f"cannot send to {self.dst_str}: {text}")

    def expired(self, lease: Lease, probe: _Probe) -> None:
        self.planner.expired(probe.ttl, probe.flow, now=trio.current_time())
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

    def close(self) -> None:
        """Stop sending; keep the keys registered (and, in datagram mode, the flow sockets
        open) a while so stragglers count as late."""
        if self.closed:
            return
        Session.close(self)  # the sender stops; the keys are not released yet
        linger = max(LINGER, 2 * self.trace.expiry)
        self.tracer._linger(list(self.leases), None if self.keep_flows else self.flows, linger)
        self.leases.clear()
