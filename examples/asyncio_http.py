"""A JSON HTTP endpoint that pings on request, in plain asyncio: no framework needed.

One AsyncioPinger is opened when the server starts and shared by every request (each request is
an asyncio task; the Pinger's sockets and demux table serve them all). A client that hangs up
cancels its request's task, and with it the ping. Run as root (or with CAP_NET_RAW):

    python examples/asyncio_http.py --port 8080 &
    curl 'http://127.0.0.1:8080/ping?host=127.0.0.1&count=3'
    python examples/asyncio_http.py --demo      # serve on a free port, ask itself once, exit

Only literal addresses in ``--allow`` (default: loopback) are pinged: a service that pings
whatever a request names is a traffic reflector. See examples/asyncio_starlette.py for the
same endpoint in Starlette, and docs/asyncio.md for FastAPI.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from netdiag import Ping, PingStats
from netdiag.aio import AsyncioPinger

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}


async def ping_endpoint(
    pinger: AsyncioPinger, query: dict[str, str], allow: list[Network]
) -> tuple[int, dict[str, Any]]:
    """``GET /ping?host=ADDR&count=N``: the ping's statistics and every result, as JSON."""
    try:
        addr = ipaddress.ip_address(query.get("host", ""))
        spec = Ping(addr, count=int(query.get("count", "4")), interval=0.2, expiry=1.0)
    except ValueError as e:  # not an address, or a count out of range
        return 400, {"error": str(e)}
    if not any(addr in net for net in allow):
        return 403, {"error": f"{addr} is not in the allowed networks"}
    results = await pinger.collect(spec)
    return 200, {
        "host": str(addr),
        **PingStats.of(results).as_dict(),
        "results": [r.as_dict() for r in results],
    }


async def serve_client(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    pinger: AsyncioPinger,
    allow: list[Network],
) -> None:
    try:
        method, target, _ = (await reader.readline()).decode("latin-1").split(" ", 2)
        while (await reader.readline()).strip():  # headers: not needed here
            pass
        url = urlsplit(target)
        if method == "GET" and url.path == "/ping":
            status, body = await ping_endpoint(pinger, dict(parse_qsl(url.query)), allow)
        else:
            status, body = 404, {"error": "try GET /ping?host=127.0.0.1&count=3"}
        data = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + data)
        await writer.drain()
    except (ValueError, ConnectionError):
        pass  # a malformed request or a client that left: nothing to answer
    finally:
        writer.close()


async def get(host: str, port: int, path: str) -> tuple[int, dict[str, Any]]:
    """A tiny HTTP client, for --demo and the tests."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def main(args: argparse.Namespace) -> None:
    allow = [ipaddress.ip_network(n) for n in args.allow.split(",")]
    async with AsyncioPinger() as pinger:
        server = await asyncio.start_server(
            lambda r, w: serve_client(r, w, pinger, allow), args.bind, args.port
        )
        async with server:
            if args.demo:
                port = server.sockets[0].getsockname()[1]
                status, body = await get(args.bind, port, "/ping?host=127.0.0.1&count=3")
                print(status, json.dumps(body, indent=1))
                return
            print(f"serving on http://{args.bind}:{args.port}/ping?host=127.0.0.1")
            await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="ping over HTTP, plain asyncio")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--allow", default="127.0.0.0/8,::1/128", help="networks that may be pinged")
    p.add_argument("--demo", action="store_true", help="serve on a free port, query once, exit")
    args = p.parse_args()
    if args.demo:
        args.port = 0
    asyncio.run(main(args))
