"""The ping endpoint of examples/asyncio_http.py in Starlette (FastAPI's foundation).

The AsyncioPinger is opened in the app's lifespan and shared by every request. Serve it with
any ASGI server on asyncio, e.g. ``uvicorn examples.asyncio_starlette:app`` (as root, or with
CAP_NET_RAW), then ``curl 'http://127.0.0.1:8000/ping?host=127.0.0.1&count=3'``. Only
loopback addresses are pinged here: a service that pings whatever a request names is a traffic
reflector. Needs ``pip install starlette``; tests/test_examples.py drives it without a server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from netdiag import Ping, PingStats
from netdiag.aio import AsyncioPinger

ALLOW = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with AsyncioPinger() as pinger:
        app.state.pinger = pinger
        yield


async def ping(request: Request) -> JSONResponse:
    try:
        addr = ipaddress.ip_address(request.query_params.get("host", ""))
        count = int(request.query_params.get("count", "4"))
        spec = Ping(addr, count=count, interval=0.2, expiry=1.0)
    except ValueError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    if not any(addr in net for net in ALLOW):
        return JSONResponse({"error": f"{addr} is not allowed"}, status_code=403)
    results = await request.app.state.pinger.collect(spec)
    return JSONResponse(
        {
            "host": str(addr),
            **PingStats.of(results).as_dict(),
            "results": [r.as_dict() for r in results],
        }
    )


app = Starlette(routes=[Route("/ping", ping)], lifespan=lifespan)
