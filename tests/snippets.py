"""Find the code blocks of the Markdown documentation and decide how each is checked.

Rules (CONTRIBUTING.md, "Snippets are tested"):

* A ```` ```python ```` block is a complete program. It runs in the lab's ``src`` namespace when
  it names a lab address (198.18.0.0/15, 2001:db8::/32), else on the local host.
* In a shell block (```` ```sh ````, ```` ```bash ````, ```` ```console ```` or untyped), the
  commands are its ``$ `` lines when it has any (a transcript: the lines after each are its
  output), else -- in ``sh``/``bash`` blocks only -- every non-comment line. Each command that
  starts netdiag (``python -m netdiag...``, ``netdiag ...``) is run, in ``src`` if it names a
  lab address.
* A block that is not meant to run (an excerpt, a usage synopsis) has the line
  ``<!-- fragment -->`` (or ``<!-- fragment: why -->``) right before its opening fence. An
  unmarked untyped block whose lines start netdiag but that has no ``$`` prompt is an error:
  it would otherwise go unchecked.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The marker line before a block that is not run: ``<!-- fragment -->`` or, saying why,
#: ``<!-- fragment: needs root and a pytest session -->``.
FRAGMENT = re.compile(r"<!--\s*fragment(?::[^>]*)?\s*-->")
SHELL_LANGS = {"sh", "bash", "shell", "console", ""}

#: A command that starts netdiag: ``python -m netdiag...`` (any python path) or ``netdiag ...``.
NETDIAG_CMD = re.compile(r"(?:^|[\s;&|(])(?:\S*python3?(?:\.\d+)?\s+-m\s+netdiag\b|netdiag\s)")
LAB_V4 = re.compile(r"\b198\.1[89]\.\d{1,3}\.\d{1,3}\b")
LAB_V6 = re.compile(r"\b2001:db8:[0-9a-fA-F:]*[0-9a-fA-F]\b")
ANY_V4 = re.compile(r"(?<![\w.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w.])")


def doc_files() -> list[Path]:
    """README.md, CONTRIBUTING.md, CHANGELOG.md and every page in docs/."""
    top = [ROOT / n for n in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")]
    return [p for p in top if p.exists()] + sorted((ROOT / "docs").glob("*.md"))


@dataclass
class Command:
    """One shell command of a block; ``output`` is what a transcript shows after it."""

    text: str
    output: list[str] = field(default_factory=list)

    @property
    def netdiag(self) -> bool:
        return bool(NETDIAG_CMD.search(self.text))

    def expected_status(self) -> int | None:
        """The exit status the transcript states: ``(exit N)``, or ``...; echo $?`` then N."""
        lines = [line for line in self.output if line.strip()]
        if not lines:
            return None
        m = re.fullmatch(r"\(exit (\d+)\)", lines[-1].strip())
        if m:
            return int(m.group(1))
        if self.text.rstrip().endswith("echo $?") and lines[-1].strip().isdigit():
            return int(lines[-1])
        return None


@dataclass
class Block:
    """A fenced code block: where it is, its language, its text, and whether it is a
    fragment."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    fragment: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def lab(self) -> bool:
        return bool(LAB_V4.search(self.text) or LAB_V6.search(self.text))

    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Every IP literal in the block (IPv4 anywhere; IPv6 in 2001:db8:: and ::1)."""
        out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for m in ANY_V4.finditer(self.text):
            out.append(ipaddress.IPv4Address(m.group(0)))
        for m in LAB_V6.finditer(self.text):
            out.append(ipaddress.IPv6Address(m.group(0)))
        return out

    def commands(self) -> list[Command]:
        """The shell commands of the block (see the module docstring)."""
        lines = self.text.splitlines()
        if any(line.startswith("$ ") for line in lines):
            cmds: list[Command] = []
            for line in lines:
                if line.startswith("$ "):
                    cmds.append(Command(line[2:].strip()))
                elif cmds:
                    cmds[-1].output.append(line)
            return cmds
        if self.lang not in ("sh", "bash", "shell"):
            return []
        out = []
        for line in lines:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            out.append(Command(re.sub(r"\s{2,}#.*$", "", stripped)))
        return out

    def unmarked_synopsis(self) -> bool:
        """An untyped, unmarked block whose lines start netdiag but which has no commands."""
        if self.fragment or self.lang not in SHELL_LANGS or self.commands():
            return False
        return any(NETDIAG_CMD.match(line.strip()) for line in self.text.splitlines())


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file (``` fences; nested fences are not used)."""
    out = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```+\s*(\{[^}]*\}|[\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        body = "\n".join(line[len(m.group(1)) :] for line in lines[start + 1 : j])
        fragment = bool(FRAGMENT.fullmatch(prev))
        out.append(Block(path, start + 1, lang, body + "\n", fragment))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for p in doc_files() for b in blocks(p)]


def python_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang in ("python", "py", "python3")]


def netdiag_shell_blocks() -> list[Block]:
    """Shell blocks (not fragments) with at least one command that starts netdiag."""
    return [
        b
        for b in all_blocks()
        if b.lang in SHELL_LANGS and not b.fragment and any(c.netdiag for c in b.commands())
    ]


def normalise(line: str) -> str:
    """A transcript line with what varies between runs blanked: decimals, ms, paths."""
    line = re.sub(r"\d+\.\d+", "N", line)
    line = re.sub(r"time \d+ms", "time Nms", line)
    return re.sub(r"(?<![\w.])/[\w./-]+", "PATH", line).strip()
