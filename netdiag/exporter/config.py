"""The exporter's configuration: a TOML file (read with :mod:`tomllib`) into frozen dataclasses.

Why this strict: the exporter runs unattended for months, and a typo (``intervall``, a target
``198.18.6.300``, a port 0) must stop it at start, or be refused at reload, with one line that
names the file, the key and the problem -- never be ignored and never show as a traceback.
Every check therefore lives here, before anything is scheduled; :class:`ConfigError` carries
that one line.

Layout (see ``docs/exporter.md`` for the full reference)::

    [exporter]               # optional
    max_rate = 2000.0        # probes per second for every job together

    [[ping]]                 # one table per job; also [[trace]], [[knock]]
    name = "dst"
    targets = ["198.18.6.2", "2001:db8:6::2"]
    every = 5.0              # seconds between the starts of one target's rounds
    count = 4                # probes per round ...
    labels = { site = "lab" }

    [[module]]               # for GET /probe?module=NAME&target=HOST
    name = "icmp"
    kind = "ping"
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_MAX_RATE",
    "Config",
    "ConfigError",
    "Job",
    "KnockOptions",
    "Module",
    "PingOptions",
    "TraceOptions",
    "load",
    "parse",
    "parse_target",
]

Kind = Literal["ping", "trace", "knock"]
KINDS: tuple[Kind, ...] = ("ping", "trace", "knock")

#: Default bound on probes per second for all jobs together (``--max-rate``).
DEFAULT_MAX_RATE = 5000.0

#: Label names the exporter sets itself; user labels may not take them.
RESERVED_LABELS = frozenset(
    {
        "check",
        "target",
        "ttl",
        "addr",
        "name",
        "state",
        "kind",
        "mark",
        "diagnostic",
        "result",
        "job",
        "instance",
        "le",
        "port",
    }
)
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class ConfigError(ValueError):
    """A configuration problem, as one line: ``FILE: KEY: PROBLEM``."""


@dataclass(frozen=True, slots=True)
class PingOptions:
    """What each ping round sends (see :class:`netdiag.Ping`)."""

    count: int = 4
    interval: float = 0.25
    expiry: float = 1.0
    size: int = 56
    ttl: int | None = None
    tos: int | None = None
    df: bool | None = None
    #: "target": an RTT histogram per target; "job": one for the whole job (thousands of
    #: targets: ~21 series per target less), per-target counters and gauges either way
    rtt_histogram: Literal["target", "job"] = "target"


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """What each trace round sends (see :class:`netdiag.Trace`)."""

    proto: Literal["udp", "tcp", "icmp"] = "udp"
    port: int | None = None
    max_ttl: int = 30
    expiry: float = 1.0
    confidence: float = 0.95
    flows: int | None = None
    max_flows: int = 64
    dns: bool = False
    minimize: Literal["probes", "rounds"] = "probes"
    stop_at_first_arrival: bool = False


@dataclass(frozen=True, slots=True)
class KnockOptions:
    """What each knock round sends (see :class:`netdiag.Knock`); ``ports`` applies to every
    target that does not carry its own ``HOST:PORT``."""

    ports: tuple[int, ...] = ()
    count: int = 1
    interval: float = 0.25
    expiry: float = 1.0
    rtt_histogram: Literal["target", "job"] = "target"


Options = PingOptions | TraceOptions | KnockOptions


@dataclass(frozen=True, slots=True)
class Job:
    """One ``[[ping]]``/``[[trace]]``/``[[knock]]`` table: targets probed every ``every``
    seconds, each in its own slot of the period. ``targets`` are ``(host, port)`` with port 0
    except for knocks."""

    kind: Kind
    name: str
    targets: tuple[tuple[str, int], ...]
    every: float
    options: Options
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def cost(self) -> int:
        """Probes one round of one target sends (an estimate for traces), for the rate bound."""
        o = self.options
        if isinstance(o, PingOptions | KnockOptions):
            return o.count
        return o.max_ttl * (o.flows or 6) // 2 or 1

    @property
    def duration(self) -> float | None:
        """The longest a ping/knock round can take; ``None`` for traces (unknown)."""
        o = self.options
        if isinstance(o, PingOptions | KnockOptions):
            return (o.count - 1) * o.interval + o.expiry
        return None


@dataclass(frozen=True, slots=True)
class Module:
    """One ``[[module]]``: a diagnostic ``GET /probe?module=NAME&target=HOST`` runs on demand."""

    kind: Kind
    name: str
    options: Options


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration; ``source`` names where it came from (a file, or the CLI)."""

    jobs: tuple[Job, ...] = ()
    modules: tuple[Module, ...] = ()
    max_rate: float = DEFAULT_MAX_RATE
    source: str = "<command line>"
    label_names: tuple[str, ...] = field(default=())

    def module(self, name: str) -> Module | None:
        return next((m for m in self.modules if m.name == name), None)


