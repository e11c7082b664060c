"""RTT statistics shared by ping and knock: what iputils prints, plus percentiles and jitter."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self

__all__ = ["ProbeStats", "RttStats"]


@dataclass(slots=True)
class RttStats:
    """Accumulates round-trip times (seconds) in probe order.

    ``mdev`` is iputils' definition, the population standard deviation
    ``sqrt(mean(rtt²) - mean(rtt)²)``. ``jitter`` is the mean absolute difference between
    consecutive RTTs (the RFC 3550 idea without its smoothing), which is what people compare
    between runs. Percentiles use the nearest-rank method, so p99 of 4 samples is the maximum.
    """

    rtts: list[float] = field(default_factory=list)

    def add(self, rtt: float) -> None:
        """Record one RTT (seconds)."""
        self.rtts.append(rtt)

    @property
    def count(self) -> int:
        """How many RTTs were recorded."""
        return len(self.rtts)

    @property
    def min(self) -> float | None:
        """Smallest RTT, or None before the first."""
        return min(self.rtts) if self.rtts else None

    @property
    def max(self) -> float | None:
        """Largest RTT, or None before the first."""
        return max(self.rtts) if self.rtts else None

    @property
    def avg(self) -> float | None:
        """Mean RTT, or None before the first."""
        return sum(self.rtts) / len(self.rtts) if self.rtts else None

    @property
    def mdev(self) -> float | None:
        """iputils' mdev (population standard deviation), or None before the first."""
        if not self.rtts:
            return None
        n = len(self.rtts)
        mean = sum(self.rtts) / n
        var = sum(r * r for r in self.rtts) / n - mean * mean
        return math.sqrt(max(var, 0.0))

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile, ``p`` in (0, 100]."""
        if not self.rtts:
            return None
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p}")
        ordered = sorted(self.rtts)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]

    @property
    def p50(self) -> float | None:
        """Median (nearest rank), or None before the first RTT."""
        return self.percentile(50)

    @property
    def p90(self) -> float | None:
        """90th percentile (nearest rank), or None before the first RTT."""
        return self.percentile(90)

    @property
    def p99(self) -> float | None:
        """99th percentile (nearest rank), or None before the first RTT."""
        return self.percentile(99)

    @property
    def jitter(self) -> float | None:
        """Mean absolute difference of consecutive RTTs, or None before the second."""
        if len(self.rtts) < 2:
            return None
        r = self.rtts
        return sum(abs(r[i] - r[i - 1]) for i in range(1, len(r))) / (len(r) - 1)

    def __repr__(self) -> str:
        # A summary, not every sample: a day of pings would print 86,400 floats (issue 15).
        # Seconds, as everywhere in the API; ``rtts`` still holds every sample.
        if not self.rtts:
            return "RttStats(count=0)"
        vals = ", ".join(
            f"{k}={v:.6g}" for k, v in (("min", self.min), ("avg", self.avg), ("max", self.max),
                                        ("mdev", self.mdev)) if v is not None
        )  # fmt: skip
        return f"RttStats(count={self.count}, {vals})"

    def as_dict(self) -> dict[str, float | None]:
        """The statistics as a JSON-ready dict (seconds, None where undefined)."""
        return {
            "min": self.min,
            "avg": self.avg,
            "max": self.max,
            "mdev": self.mdev,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "jitter": self.jitter,
        }


@dataclass(slots=True)
class ProbeStats:
    """Counters every diagnostic's summary shares, and the rules for them: a duplicate or a
    late answer is counted as such and nothing else; a probe the kernel refused to send
    (``error.local``) is not counted as sent. Subclasses count outcomes in ``_count``."""

    sent: int = 0
    duplicates: int = 0
    late: int = 0
    #: probes that left but whose fate is unknown because the run was interrupted (Ctrl-C):
    #: counted as sent and as lost, as iputils counts them
    pending: int = 0
    rtt: RttStats = field(default_factory=RttStats)

    def add(self, r: Any) -> None:
        """Account for one result, as a diagnostic's ``results()`` yields it."""
        if r.duplicate:
            self.duplicates += 1
            return
        if r.late:
            self.late += 1
            return
        local = r.error is not None and r.error.local
        if not local:
            self.sent += 1
        self._count(r, local)

    def _count(self, r: Any, local: bool) -> None:
        raise NotImplementedError

    def add_pending(self, r: Any) -> None:
        """Account for a probe still waiting for its answer when the run stopped (what a
        result stream's ``unresolved()`` gives): sent, and lost."""
        self.sent += 1
        self.pending += 1

    @classmethod
    def of(cls, results: Iterable[Any]) -> Self:
        """The statistics of a whole run, e.g. ``PingStats.of(await pinger.collect(p))``."""
        s = cls()
        for r in results:
            s.add(r)
        return s
