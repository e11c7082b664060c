"""netdiag: ping, multipath traceroute and half-open TCP knock for trio.

Each diagnostic is a shared object (``Pinger``, ``Tracer``, ``Knocker``) that owns one raw socket
per family and a demux table, and carries thousands of concurrent probes as async iterators::

    async with Pinger() as pinger:
        async for rtt in pinger.ping(Ping("127.0.0.1", count=4)):
            print(rtt)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._deprecated import deprecated_alias
from .errors import (
    FamilyUnavailableError,
    KeyInUseError,
    NetdiagError,
    PrivilegeError,
    ResolveError,
)

# Not lazy: the function shares its name with its module, and importing the module (as every
# diagnostic does) sets ``netdiag.resolve`` to the module, so __getattr__ would never run and
# ``from netdiag import resolve`` would give the module.
from .resolve import resolve

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from .knock import Knock, Knocker, KnockResult, KnockStats
    from .ping import Ping, Pinger, PingResult, PingStats
    from .results import ErrorReply
    from .sock import Bind
    from .stats import RttStats
    from .trace import Hop, Responder, Trace, TraceProbe, Tracer, TraceResult
    from .trace.monitor import Monitor, Snapshot

#: Public names and the submodule each lives in, imported on first use (PEP 562): ``python -m
#: netdiag.ping`` then loads neither the Tracer nor the Knocker (issue 12: start-up time),
#: while ``from netdiag import Tracer`` works as before.
_LAZY = {
    **dict.fromkeys(("Knock", "Knocker", "KnockResult", "KnockStats"), ".knock"),
    **dict.fromkeys(("Ping", "Pinger", "PingResult", "PingStats"), ".ping"),
    **dict.fromkeys(("Hop", "Responder", "Trace", "TraceProbe", "Tracer", "TraceResult"), ".trace"),
    **dict.fromkeys(("Monitor", "Snapshot"), ".trace.monitor"),
    "ErrorReply": ".results",
    "Bind": ".sock",
    "RttStats": ".stats",
}
_RENAMED = ("PingError", "KnockError")

__version__ = "0.1.0"

__all__ = [
    "Bind",
    "ErrorReply",
    "FamilyUnavailableError",
    "Hop",
    "KeyInUseError",
    "Knock",
    "KnockResult",
    "KnockStats",
    "Knocker",
    "Monitor",
    "NetdiagError",
    "Ping",
    "PingResult",
    "PingStats",
    "Pinger",
    "PrivilegeError",
    "ResolveError",
    "Responder",
    "RttStats",
    "Snapshot",
    "Trace",
    "TraceProbe",
    "TraceResult",
    "Tracer",
    "resolve",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    if name in _RENAMED:
        from .results import ErrorReply

        return deprecated_alias(__name__, dict.fromkeys(_RENAMED, ErrorReply))(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
