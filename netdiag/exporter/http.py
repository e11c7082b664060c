"""The exporter's HTTP side: an ASGI app served by Hypercorn's trio worker, in the same trio
loop as the probes (so ``/probe`` uses the shared Pinger/Tracer/Knocker directly).

No hand-written HTTP or exposition: Hypercorn parses requests and prometheus_client's
``generate_latest`` renders ``/metrics``. Not its ready-made ASGI app, which renders the whole
registry in one go: with thousands of targets that takes long enough (docs/performance.md) to
hold every probe round back. Nor its WSGI app in a worker thread: the GIL then turns every
socket call of the probe loop into a wait for the rendering thread (a "convoy"; measured: half
the pings of 10,000 targets reported lost). So :func:`render` renders family by family in the
trio thread, letting the probes run between families. Routes:

- ``/metrics``: the continuous jobs and the process;
- ``/probe?module=NAME&target=HOST``: one diagnostic now, only its metrics (blackbox_exporter's
  multi-target pattern; the scrape timeout header bounds it);
- ``/-/healthy`` (200 while the process serves) and ``/-/ready`` (200 once the jobs run).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hyper_serve
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .runner import Runner, probe

__all__ = ["make_app", "serve"]

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

#: seconds of rendering between checkpoints of /metrics (see render)
RENDER_SLICE = 0.02
#: used when Prometheus sends no X-Prometheus-Scrape-Timeout-Seconds header
DEFAULT_PROBE_TIMEOUT = 10.0

_INDEX = b"""<html><head><title>netdiag exporter</title></head><body>
<h1>netdiag exporter</h1>
<p><a href="/metrics">/metrics</a> &middot; /probe?module=NAME&amp;target=HOST &middot;
<a href="/-/healthy">/-/healthy</a> &middot; <a href="/-/ready">/-/ready</a></p>
</body></html>
"""


async def _reply(send: Send, status: int, body: bytes, ctype: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def make_app(registry: CollectorRegistry, runner: Runner, ready: Callable[[], bool]) -> Any:
    """The ASGI application for ``registry`` (``/metrics``) and ``runner`` (``/probe``)."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        if path == "/metrics":
            await _metrics(scope, send, registry)
        elif path == "/probe":
            await _probe(scope, send, runner)
        elif path == "/-/healthy":
            await _reply(send, 200, b"Healthy.\n")
        elif path == "/-/ready":
            if ready():
                await _reply(send, 200, b"Ready.\n")
            else:
                await _reply(send, 503, b"Not ready.\n")
        elif path == "/":
            await _reply(send, 200, _INDEX, b"text/html")
        else:
            await _reply(send, 404, b"Not found.\n")

    return app


class _One:
    """A collector of one already-collected metric family, for ``generate_latest``."""

    __slots__ = ("family",)

    def __init__(self, family: Any) -> None:
        self.family = family

    def collect(self) -> list[Any]:
        return [self.family]


async def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry`` by prometheus_client's ``generate_latest``, one
    metric family at a time, with a trio checkpoint once ``RENDER_SLICE`` seconds of rendering
    have passed: a big exposition holds the probes back for a slice (plus one family) at a
    time, and the render is not interleaved with the probe loop more often than needed."""
    parts = []
    since = time.perf_counter()
    for family in registry.collect():
        parts.append(generate_latest(_One(family)))  # type: ignore[arg-type]
        if time.perf_counter() - since > RENDER_SLICE:
            await trio.sleep(0)
            since = time.perf_counter()
    return b"".join(parts)


async def _metrics(scope: dict[str, Any], send: Send, registry: CollectorRegistry) -> None:
    body = await render(registry)
    headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
    accept = b",".join(v for k, v in scope.get("headers", []) if k.lower() == b"accept-encoding")
    if b"gzip" in accept and len(body) > 1024:
        # zlib releases the GIL, so the thread costs the probes nothing
        body = await trio.to_thread.run_sync(gzip.compress, body, 1)
        headers.append((b"content-encoding", b"gzip"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _probe(scope: dict[str, Any], send: Send, runner: Runner) -> None:
    params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    name = params.get("module", [""])[0]
    target = params.get("target", [""])[0]
    if not target:
        await _reply(send, 400, b"target parameter is missing\n")
        return
    module = runner.config.module(name) if name else None
    if module is None:
        known = ", ".join(m.name for m in runner.config.modules) or "none"
        await _reply(send, 400, f"unknown module {name!r} (known: {known})\n".encode())
        return
    timeout = DEFAULT_PROBE_TIMEOUT
    for k, v in scope.get("headers", []):
        if k.lower() == b"x-prometheus-scrape-timeout-seconds":
            with contextlib.suppress(ValueError):  # leave time to answer, as blackbox does
                timeout = max(0.1, float(v) - 0.5)
    try:
        body = await probe(runner, module, target, timeout)
    except ValueError as e:
        await _reply(send, 400, f"{e}\n".encode())
        return
    await _reply(send, 200, body, b"text/plain; version=0.0.4; charset=utf-8")


async def serve(
    app: Any, sock: socket.socket, shutdown: trio.Event, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on the already-bound listening ``sock`` (opened before privileges were
    dropped) until ``shutdown`` is set. Hypercorn takes the descriptor over (and closes it)."""
    config = HyperConfig()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("netdiag.exporter.http")
    config.graceful_timeout = 1.0
    await hyper_serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
