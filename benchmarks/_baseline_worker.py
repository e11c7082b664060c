"""The speed-of-light reference: a bare non-blocking Python loop over one raw ICMP socket.

No event loop, no demux table, no per-probe objects: precomputed echo requests are sent back to
back, and the socket is drained (``recv_into``) whenever a send would block and after the last
one, counting replies by (ident, seq). This is what "Python can do" on this machine; the issue's
~49k/s figure is this loop. IPv4 only. Prints one JSON object like the other workers.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", required=True)
    p.add_argument("--timeout", type=float, default=2.0)
    args = p.parse_args()
    with open(args.targets) as f:
        targets = [line.strip() for line in f if line.strip() and ":" not in line]
    ident = os.getpid() & 0xFFFF
    payload = bytes(range(56))
    packets = []
    for i, t in enumerate(targets):
        seq = i & 0xFFFF
        head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        ck = checksum(head + payload)
        packets.append((struct.pack("!BBHHH", 8, 0, ck, ident, seq) + payload, (t, 0)))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
    s.setblocking(False)
    buf = bytearray(2048)
    seen: set[tuple[bytes, int]] = set()
    unpack = struct.Struct("!HH").unpack_from

    def drain() -> None:
        while True:
            try:
                n = s.recv_into(buf)
            except BlockingIOError:
                return
            ihl = (buf[0] & 0x0F) * 4
            if n >= ihl + 8 and buf[ihl] == 0:
                i, q = unpack(buf, ihl + 4)
                if i == ident:
                    seen.add((bytes(buf[12:16]), q))

    rss_before = _status_kb("VmRSS")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    sendto = s.sendto
    for k, (pkt, addr) in enumerate(packets):
        while True:
            try:
                sendto(pkt, addr)
                break
            except BlockingIOError:
                drain()
                select.select([], [s], [], 0.01)
        if k & 63 == 63:
            drain()
    deadline = time.perf_counter() + args.timeout
    while len(seen) < len(packets) and time.perf_counter() < deadline:
        select.select([s], [], [], 0.05)
        drain()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    json.dump({
        "tool": "python-raw-loop",
        "version": sys.version.split()[0],
        "mode": "sweep",
        "probes": len(packets),
        "sent": len(packets),
        "received": len(seen),
        "work_wall": wall,
        "work_cpu": cpu,
        "rss_before_kb": rss_before,
        "hwm_kb": _status_kb("VmHWM"),
        "rtt_median": None,
        "rtt_p99": None,
    }, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
