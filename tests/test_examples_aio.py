"""The examples and docs of netdiag.sync and netdiag.aio run, against loopback (issue 16).

Scripts run as subprocesses, as a user would run them; the HTTP endpoints are driven in
process: the plain-asyncio one over a real TCP connection on 127.0.0.1, the Starlette one
through the ASGI interface (no server, no HTTP client library needed).
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.privileged


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script(*argv: str) -> str:
    proc = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_sync_script() -> None:
    out = _script("examples/sync_ping.py", "127.0.0.1", "::1")
    assert "127.0.0.1: 4/4 received, loss 0%" in out
    assert "::1: 4/4 received, loss 0%" in out
    assert "reached=True" in out
    assert re.search(r"sweep ::1: 2/2", out)


def test_asyncio_script() -> None:
    out = _script("examples/asyncio_ping.py", "127.0.0.1", "::1")
    for host in ("127.0.0.1", "::1"):
        assert all(f"{host} seq {i} RTT" in out for i in range(1, 5))
        assert f"sweep {host} reply" in out
    assert "127.0.0.1: 3/3 received" in out


def test_docs_sync_script_is_the_example() -> None:
    """docs/sync.md shows examples/sync_ping.py verbatim (so the tested code is the shown one)."""
    doc = (ROOT / "docs" / "sync.md").read_text()
    code = (EXAMPLES / "sync_ping.py").read_text()
    body = code.split('"""', 2)[2].strip()
    assert body in doc


def test_docs_asyncio_starlette_snippet_is_the_example() -> None:
    doc = (ROOT / "docs" / "asyncio.md").read_text()
    code = (EXAMPLES / "asyncio_starlette.py").read_text()
    body = code.split("from netdiag.aio import AsyncioPinger\n", 1)[1].strip()
    assert body in doc


def test_plain_asyncio_http_endpoint() -> None:
    http = _load("asyncio_http")

    allow = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]

    async def main() -> list[tuple[int, dict[str, Any]]]:
        async with http.AsyncioPinger() as pinger:
            server = await asyncio.start_server(
                lambda r, w: http.serve_client(r, w, pinger, allow), "127.0.0.1", 0
            )
            async with server:
                port = server.sockets[0].getsockname()[1]
                paths = [f"/ping?host={h}&count=2" for h in ("127.0.0.1", "::1")] * 10
                paths += ["/ping?host=198.18.6.2", "/ping?host=nosuch", "/nothing"]
                return await asyncio.gather(*(http.get("127.0.0.1", port, p) for p in paths))

    answers = asyncio.run(asyncio.wait_for(main(), 30))
    ok, rest = answers[:20], answers[20:]
    assert all(status == 200 and body["received"] == 2 for status, body in ok)
    assert {body["host"] for _, body in ok} == {"127.0.0.1", "::1"}
    assert [status for status, _ in rest] == [403, 400, 404]  # nothing sent for any of them
    # and the demo mode a user runs first
    assert _script("examples/asyncio_http.py", "--demo").startswith("200 {")


async def _asgi_get(app: Any, paths: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """Run ``app``'s lifespan, GET each path concurrently, shut it down: the ASGI calls an
    ASGI server (uvicorn, hypercorn) would make."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    life = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, to_app.get, from_app.put)
    )
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"

    async def get(path: str) -> tuple[int, dict[str, Any]]:
        p, _, q = path.partition("?")
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": p,
            "raw_path": p.encode(),
            "query_string": q.encode(),
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return sent[0]["status"], json.loads(body)

    try:
        return await asyncio.gather(*(get(p) for p in paths))
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await life


def test_starlette_endpoint() -> None:
    example = _load("asyncio_starlette")
    paths = [f"/ping?host={h}&count=2" for h in ("127.0.0.1", "::1")] * 10
    paths += ["/ping?host=198.18.6.2", "/ping?host=nosuch"]
    answers = asyncio.run(asyncio.wait_for(_asgi_get(example.app, paths), 30))
    assert all(status == 200 and body["received"] == 2 for status, body in answers[:20])
    assert [status for status, _ in answers[20:]] == [403, 400]
