"""The engine every diagnostic shares, one concept per module:

============== ===========================================================================
``table``      the demux table, leases and the expiry heap (pure: no trio, no clock reads)
``verdict``    first / duplicate / late: what an answer is to its probe (pure)
``receive``    the receive loop: classify each datagram, hand it to its probe's sink
``core``       :class:`Engine`: the table's expiry task and the receive loops in a nursery
``session``    one call's sender task and result queue
``probe``      the template every probe goes through: register, send, answer, expire, release
``stream``     what the caller iterates (:class:`ResultStream`), and the simple RTT stream
``pacing``     when the next probe may leave
``diagnostic`` what Pinger, Tracer and Knocker share: the ``async with`` lifecycle
============== ===========================================================================
"""

from .core import Engine
from .diagnostic import Diagnostic
from .pacing import Pacer
from .probe import Probe, ProbeSession
from .receive import Classifier, EngineStats
from .session import Session
from .stream import ResultStream, in_order, stream
from .table import DemuxTable, Lease, Sink
from .verdict import Verdict, verdict

__all__ = [
    "Classifier",
    "DemuxTable",
    "Diagnostic",
    "Engine",
    "EngineStats",
    "Lease",
    "Pacer",
    "Probe",
    "ProbeSession",
    "ResultStream",
    "Session",
    "Sink",
    "Verdict",
    "in_order",
    "stream",
    "verdict",
]
