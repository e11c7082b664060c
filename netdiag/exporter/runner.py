"""The exporter's engine room: one Pinger, one Tracer and one Knocker shared by every job, one
timer loop driving the pure :class:`~netdiag.exporter.schedule.Scheduler`, and the code that
turns results into metrics (and NDJSON lines).

Why batches: the scheduler spreads targets over the period, but at 10,000 targets per second
several are due at every wake-up. The ping (and knock) rounds of one job due at the same wake-up
become one :meth:`Pinger.sweep` -- one sender task for all of them, no task per target. Traces
run one task per *running* round (at most the targets whose rounds are in progress).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, TextIO

import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..errors import NetdiagError, PrivilegeError
from ..knock import Knock, Knocker, KnockResult
from ..ping import Ping, Pinger
from ..resolve import resolve
from ..sock import IPAddress
from ..trace import Trace, Tracer, TraceResult
from .config import (
    Config,
    Job,
    KnockOptions,
    Module,
    PingOptions,
    TraceOptions,
    target_text,
)
from .metrics import SCHED_BUCKETS, Metrics
from .schedule import Entry, Round, Scheduler

__all__ = ["Runner", "knock_state", "probe"]

log = logging.getLogger("netdiag.exporter")

#: The timer never sleeps less than this: rounds due within it start together (bounds the
#: wake-ups per second whatever the number of targets; lateness stays below it).
RESOLUTION = 0.01
Key = tuple[str, str]


def knock_state(r: KnockResult) -> str:
    """The ``state`` label of a knock outcome: open, closed, filtered, unreachable (an ICMP
    error came back) or error (the SYN could not be sent)."""
    if r.kind != "error":
        return r.kind
    return "error" if r.error is None or r.error.local else "unreachable"


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def trace_of(addr: IPAddress | str, o: TraceOptions) -> Trace:
    return Trace(
        addr,
        proto=o.proto,
        port=o.port,
        max_ttl=o.max_ttl,
        expiry=o.expiry,
        confidence=o.confidence,
        flows=o.flows,
        max_flows=o.max_flows,
        dns=o.dns,
        minimize=o.minimize,
        stop_at_first_arrival=o.stop_at_first_arrival,
    )


class _Holder(Collector):
    """The registry ``/metrics`` serves delegates to the current per-target :class:`Metrics`,
    which a reload may replace (when the user label names change)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        yield from self.metrics.registry.collect()