# -- parsing -----------------------------------------------------------------------------------


class _Ctx:
    """Where we are in the file, so every error names its key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")


def _type_name(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _take(ctx: _Ctx, table: Mapping[str, Any], where: str, allowed: set[str]) -> dict[str, Any]:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ctx.fail(
            f"{where}.{unknown[0]}" if where else unknown[0],
            f"unknown key (known: {', '.join(sorted(allowed))})",
        )
    return dict(table)


def _int(
    ctx: _Ctx, t: dict[str, Any], key: str, where: str, lo: int, hi: int, default: int | None
) -> int | None:
    v = t.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.fail(f"{where}.{key}", f"must be an integer, not {_type_name(v)} {v!r}")
    if not lo <= v <= hi:
        raise ctx.fail(f"{where}.{key}", f"must be between {lo} and {hi}, got {v}")
    return v


def _float(
    ctx: _Ctx,
    t: dict[str, Any],
    key: str,
    where: str,
    lo: float,
    hi: float,
    default: float,
    open_low: bool = False,
) -> float:
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ctx.fail(f"{where}.{key}", f"must be a number of seconds, not {_type_name(v)} {v!r}")
    v = float(v)
    if math.isnan(v) or v > hi or v < lo or (open_low and v <= lo):
        low = f"> {lo:g}" if open_low else f">= {lo:g}"
        raise ctx.fail(f"{where}.{key}", f"must be {low} and <= {hi:g}, got {v:g}")
    return v


def _bool(ctx: _Ctx, t: dict[str, Any], key: str, where: str) -> bool | None:
    v = t.get(key)
    if v is not None and not isinstance(v, bool):
        raise ctx.fail(f"{where}.{key}", f"must be true or false, not {_type_name(v)} {v!r}")
    return v


def _str(ctx: _Ctx, t: dict[str, Any], key: str, where: str) -> str:
    v = t.get(key)
    if v is None:
        raise ctx.fail(f"{where}.{key}", "is required")
    if not isinstance(v, str):
        raise ctx.fail(f"{where}.{key}", f"must be a string, not {_type_name(v)} {v!r}")
    return v


def _is_hostname(text: str) -> bool:
    """RFC 1123 host name syntax; a last label of digits only is an address typo, not a name."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_HOST_LABEL_RE.match(x) for x in labels) and not labels[-1].isdigit()


