"""netdiag: ping, multipath traceroute and half-open TCP knock for trio.

Each diagnostic is a shared object (``Pinger``, ``Tracer``, ``Knocker``) that owns one raw socket
per family and a demux table, and carries thousands of concurrent probes as async iterators::

    async with Pinger() as pinger:
        async for rtt in pinger.ping(Ping("127.0.0.1", count=4)):
            print(rtt)
"""

from ._deprecated import deprecated_alias
from .errors import (
    FamilyUnavailableError,
    KeyInUseError,
    NetdiagError,
    PrivilegeError,
    ResolveError,
)
from .knock import Knock, Knocker, KnockResult, KnockStats
from .ping import Ping, Pinger, PingResult, PingStats
from .resolve import resolve
from .results import ErrorReply
from .sock import Bind
from .stats import RttStats
from .trace import Hop, Responder, Trace, TraceProbe, Tracer, TraceResult

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
    "NetdiagError",
    "Ping",
    "PingResult",
    "PingStats",
    "Pinger",
    "PrivilegeError",
    "ResolveError",
    "Responder",
    "RttStats",
    "Trace",
    "TraceProbe",
    "TraceResult",
    "Tracer",
    "resolve",
]

__getattr__ = deprecated_alias(__name__, {"PingError": ErrorReply, "KnockError": ErrorReply})