class Runner:
    """Runs the jobs of a :class:`Config` on shared diagnostics; see the module docstring.

    ``pinger``/``tracer``/``knocker`` may be ``None`` when they could not be opened here (no
    privileges); jobs needing them are reported and not scheduled. ``clock`` is trio's by
    default (tests use a MockClock through it).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        pinger: Pinger | None,
        tracer: Tracer | None,
        knocker: Knocker | None,
        *,
        unavailable: dict[str, str] | None = None,
        ndjson: TextIO | None = None,
        resolution: float = RESOLUTION,
    ) -> None:
        self.pinger, self.tracer, self.knocker = pinger, tracer, knocker
        #: why a diagnostic could not be opened, by kind
        self.unavailable = dict(unavailable or {})
        self.ndjson = ndjson
        self.resolution = resolution
        self.scheduler = Scheduler()
        self.config = Config()
        self.metrics = Metrics()
        self._holder = _Holder(self.metrics)
        registry.register(self._holder)
        self.duration = Histogram(
            "netdiag_round_duration_seconds",
            "Time from a round's start to its last result.",
            ["diagnostic"],
            buckets=SCHED_BUCKETS,
            registry=registry,
        )
        self.lateness = Histogram(
            "netdiag_schedule_lateness_seconds",
            "How much later than its slot a round started (rate bound, busy loop).",
            ["diagnostic"],
            buckets=SCHED_BUCKETS,
            registry=registry,
        )
        registry.register(_Checks(self))
        self._late = {k: self.lateness.labels(k) for k in ("ping", "trace", "knock")}
        self._duration = {k: self.duration.labels(k) for k in ("ping", "trace", "knock")}
        self._jobs: dict[str, Job] = {}
        self._labels: dict[Key, tuple] = {}
        self._targets: dict[Key, tuple[str, int]] = {}
        #: targets that are addresses, parsed once (names are resolved at each round)
        self._addrs: dict[Key, IPAddress] = {}
        #: the histogram labels of targets whose job aggregates RTTs (rtt_histogram = "job")
        self._hist: dict[Key, tuple] = {}
        #: job name -> why it cannot run (shown in logs and as netdiag_check_runnable 0)
        self.not_runnable: dict[str, str] = {}
        self._kick = trio.Event()
        self._wake_at = math.inf

    def diagnostics(self) -> list[tuple[str, Any]]:
        return [("ping", self.pinger), ("trace", self.tracer), ("knock", self.knocker)]

    # -- configuration ---------------------------------------------------------------------

    def why_not(self, kind: str, options: Any) -> str | None:
        """Why a job or module of ``kind`` with ``options`` cannot run here, or ``None``."""
        obj = {"ping": self.pinger, "trace": self.tracer, "knock": self.knocker}[kind]
        if obj is None:
            return self.unavailable.get(kind, f"{kind} is unavailable")
        try:
            if isinstance(options, PingOptions) and options.df is not None:
                assert self.pinger is not None
                self.pinger.prepare(Ping("127.0.0.1", df=options.df))
            elif isinstance(options, TraceOptions):
                assert self.tracer is not None
                self.tracer.prepare(trace_of("127.0.0.1", options))
        except (PrivilegeError, OSError) as e:
            return str(e)
        return None

    def apply(self, config: Config, now: float | None = None) -> None:
        """Make ``config`` the running one (start, or a reload). Unchanged targets keep their
        slots and series; removed targets' series are removed; new ones start in their slot."""
        now = trio.current_time() if now is None else now
        self.not_runnable = {}
        for job in config.jobs:
            why = self.why_not(job.kind, job.options)
            if why is not None:
                self.not_runnable[job.name] = why
                log.error("%s job %r cannot run: %s", job.kind, job.name, why)
        if config.label_names != self.metrics.extra:
            self.metrics = Metrics(config.label_names)
            self._holder.metrics = self.metrics
        jobs = {j.name: j for j in config.jobs if j.name not in self.not_runnable}
        labels: dict[Key, tuple] = {}
        hist: dict[Key, tuple] = {}
        targets: dict[Key, tuple[str, int]] = {}
        addrs: dict[Key, IPAddress] = {}
        entries = []
        for job in jobs.values():
            for host, port in job.targets:
                text = target_text(host, port)
                key = (job.name, text)
                labels[key] = self.metrics.labels(job.name, text, job.labels)
                if getattr(job.options, "rtt_histogram", "target") == "job":
                    hist[key] = self.metrics.job_labels(labels[key])
                targets[key] = (host, port)
                addr = _literal(host)
                if addr is not None:
                    addrs[key] = addr
                entries.append(Entry(key, job.every, job.cost, job.name))
        self.metrics.forget(set(labels.values()) | set(hist.values()))
        self._jobs, self._labels, self._targets = jobs, labels, targets
        self._hist = hist
        self._addrs = addrs
        self.scheduler.max_rate = config.max_rate
        self.scheduler.set_entries(entries, now)
        self.config = config
        self._kick.set()

    # -- the timer loop ------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start due rounds forever, with one timer for every target."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                now = trio.current_time()
                rounds = self.scheduler.due(now)
                if rounds:
                    self._dispatch(nursery, rounds)
                wake = max(self.scheduler.next_wakeup(now), now + self.resolution)
                self._wake_at = wake
                if self._kick.is_set():
                    self._kick = trio.Event()
                with trio.move_on_at(wake):
                    await self._kick.wait()

    def _finished(self, key: Hashable) -> None:
        slot = self.scheduler.finished(key, trio.current_time())
        if slot < self._wake_at:
            self._kick.set()

    def _dispatch(self, nursery: trio.Nursery, rounds: list[Round]) -> None:
        batches: dict[str, list[Round]] = {}
        for r in rounds:
            batches.setdefault(str(r.entry.group), []).append(r)
        for name, batch in batches.items():
            job = self._jobs[name]
            late = self._late[job.kind]
            for r in batch:
                late.observe(r.lateness)
            if job.kind == "ping":
                nursery.start_soon(self._batch, job, batch, self._ping_group)
            elif job.kind == "knock":
                nursery.start_soon(self._batch, job, batch, self._knock_group)
            else:
                for r in batch:
                    nursery.start_soon(self._trace_round, job, r)

    async def _addresses(self, job: Job, batch: list[Round]) -> list[tuple[Key, IPAddress, int]]:
        """Resolve the batch's targets; those that fail are counted and finished here."""
        out = []
        for r in batch:
            key: Key = r.key  # type: ignore[assignment]
            host, port = self._targets.get(key, ("", 0))
            addr = self._addrs.get(key)
            if addr is None:
                try:
                    with trio.fail_after(max(job.every / 2, 0.1)):
                        addr = await resolve(host)
                except (NetdiagError, OSError, trio.TooSlowError) as e:
                    log.warning("%s job %r: cannot resolve %s: %s", job.kind, job.name, host, e)
                    self._round_error(key)
                    continue
            out.append((key, addr, port))
        return out

    def _round_error(self, key: Key) -> None:
        lab = self._labels.get(key)
        if lab is not None:
            self.metrics.round_error(lab)
        self._finished(key)

    @staticmethod
    def _unique(items: list[tuple[Key, IPAddress, int]]) -> list[list[tuple[Key, IPAddress, int]]]:
        """Split into groups whose (address, port) are unique, so results map back to keys."""
        groups: list[list[tuple[Key, IPAddress, int]]] = []
        seen: list[set[tuple[IPAddress, int]]] = []
        for item in items:
            for g, s in zip(groups, seen, strict=True):
                if (item[1], item[2]) not in s:
                    g.append(item)
                    s.add((item[1], item[2]))
                    break
            else:
                groups.append([item])
                seen.append({(item[1], item[2])})
        return groups

    async def _batch(
        self,
        job: Job,
        batch: list[Round],
        run_group: Callable[[Job, Any, list[tuple[Key, IPAddress, int]]], Awaitable[None]],
    ) -> None:
        """One job's due ping or knock rounds: resolve them, run each group of distinct
        targets as one sweep, mark every round finished and time the whole batch."""
        start = trio.current_time()
        items = await self._addresses(job, batch)
        try:
            async with trio.open_nursery() as nursery:
                for group in self._unique(items):
                    nursery.start_soon(run_group, job, job.options, group)
        finally:
            for key, _, _ in items:
                self._finished(key)
            self._duration[job.kind].observe(trio.current_time() - start)

    async def _ping_group(
        self, job: Job, o: PingOptions, group: list[tuple[Key, IPAddress, int]]
    ) -> None:
        assert isinstance(o, PingOptions) and self.pinger is not None
        by_addr = {addr: key for key, addr, _ in group}
        counts = {key: [0, 0] for key, _, _ in group}
        m = self.metrics
        try:
            async for r in self.pinger.sweep(
                list(by_addr),
                count=o.count,
                interval=o.interval,
                expiry=o.expiry,
                size=o.size,
                ttl=o.ttl,
                tos=o.tos,
                df=o.df,
            ):
                key = by_addr.get(r.addr)
                if key is None:
                    continue
                lab = self._labels.get(key)
                if lab is None:  # removed by a reload while running
                    continue
                m.ping_result(lab, r, self._hist.get(key))
                if not (r.duplicate or r.late):
                    c = counts[key]
                    if not (r.kind == "error" and (r.error is None or r.error.local)):
                        c[0] += 1
                    if r.kind == "reply":
                        c[1] += 1
                if self.ndjson is not None:
                    self._emit("ping", key, r.as_dict())
        except (NetdiagError, OSError, ValueError) as e:
            log.warning("ping job %r: %s", job.name, e)
            for key in counts:
                self._round_error(key)
            return
        for key, (sent, received) in counts.items():
            lab = self._labels.get(key)
            if lab is not None:
                m.ping_round(lab, sent, received)

    async def _knock_group(
        self, job: Job, o: KnockOptions, group: list[tuple[Key, IPAddress, int]]
    ) -> None:
        assert isinstance(o, KnockOptions) and self.knocker is not None
        by_pair = {(addr, port): key for key, addr, port in group}
        m = self.metrics
        final: dict[Key, tuple[int, str]] = {}  # the state of each target's latest SYN
        try:
            async for r in self.knocker.sweep(
                list(by_pair), count=o.count, interval=o.interval, expiry=o.expiry
            ):
                key = by_pair.get((r.addr, r.port))
                lab = self._labels.get(key) if key is not None else None
                if key is None or lab is None:
                    continue
                if not (r.duplicate or r.late):
                    if r.kind == "error" and r.error is not None and r.error.local:
                        m.round_error(lab)
                    else:
                        state = knock_state(r)
                        m.knock_result(lab, state, r.rtt, False, self._hist.get(key))
                        if r.seq >= final.get(key, (-1, ""))[0]:
                            final[key] = (r.seq, state)
                if self.ndjson is not None:
                    self._emit("knock", key, r.as_dict())
        except (NetdiagError, OSError, ValueError, RuntimeError) as e:
            log.warning("knock job %r: %s", job.name, e)
            for key in by_pair.values():
                self._round_error(key)
            return
        for key in by_pair.values():
            lab = self._labels.get(key)
            if lab is not None:
                m.rounds.labels(*lab).inc()
                if key in final:
                    m.knock_last(lab, final[key][1])

    async def _trace_round(self, job: Job, rnd: Round) -> None:
        start = trio.current_time()
        o = job.options
        key: Key = rnd.key  # type: ignore[assignment]
        assert isinstance(o, TraceOptions) and self.tracer is not None
        try:
            items = await self._addresses(job, [rnd])
            if not items:
                return
            _, addr, _ = items[0]
            try:
                result = await _collect(self.tracer)(trace_of(addr, o))
            except (NetdiagError, OSError, ValueError) as e:
                log.warning("trace job %r, %s: %s", job.name, key[1], e)
                self._round_error(key)
                return
            lab = self._labels.get(key)
            if lab is None:
                return
            change = self.metrics.trace_round(lab, result)
            if change is not None:
                prev, new = change
                log.warning(
                    "trace job %r, %s: path changed: %s -> %s",
                    job.name,
                    key[1],
                    _hops_text(prev),
                    _hops_text(new),
                )
            if self.ndjson is not None:
                self._emit("trace", key, result.as_dict())
        finally:
            self._finished(key)
            self._duration["trace"].observe(trio.current_time() - start)

    def _emit(self, kind: str, key: Key, doc: dict[str, Any]) -> None:
        assert self.ndjson is not None
        line = {
            "time": round(time.time(), 6),
            "diagnostic": kind,
            "check": key[0],
            "target": key[1],
            "result": doc,
        }
        try:
            self.ndjson.write(json.dumps(line, default=str) + "\n")
            self.ndjson.flush()
        except (BrokenPipeError, ValueError):
            self.ndjson = None  # a closed stdout ends NDJSON, not the exporter


