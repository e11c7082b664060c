"""What a trace is asked to do: the :class:`Trace` request, validated before anything is sent."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from ..validate import check_float, check_int, expiry_not_timeout

__all__ = ["DEFAULT_PORTS", "DEFAULT_REACH", "Minimize", "Proto", "Trace"]

Proto = Literal["udp", "tcp", "icmp"]
Minimize = Literal["probes", "rounds"]
DEFAULT_PORTS = {"udp": 33434, "tcp": 80}

#: Default ``Trace.reach``: the scout probes this many TTLs ahead (traceroute's 16 probes in
#: flight at 3 per hop look ~5 hops ahead). Probes beyond the destination are wasted -- and
#: spend the target's ICMP rate limit -- so not the whole ``max_ttl`` range at once.
DEFAULT_REACH = 8


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

    ``minimize`` is the trade-off between probes and round trips. ``"probes"`` (the default)
    first sends one probe with TTL ``max_ttl``: the destination's answer says how far it is
    (an ICMP error quotes the TTL the probe arrived with; other answers hint it by their own
    TTL), so the scout probes exactly up to it -- no probe past the destination -- for one
    round trip more. ``"rounds"`` sends the scout's ``reach`` TTLs at once, without waiting:
    fewer round trips, and probes past the destination when it is nearer than ``reach``.

    ``stop_at_first_arrival``: by default the destination's hop is probed through every
    interface of the hop before it, so a longer branch beside the destination is found (a
    flow there meets a router instead). ``True`` settles that hop on the first arrival, as
    scamper's ``tracelb`` does: ``k - 1`` probes fewer for ``k`` interfaces before the
    destination, and routes with branches of unequal length may be reported cut short.
    """

    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | str
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
    reach: int = DEFAULT_REACH
    minimize: Minimize = "probes"
    stop_at_first_arrival: bool = False

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
        if self.minimize not in ("probes", "rounds"):
            raise ValueError(f"Trace.minimize must be 'probes' or 'rounds', not {self.minimize!r}")
        if not isinstance(self.stop_at_first_arrival, bool):
            raise TypeError(
                f"stop_at_first_arrival must be True or False, not {self.stop_at_first_arrival!r}"
            )
        if not isinstance(self.dns, bool):
            raise TypeError(f"dns must be True or False, not {self.dns!r}")
        check_float("dns_timeout", self.dns_timeout, 0.0, 60.0, open_low=True)

    @property
    def dport(self) -> int:
        """The destination port (0 for ICMP)."""
        if self.proto == "icmp":
            return 0
        return self.port if self.port is not None else DEFAULT_PORTS[self.proto]
