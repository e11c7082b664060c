"""A bounded flood of foreign and malformed ICMP at one host, for benchmarks/run.py ``--flood``
(issue 12): what a raw ICMP socket on a busy monitoring host receives from other tools.

Run inside a lab namespace (``ip netns exec <dst> python benchmarks/_flood_worker.py --to ADDR``),
never elsewhere: every packet goes to ``--to``, a lab address. Stops after ``--count`` packets or
``--seconds``, whichever comes first, paced at ``--rate`` packets per second in 10 ms bursts.

The mix, in rotation (each a type a ping socket's ICMP type filter lets through, so only a
socket filter or Python can drop it):

* echo replies with random identifiers and sequences (another tool's mass ping);
* time-exceeded errors quoting other processes' echo requests;
* port-unreachable errors quoting UDP (a traceroute's);
* malformed: truncated echo replies, errors with a quote cut to 3 bytes, bad checksums.

Prints one JSON object: packets sent, seconds, achieved rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import time


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _icmp(typ: int, code: int, rest: bytes, good: bool = True) -> bytes:
    msg = bytes([typ, code, 0, 0]) + rest
    ck = _csum(msg) if good else 0xBAD0
    return msg[:2] + struct.pack("!H", ck) + msg[4:]


def _ip(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + payload


def packets(me: bytes, to: bytes, n: int, rng: random.Random) -> list[bytes]:
    out = []
    for i in range(n):
        ident, seq = rng.randrange(0x10000), rng.randrange(0x10000)
        kind = i % 6
        if kind in (0, 1):
            out.append(_icmp(0, 0, struct.pack("!HH", ident, seq) + rng.randbytes(56)))
        elif kind == 2:
            req = _icmp(8, 0, struct.pack("!HH", ident, seq) + rng.randbytes(8))
            out.append(_icmp(11, 0, b"\0" * 4 + _ip(to, me, 1, req)[:28]))
        elif kind == 3:
            udp = struct.pack("!HHHH", rng.randrange(1024, 65536), 33434 + i % 30, 8, 0)
            out.append(_icmp(3, 3, b"\0" * 4 + _ip(to, me, 17, udp)))
        elif kind == 4:
            out.append(_icmp(0, 0, b"\x12")[:5])  # truncated echo reply
        else:
            out.append(_icmp(rng.choice((0, 3, 11)), 0, rng.randbytes(rng.randrange(0, 12)), False))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--to", required=True, help="IPv4 address of the flooded host (a lab node)")
    p.add_argument("--count", type=int, default=300_000)
    p.add_argument("--rate", type=float, default=80_000.0)
    p.add_argument("--seconds", type=float, default=10.0, help="hard cap")
    args = p.parse_args()
    to = socket.inet_aton(args.to)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.connect((args.to, 0))
    me = socket.inet_aton(s.getsockname()[0])
    pkts = packets(me, to, 4096, random.Random(12))
    burst = max(1, int(args.rate / 100))
    send = s.send
    sent = tried = 0
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    nxt = t0
    while tried < args.count and time.monotonic() < deadline:
        for _ in range(min(burst, args.count - tried)):
            tried += 1
            try:
                send(pkts[tried & 4095])
                sent += 1
            except OSError:  # ENOBUFS under pressure: count only what left
                pass
        nxt += 0.01
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    took = time.monotonic() - t0
    print(json.dumps({"sent": sent, "seconds": took, "rate": sent / took if took else 0}))
    os._exit(0)


if __name__ == "__main__":
    main()
