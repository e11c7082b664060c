"""Make docs/img/trace-live.png from the real ``--live`` view (run as root, from the repo root).

The view runs in the namespace lab inside a tmux terminal of 130x16 with every second UDP
probe forwarded by r2a dropped (as tests/test_trace_monitor_lab.py does); after 12 rounds the
pane is captured *with its escape codes* (``tmux capture-pane -e``), parsed by rich
(``Text.from_ansi``), saved as SVG by ``Console(record=True).save_svg`` and converted to PNG by
``rsvg-convert`` (Debian librsvg2-bin; the SVG gets ``xml:space="preserve"`` first, or
rsvg-convert drops each line's leading spaces). Nothing
is drawn by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

from netdiag.testing.lab import PROJECT_ROOT, Lab

OUT = Path(__file__).with_name("trace-live.png")
DROP_HALF = """
table inet t {
    chain fw {
        type filter hook forward priority 0;
        meta l4proto udp numgen inc mod 2 == 0 drop
    }
}"""

with Lab() as lab:
    lab.nft("r2a", DROP_HALF)
    sock = f"ndshot{os.getpid()}"
    cmd = (
        f"unset COLUMNS LINES; PYTHONPATH={PROJECT_ROOT} {sys.executable} -m netdiag.trace "
        f"--live -n -w 0.3 -i 0.5 {lab.dst.v4}; sleep 30"
    )
    lab.exec(
        "src",
        "tmux",
        "-L",
        sock,
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-x",
        "130",
        "-y",
        "16",
        cmd,
    )
    try:
        deadline = time.monotonic() + 30
        while "round 12," not in lab.exec("src", "tmux", "-L", sock, "capture-pane", "-p").stdout:
            if time.monotonic() > deadline:
                raise SystemExit("the live view never reached round 12")
            time.sleep(0.1)
        ansi = lab.exec("src", "tmux", "-L", sock, "capture-pane", "-p", "-e").stdout
    finally:
        lab.exec("src", "tmux", "-L", sock, "kill-server", check=False)

console = Console(
    record=True,
    width=130,
    force_terminal=True,
    color_system="truecolor",
    file=open(os.devnull, "w"),
)
for line in ansi.rstrip("\n").split("\n"):  # line by line, never re-wrapped
    console.print(Text.from_ansi(line), no_wrap=True, overflow="ignore", crop=False)
svg = OUT.with_suffix(".svg")
console.save_svg(str(svg), title="python -m netdiag.trace --live -n 198.18.6.2")
# rsvg-convert drops leading (no-break) spaces of a text element unless told to keep them
svg.write_text(svg.read_text().replace("<svg ", '<svg xml:space="preserve" ', 1))
subprocess.run(["rsvg-convert", "-o", str(OUT), str(svg)], check=True)
svg.unlink()
print(OUT)