def parse_target(text: str, with_port: bool) -> tuple[str, int]:
    """``HOST`` (an address or a host name), or with ``with_port`` also ``HOST:PORT`` /
    ``[V6]:PORT``, into ``(host, port)`` (port 0 when absent). Raises ValueError saying why."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{text!r} is not an address or host name")
    host, port = text, 0
    if with_port:
        m = re.match(r"^\[([^\]]+)\]:(\w+)$", text) or (
            re.match(r"^([^:]+):(\w+)$", text) if text.count(":") == 1 else None
        )
        if m:
            host, p = m.group(1), m.group(2)
            if not p.isdigit() or not 1 <= int(p) <= 65535:
                raise ValueError(f"port in {text!r} must be between 1 and 65535")
            port = int(p)
    if port == 0 and host.startswith("[") and host.endswith("]") and ":" in host:
        host = host[1:-1]  # [V6] without a port, as Prometheus' targets write it
    if host.startswith("[") and ":" not in host:
        raise ValueError(f"{text!r}: only IPv6 addresses go in brackets")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host.startswith("[") or not _is_hostname(host):
            raise ValueError(f"{text!r} is not an IP address or host name") from None
    return host, port


def _labels(ctx: _Ctx, t: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    v = t.get("labels", {})
    if not isinstance(v, dict):
        raise ctx.fail(f"{where}.labels", f"must be a table, not {_type_name(v)}")
    out = []
    for k, val in v.items():
        if not _LABEL_RE.match(k) or k.startswith("__"):
            raise ctx.fail(f"{where}.labels.{k}", "is not a valid Prometheus label name")
        if k in RESERVED_LABELS:
            raise ctx.fail(f"{where}.labels.{k}", "is a label the exporter sets itself")
        if not isinstance(val, str):
            raise ctx.fail(f"{where}.labels.{k}", f"must be a string, not {_type_name(val)}")
        out.append((k, val))
    return tuple(sorted(out))


_PING_KEYS = {"count", "interval", "expiry", "size", "ttl", "tos", "df", "rtt_histogram"}
_TRACE_KEYS = {
    "proto",
    "port",
    "max_ttl",
    "expiry",
    "confidence",
    "flows",
    "max_flows",
    "dns",
    "minimize",
    "stop_at_first_arrival",
}
_KNOCK_KEYS = {"port", "ports", "count", "interval", "expiry", "rtt_histogram"}
_OPTION_KEYS: dict[Kind, set[str]] = {
    "ping": _PING_KEYS,
    "trace": _TRACE_KEYS,
    "knock": _KNOCK_KEYS,
}


def _histogram(ctx: _Ctx, t: dict[str, Any], where: str) -> Literal["target", "job"]:
    v = t.get("rtt_histogram", "target")
    if v not in ("target", "job"):
        raise ctx.fail(f"{where}.rtt_histogram", f'must be "target" or "job", not {v!r}')
    return "job" if v == "job" else "target"


def _options(ctx: _Ctx, kind: Kind, t: dict[str, Any], where: str) -> Options:
    if kind == "ping":
        return PingOptions(
            count=_int(ctx, t, "count", where, 1, 1000, 4) or 4,
            interval=_float(ctx, t, "interval", where, 0.0, 3600.0, 0.25),
            expiry=_float(ctx, t, "expiry", where, 0.0, 3600.0, 1.0, open_low=True),
            size=_int(ctx, t, "size", where, 0, 65507, 56) or 0,
            ttl=_int(ctx, t, "ttl", where, 1, 255, None),
            tos=_int(ctx, t, "tos", where, 0, 255, None),
            df=_bool(ctx, t, "df", where),
            rtt_histogram=_histogram(ctx, t, where),
        )
    if kind == "trace":
        proto = t.get("proto", "udp")
        if proto not in ("udp", "tcp", "icmp"):
            raise ctx.fail(f"{where}.proto", f'must be "udp", "tcp" or "icmp", not {proto!r}')
        port = _int(ctx, t, "port", where, 1, 65535, None)
        if port is not None and proto == "icmp":
            raise ctx.fail(f"{where}.port", "does not apply to ICMP traces")
        confidence = t.get("confidence", 0.95)
        if (
            isinstance(confidence, bool)
            or not isinstance(confidence, int | float)
            or not (0 < confidence < 1)
        ):
            raise ctx.fail(
                f"{where}.confidence", f"must be a fraction in (0, 1), got {confidence!r}"
            )
        max_flows = _int(ctx, t, "max_flows", where, 1, 1024, 64) or 64
        minimize = t.get("minimize", "probes")
        if minimize not in ("probes", "rounds"):
            raise ctx.fail(f"{where}.minimize", f'must be "probes" or "rounds", not {minimize!r}')
        return TraceOptions(
            proto=proto,
            port=port,
            max_ttl=_int(ctx, t, "max_ttl", where, 1, 255, 30) or 30,
            expiry=_float(ctx, t, "expiry", where, 0.0, 3600.0, 1.0, open_low=True),
            confidence=float(confidence),
            flows=_int(ctx, t, "flows", where, 1, max_flows, None),
            max_flows=max_flows,
            dns=bool(_bool(ctx, t, "dns", where)),
            minimize="rounds" if minimize == "rounds" else "probes",
            stop_at_first_arrival=bool(_bool(ctx, t, "stop_at_first_arrival", where)),
        )
    ports: list[int] = []
    if "port" in t and "ports" in t:
        raise ctx.fail(f"{where}.ports", "give port or ports, not both")
    if "port" in t:
        ports = [_int(ctx, t, "port", where, 1, 65535, None) or 0]
    elif "ports" in t:
        raw = t["ports"]
        if not isinstance(raw, list) or not raw:
            raise ctx.fail(f"{where}.ports", "must be a non-empty array of port numbers")
        for i, p in enumerate(raw):
            ports.append(_int(ctx, {"p": p}, "p", f"{where}.ports[{i}]", 1, 65535, None) or 0)
    return KnockOptions(
        ports=tuple(ports),
        count=_int(ctx, t, "count", where, 1, 1000, 1) or 1,
        interval=_float(ctx, t, "interval", where, 0.0, 3600.0, 0.25),
        expiry=_float(ctx, t, "expiry", where, 0.0, 3600.0, 1.0, open_low=True),
        rtt_histogram=_histogram(ctx, t, where),
    )


def _name(ctx: _Ctx, t: dict[str, Any], where: str) -> str:
    name = _str(ctx, t, "name", where)
    if not _NAME_RE.match(name):
        raise ctx.fail(f"{where}.name", f"{name!r} must be 1-64 of A-Z a-z 0-9 _ . : -")
    return name


def _job(ctx: _Ctx, kind: Kind, t: Any, where: str) -> Job:
    if not isinstance(t, dict):
        raise ctx.fail(where, f"must be a table ([[{kind}]]), not {_type_name(t)}")
    _take(ctx, t, where, {"name", "targets", "every", "labels"} | _OPTION_KEYS[kind])
    name = _name(ctx, t, where)
    where = f"{kind}[{name}]"
    options = _options(ctx, kind, t, where)
    raw = t.get("targets")
    if not isinstance(raw, list) or not raw:
        raise ctx.fail(f"{where}.targets", "must be a non-empty array of hosts")
    targets: list[tuple[str, int]] = []
    for i, text in enumerate(raw):
        try:
            host, port = parse_target(text, with_port=kind == "knock")
        except ValueError as e:
            raise ctx.fail(f"{where}.targets[{i}]", str(e)) from None
        if kind == "knock":
            assert isinstance(options, KnockOptions)
            ports = [port] if port else list(options.ports)
            if not ports:
                raise ctx.fail(
                    f"{where}.targets[{i}]",
                    f"{text!r} has no port and the job sets neither port nor ports",
                )
            targets += [(host, p) for p in ports]
        else:
            targets.append((host, 0))
    if len(set(targets)) != len(targets):
        dup = next(x for x in targets if targets.count(x) > 1)
        raise ctx.fail(f"{where}.targets", f"{_target_text(*dup)} is listed twice")
    every = _float(ctx, t, "every", where, 0.0, 86400.0, 10.0, open_low=True)
    job = Job(kind, name, tuple(targets), every, options, _labels(ctx, t, where))
    if job.duration is not None and job.duration > every:
        raise ctx.fail(
            f"{where}.every",
            f"a round takes up to {job.duration:g} s "
            f"((count - 1) * interval + expiry), longer than every = {every:g} s",
        )
    return job


def _module(ctx: _Ctx, t: Any, where: str) -> Module:
    if not isinstance(t, dict):
        raise ctx.fail(where, f"must be a table ([[module]]), not {_type_name(t)}")
    kind = t.get("kind")
    if kind not in KINDS:
        raise ctx.fail(f"{where}.kind", f'must be "ping", "trace" or "knock", not {kind!r}')
    _take(ctx, t, where, {"name", "kind"} | _OPTION_KEYS[kind])
    name = _name(ctx, t, where)
    return Module(kind, name, _options(ctx, kind, t, f"module[{name}]"))


def _target_text(host: str, port: int) -> str:
    if not port:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse(
    doc: Mapping[str, Any], source: str = "<config>", max_rate: float | None = None
) -> Config:
    """Check a parsed TOML document and build the :class:`Config`; ``max_rate`` (the CLI's
    ``--max-rate``) overrides the file's. Raises :class:`ConfigError`."""
    ctx = _Ctx(source)
    _take(ctx, doc, "", {"exporter", "ping", "trace", "knock", "module"})
    glob = doc.get("exporter", {})
    if not isinstance(glob, dict):
        raise ctx.fail("exporter", f"must be a table, not {_type_name(glob)}")
    _take(ctx, glob, "exporter", {"max_rate"})
    rate = _float(ctx, glob, "max_rate", "exporter", 0.0, 1e7, DEFAULT_MAX_RATE, open_low=True)
    if max_rate is not None:
        rate = max_rate
    jobs: list[Job] = []
    for kind in KINDS:
        tables = doc.get(kind, [])
        if not isinstance(tables, list):
            raise ctx.fail(
                kind, f"must be an array of tables ([[{kind}]]), not {_type_name(tables)}"
            )
        jobs += [_job(ctx, kind, t, f"{kind}[{i}]") for i, t in enumerate(tables)]
    seen: dict[str, Kind] = {}
    for job in jobs:
        if job.name in seen:
            raise ctx.fail(
                f"{job.kind}[{job.name}].name", f"duplicate job name (also a {seen[job.name]} job)"
            )
        seen[job.name] = job.kind
    tables = doc.get("module", [])
    if not isinstance(tables, list):
        raise ctx.fail(
            "module", f"must be an array of tables ([[module]]), not {_type_name(tables)}"
        )
    modules = [_module(ctx, t, f"module[{i}]") for i, t in enumerate(tables)]
    names = [m.name for m in modules]
    for m in modules:
        if names.count(m.name) > 1:
            raise ctx.fail(f"module[{m.name}].name", "duplicate module name")
    label_names = tuple(sorted({k for j in jobs for k, _ in j.labels}))
    return Config(tuple(jobs), tuple(modules), rate, source, label_names)


def load(path: str | Path, max_rate: float | None = None) -> Config:
    """Read and check a TOML file. Raises :class:`ConfigError` (one line) for anything wrong,
    including a file that cannot be read or is not TOML."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse(doc, source, max_rate)


def target_text(host: str, port: int) -> str:
    """How a target appears in the ``target`` label: ``HOST``, or ``HOST:PORT`` for knocks."""
    return _target_text(host, port)