def _collect(tracer: Tracer) -> Callable[[Trace], Any]:
    """``Tracer.collect`` where it exists (the planned name), else ``Tracer.route``."""
    fn = getattr(tracer, "collect", None)
    return fn if fn is not None else tracer.route


def _hops_text(hops: dict[int, frozenset[str]]) -> str:
    return " ".join(f"{ttl}:{{{','.join(sorted(s)) or '*'}}}" for ttl, s in sorted(hops.items()))


class _Checks(Collector):
    """``netdiag_check_runnable{check}``: 0 for configured jobs that cannot run here."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def collect(self) -> Iterator[Any]:
        g = GaugeMetricFamily(
            "netdiag_check_runnable",
            "1 if the configured job runs, 0 if it cannot here (see the log).",
            labels=["check", "diagnostic"],
        )
        for job in self.runner.config.jobs:
            g.add_metric([job.name, job.kind], 0.0 if job.name in self.runner.not_runnable else 1.0)
        yield g


# -- /probe -----------------------------------------------------------------------------------


async def probe(runner: Runner, module: Module, target: str, timeout: float) -> bytes:
    """Run ``module`` once against ``target``; the metrics of that run only, exposition text
    (``probe_success``, ``probe_duration_seconds`` and netdiag's own series)."""
    from prometheus_client import Gauge, generate_latest

    from .config import parse_target

    registry = CollectorRegistry(auto_describe=True)
    success = Gauge(
        "probe_success",
        "1 if the probe succeeded (ping: a reply; trace: reached; knock: open).",
        registry=registry,
    )
    duration = Gauge("probe_duration_seconds", "How long the probe took.", registry=registry)
    metrics = Metrics(registry=registry)
    start = trio.current_time()
    ok = False
    host, port = parse_target(target, with_port=module.kind == "knock")
    lab = metrics.labels(module.name, target_text(host, port))
    o = module.options
    with trio.move_on_after(timeout):
        try:
            addr = await resolve(host)
            if module.kind == "ping":
                assert isinstance(o, PingOptions)
                if runner.pinger is None:
                    raise PrivilegeError(message=runner.unavailable.get("ping", "no pinger"))
                ping = Ping(addr, o.count, o.interval, o.expiry, o.size, o.ttl, o.tos, o.df)
                received = sent = 0
                async for pr in runner.pinger.results(ping):
                    metrics.ping_result(lab, pr)
                    if not (pr.duplicate or pr.late):
                        sent += 1
                        received += pr.kind == "reply"
                metrics.ping_round(lab, sent, received)
                ok = received > 0
            elif module.kind == "knock":
                assert isinstance(o, KnockOptions)
                if runner.knocker is None:
                    raise PrivilegeError(message=runner.unavailable.get("knock", "no knocker"))
                p = port or (o.ports[0] if o.ports else 0)
                if not p:
                    raise ValueError("knock modules need HOST:PORT targets or a port")
                knock = Knock(addr, p, o.count, o.interval, o.expiry)
                latest = (-1, "")
                async for kr in runner.knocker.results(knock):
                    if not (kr.duplicate or kr.late):
                        state = knock_state(kr)
                        metrics.knock_result(lab, state, kr.rtt, False)
                        ok = ok or state == "open"
                        latest = max(latest, (kr.seq, state))
                if latest[1]:
                    metrics.knock_last(lab, latest[1])
            else:
                assert isinstance(o, TraceOptions)
                if runner.tracer is None:
                    raise PrivilegeError(message=runner.unavailable.get("trace", "no tracer"))
                tr: TraceResult = await _collect(runner.tracer)(trace_of(addr, o))
                metrics.trace_round(lab, tr)
                ok = tr.reached
        except (NetdiagError, OSError, ValueError) as e:
            log.info("probe %s %s: %s", module.name, target, e)
    success.set(1.0 if ok else 0.0)
    duration.set(trio.current_time() - start)
    return generate_latest(registry)
