"""The exporter's metrics, built with ``prometheus_client`` (no hand-written exposition).

Naming follows Prometheus' conventions: a ``netdiag_`` prefix, base units (``_seconds``),
``_total`` counters, ``_info`` series for facts whose value is their labels.

Cardinality is bounded by the configuration, never by time or traffic:

- every per-target series carries ``check`` (the job's name -- not ``job``, which Prometheus
  sets itself), ``target`` (as configured; ``HOST:PORT`` for knocks) and the user labels of
  the configuration (the union of every job's label names; a job without one of them exports
  it empty, which Prometheus treats as absent);
- small fixed enums add ``state`` (knock outcomes), ``kind`` (ICMP error kinds), ``mark``
  (traceroute's ``!H`` ... marks) and ``diagnostic`` (ping/trace/knock);
- traces add ``ttl`` (at most ``max_ttl`` values) and ``addr`` (interfaces that answered in the
  *latest* round only: series of responders that are gone are removed).

No label is ever per probe, per sequence number, per flow id or per port the probes used.
See ``docs/exporter.md`` for every metric.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..ping import PingResult
from ..trace import TraceResult
from ..wire.icmp import ErrorKind

__all__ = ["RTT_BUCKETS", "Metrics", "ProcessMetrics", "path_count"]

#: 25 us doubling up to ~6.6 s: resolves loopback and LAN round trips (tens of microseconds)
#: and still places a second-long answer (smokeping_prober uses 50 us * 2^k).
RTT_BUCKETS: tuple[float, ...] = tuple(25e-6 * 2**k for k in range(19))
#: For lateness and round duration of the process, not per target.
SCHED_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)

KNOCK_STATES = ("open", "closed", "filtered", "unreachable", "error")
#: values of the ``kind`` label of ``netdiag_ping_icmp_errors_total``
ERROR_KINDS = ("local", *(k.value for k in ErrorKind))


def path_count(result: TraceResult) -> int:
    """Distinct paths (ECMP branches) seen: the number of distinct sequences of responders
    followed by the flows that answered at every hop before the last; falls back to the widest
    hop when no flow did."""
    hops = [h for h in result.hops if not h.last]
    if not hops:
        return 1 if result.hops and result.hops[-1].responders else 0
    per_flow: dict[int, dict[int, Any]] = {}
    for h in hops:
        for p in h.probes:
            if p.addr is not None:
                per_flow.setdefault(p.flow, {})[h.ttl] = p.addr
    ttls = [h.ttl for h in hops]
    paths = {tuple(f[t] for t in ttls) for f in per_flow.values() if all(t in f for t in ttls)}
    if paths:
        return len(paths)
    return max((len(h.responders) for h in hops), default=0)


class Metrics:
    """Per-target metrics in a registry of their own.

    The continuous jobs use one (replaced only when a reload changes the set of user label
    names); every ``/probe`` request uses a fresh one. ``extra`` are the user label names, in
    order, after ``check`` and ``target``.
    """

    def __init__(self, extra: Sequence[str] = (), registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.extra = tuple(extra)
        base = ("check", "target", *self.extra)
        r = self.registry
        # ping
        self.ping_rtt = Histogram(
            "netdiag_ping_rtt_seconds",
            "Round-trip time of echo replies.",
            base,
            buckets=RTT_BUCKETS,
            registry=r,
        )
        self.ping_sent = Counter(
            "netdiag_ping_sent_total",
            "Echo requests sent (counted when resolved).",
            base,
            registry=r,
        )
        self.ping_received = Counter(
            "netdiag_ping_received_total", "Echo requests answered by a reply.", base, registry=r
        )
        self.ping_duplicates = Counter(
            "netdiag_ping_duplicates_total", "Duplicate echo replies.", base, registry=r
        )
        self.ping_late = Counter(
            "netdiag_ping_late_total",
            "Replies that came after their request expired.",
            base,
            registry=r,
        )
        self.ping_errors = Counter(
            "netdiag_ping_icmp_errors_total",
            "ICMP errors received instead of a reply, or requests the "
            'kernel refused (kind="local").',
            (*base, "kind"),
            registry=r,
        )
        self.ping_loss = Gauge(
            "netdiag_ping_loss_ratio",
            "Fraction of the last round's requests not answered.",
            base,
            registry=r,
        )
        self.ping_ttl = Gauge(
            "netdiag_ping_reply_ttl", "TTL / hop limit of the last echo reply.", base, registry=r
        )
        # knock
        self.knock_rtt = Histogram(
            "netdiag_knock_rtt_seconds",
            "Time from SYN to its answer (SYN-ACK, RST or ICMP error).",
            base,
            buckets=RTT_BUCKETS,
            registry=r,
        )
        self.knock_results = Counter(
            "netdiag_knock_results_total", "SYN outcomes by state.", (*base, "state"), registry=r
        )
        self.knock_state = Gauge(
            "netdiag_knock_state",
            "1 for the state the last round's last SYN found, else 0.",
            (*base, "state"),
            registry=r,
        )
        # trace
        self.trace_hop = Gauge(
            "netdiag_trace_hop_info",
            "1 per interface that answered at a TTL in the last round.",
            (*base, "ttl", "addr", "name"),
            registry=r,
        )
        self.trace_hop_rtt = Gauge(
            "netdiag_trace_hop_rtt_seconds",
            "Median RTT of the answers at a TTL in the last round.",
            (*base, "ttl"),
            registry=r,
        )
        self.trace_hops = Gauge(
            "netdiag_trace_hops",
            "TTL at which the last round reached the target (0: not reached).",
            base,
            registry=r,
        )
        self.trace_paths = Gauge(
            "netdiag_trace_paths",
            "Distinct paths (ECMP branches) the last round found.",
            base,
            registry=r,
        )
        self.trace_reached = Gauge(
            "netdiag_trace_reached",
            "1 if the last round reached the target, else 0.",
            base,
            registry=r,
        )
        self.trace_unreachable = Gauge(
            "netdiag_trace_unreachable",
            "1 if the last round ended with this unreachable mark.",
            (*base, "mark"),
            registry=r,
        )
        self.trace_changes = Counter(
            "netdiag_trace_path_changes_total",
            "Rounds whose responder set at some TTL differed from the previous round's.",
            base,
            registry=r,
        )
        self.trace_sent = Counter(
            "netdiag_trace_probes_sent_total", "Trace probes sent.", base, registry=r
        )
        # rounds
        self.rounds = Counter("netdiag_rounds_total", "Rounds run, per target.", base, registry=r)
        self.round_errors = Counter(
            "netdiag_round_errors_total",
            "Rounds that could not run (name not resolved, family unavailable, privileges).",
            base,
            registry=r,
        )
        self._trace_prev: dict[tuple[str, ...], dict[int, frozenset[str]]] = {}
        self._trace_series: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        self._label_sets: dict[tuple[str, ...], None] = {}
        self._hists: dict[tuple[int, tuple], Any] = {}
        self._ping_children: dict[tuple, tuple[Any, Any, Any, Any, Any]] = {}
        self._knock_last: dict[tuple, str] = {}

    def labels(self, check: str, target: str, user: Iterable[tuple[str, str]] = ()) -> tuple:
        d = dict(user)
        key = (check, target, *(d.get(k, "") for k in self.extra))
        self._label_sets[key] = None
        return key

    # -- recording --------------------------------------------------------------------------

    def _hist(self, metric: Any, lab: tuple) -> Any:
        """The child of ``metric`` for ``lab`` (cached: ``labels()`` takes a lock, checks and
        hashes every label value, per call)."""
        key = (id(metric), lab)
        child = self._hists.get(key)
        if child is None:
            child = self._hists[key] = metric.labels(*lab)
        return child

    def _ping(self, lab: tuple) -> tuple[Any, Any, Any, Any, Any]:
        c = self._ping_children.get(lab)
        if c is None:
            c = self._ping_children[lab] = (
                self.ping_sent.labels(*lab),
                self.ping_received.labels(*lab),
                self.ping_ttl.labels(*lab),
                self.ping_loss.labels(*lab),
                self.rounds.labels(*lab),
            )
        return c

    def job_labels(self, lab: tuple) -> tuple:
        """``lab`` with an empty target: the series of a whole job (``rtt_histogram = "job"``);
        Prometheus treats the empty label as absent."""
        key = (lab[0], "", *lab[2:])
        self._label_sets[key] = None
        return key

    def ping_result(self, lab: tuple, r: PingResult, hist: tuple | None = None) -> None:
        """Count one ping result; its RTT goes to the histogram of ``hist`` (default ``lab``)."""
        if r.duplicate:
            self.ping_duplicates.labels(*lab).inc()
            return
        if r.late:
            self.ping_late.labels(*lab).inc()
            return
        sent, received, ttl, _, _ = self._ping(lab)
        local = r.kind == "error" and (r.error is None or r.error.local)
        if not local:
            sent.inc()
        if r.kind == "reply":
            received.inc()
            if r.rtt is not None:
                self._hist(self.ping_rtt, hist or lab).observe(r.rtt)
            if r.ttl is not None:
                ttl.set(r.ttl)
        elif r.kind == "error":
            err = r.error
            kind = "local" if local or err is None or err.kind is None else err.kind.value
            self.ping_errors.labels(*lab, kind).inc()

    def ping_round(self, lab: tuple, sent: int, received: int) -> None:
        _, _, _, loss, rounds = self._ping(lab)
        rounds.inc()
        loss.set(1.0 - received / sent if sent else 1.0)

    def knock_result(self, lab: tuple, state: str, rtt: float | None, last: bool,
                     hist: tuple | None = None) -> None:  # fmt: skip
        self._hist(self.knock_results, (*lab, state)).inc()
        if rtt is not None:
            self._hist(self.knock_rtt, hist or lab).observe(rtt)
        if last:
            self.knock_last(lab, state)

    def knock_last(self, lab: tuple, state: str) -> None:
        """``netdiag_knock_state``: 1 for ``state`` (the round's latest SYN), 0 for the rest."""
        if self._knock_last.get(lab) != state:
            self._knock_last[lab] = state
            for s in KNOCK_STATES:
                self.knock_state.labels(*lab, s).set(1.0 if s == state else 0.0)

    def trace_round(self, lab: tuple, result: TraceResult) -> tuple[dict, dict] | None:
        """Record one trace round; returns ``(previous, new)`` hop sets when the path changed
        (for the log), else ``None``."""
        self.rounds.labels(*lab).inc()
        self.trace_sent.labels(*lab).inc(result.sent)
        reached = result.reached
        self.trace_reached.labels(*lab).set(1.0 if reached else 0.0)
        self.trace_hops.labels(*lab).set(result.hops[-1].ttl if reached and result.hops else 0)
        self.trace_paths.labels(*lab).set(path_count(result))
        mark = result.hops[-1].mark if result.hops and not reached else ""
        # series of this round: hop info, hop RTT, unreachable mark
        series: list[tuple[str, ...]] = []
        key: tuple[str, ...]
        hops: dict[int, frozenset[str]] = {}
        for h in result.hops:
            ttl = str(h.ttl)
            hops[h.ttl] = frozenset(str(r.addr) for r in h.responders)
            for resp in h.responders:
                key = ("hop", ttl, str(resp.addr), resp.name or "")
                self.trace_hop.labels(*lab, *key[1:]).set(1.0)
                series.append(key)
            rtts = [x for resp in h.responders for x in resp.rtts]
            if rtts:
                self.trace_hop_rtt.labels(*lab, ttl).set(statistics.median(rtts))
                series.append(("rtt", ttl))
        if mark:
            self.trace_unreachable.labels(*lab, mark).set(1.0)
            series.append(("mark", mark))
        old = self._trace_series.get(lab, [])
        keep = set(series)
        for key in old:
            if key not in keep:
                self._remove_trace_series(lab, key)
        self._trace_series[lab] = series
        prev = self._trace_prev.get(lab)
        self._trace_prev[lab] = hops
        self.trace_changes.labels(*lab).inc(0)  # the series exists from the first round on
        if prev is not None and _answered(prev) != _answered(hops):
            self.trace_changes.labels(*lab).inc()
            return prev, hops
        return None

    def _remove_trace_series(self, lab: tuple, key: tuple[str, ...]) -> None:
        try:
            if key[0] == "hop":
                self.trace_hop.remove(*lab, *key[1:])
            elif key[0] == "rtt":
                self.trace_hop_rtt.remove(*lab, *key[1:])
            else:
                self.trace_unreachable.remove(*lab, *key[1:])
        except KeyError:
            pass

    def round_error(self, lab: tuple) -> None:
        self.round_errors.labels(*lab).inc()

    # -- reload ---------------------------------------------------------------------------

    def forget(self, keep: set[tuple]) -> None:
        """Remove every series of label sets not in ``keep`` (targets a reload removed), so
        they do not linger at their last value."""
        gone = [k for k in self._label_sets if k not in keep]
        if not gone:
            return
        gone_set = set(gone)
        plain = (
            self.ping_rtt,
            self.ping_sent,
            self.ping_received,
            self.ping_duplicates,
            self.ping_late,
            self.ping_loss,
            self.ping_ttl,
            self.knock_rtt,
            self.trace_hops,
            self.trace_paths,
            self.trace_reached,
            self.trace_changes,
            self.trace_sent,
            self.rounds,
            self.round_errors,
        )
        for lab in gone:
            for m in plain:
                _remove(m, lab)
            for kind in ERROR_KINDS:
                _remove(self.ping_errors, (*lab, kind))
            for state in KNOCK_STATES:
                _remove(self.knock_results, (*lab, state))
                _remove(self.knock_state, (*lab, state))
            for key in self._trace_series.get(lab, []):
                self._remove_trace_series(lab, key)
        n = 2 + len(self.extra)
        for hkey in [k for k in self._hists if k[1][:n] in gone_set]:
            del self._hists[hkey]
        for k in gone:
            self._ping_children.pop(k, None)
            self._knock_last.pop(k, None)
            del self._label_sets[k]
            self._trace_prev.pop(k, None)
            self._trace_series.pop(k, None)


def _remove(metric: Any, labels: tuple) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def _answered(hops: dict[int, frozenset[str]]) -> dict[int, frozenset[str]]:
    """Hops where something answered: a silent hop (all probes lost) is not a path change."""
    return {ttl: s for ttl, s in hops.items() if s}


class ProcessMetrics(Collector):
    """Process-wide series read at scrape time from the shared diagnostics and the runner:
    probes in flight, engine drops and foreign packets per diagnostic, scheduler state."""

    def __init__(self, source: Any) -> None:
        self.source = source  # the Runner: .diagnostics(), .scheduler

    def collect(self) -> Iterator[Any]:
        inflight = GaugeMetricFamily(
            "netdiag_probes_in_flight",
            "Probes sent and waiting for an answer or their expiry.",
            labels=["diagnostic"],
        )
        drops = CounterMetricFamily(
            "netdiag_engine_kernel_drops",
            "Datagrams the kernel dropped because a receive buffer was "
            "full (SO_RXQ_OVFL); they show as lost probes.",
            labels=["diagnostic"],
        )
        foreign = CounterMetricFamily(
            "netdiag_foreign_packets",
            "Answers that matched a probe's key but not its token "
            "(another process's probes, or forgeries).",
            labels=["diagnostic"],
        )
        unmatched = CounterMetricFamily(
            "netdiag_engine_unmatched_packets",
            "Packets the engine received that matched no probe.",
            labels=["diagnostic"],
        )
        for name, obj in self.source.diagnostics():
            if obj is None:
                continue
            stats = obj.engine.stats
            inflight.add_metric([name], len(obj.engine.table))
            drops.add_metric([name], stats.kernel_drops)
            foreign.add_metric([name], getattr(obj, "foreign", 0))
            unmatched.add_metric([name], stats.unmatched)
        yield inflight
        yield drops
        yield foreign
        yield unmatched
        sched = self.source.scheduler
        entries = GaugeMetricFamily(
            "netdiag_schedule_entries", "Targets scheduled (one per job and target)."
        )
        entries.add_metric([], len(sched))
        yield entries
        skipped = CounterMetricFamily(
            "netdiag_rounds_skipped",
            "Slots skipped because the target's previous round was still running.",
            labels=["check"],
        )
        per_check: dict[str, int] = {}
        for key, n in sched.skipped.items():
            per_check[key[0]] = per_check.get(key[0], 0) + n
        for check, n in sorted(per_check.items()):
            skipped.add_metric([check], n)
        yield skipped
