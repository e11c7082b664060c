"""Multipath traceroute: :class:`Tracer` runs many concurrent Paris/MDA traces over shared sockets.

The package, one concept per file:

* ``options.py`` -- :class:`Trace`, what to trace and how (validated);
* ``results.py`` -- :class:`TraceProbe`, :class:`Responder`, :class:`Hop`, :class:`TraceResult`
  (and the route as a graph: per-flow paths, :class:`~netdiag.trace.results.Link`, arrivals);
* ``planner.py`` -- how MDA decides: which probes to send, when a hop is settled (pure, no IO);
* ``session.py`` -- one running trace: feeds the planner, registers and sends its probes, sorts
  out late and duplicate answers;
* ``sockets.py`` -- how a probe is sent: raw and datagram socket sets, the reply classifiers;
* ``tracer.py`` -- :class:`Tracer`: what traces share (sockets, flow id blocks, the linger of
  finished traces' keys, reverse DNS);
* ``dot.py`` -- the route as a Graphviz DOT graph (``--dot``);
* ``__main__.py`` -- the ``python -m netdiag.trace`` CLI.

Probe encoding and reply classification are in :mod:`netdiag.wire.trace`.
"""

from .options import DEFAULT_PORTS, Minimize, Proto, Trace
from .results import Hop, Responder, TraceProbe, TraceResult
from .tracer import Tracer

__all__ = [
    "DEFAULT_PORTS",
    "Hop",
    "Minimize",
    "Proto",
    "Responder",
    "Trace",
    "TraceProbe",
    "TraceResult",
    "Tracer",
]
