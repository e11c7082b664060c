"""Every snippet in README.md, CONTRIBUTING.md and docs/ runs (issue 15 item 6, issue 17).

Python blocks run as programs; shell commands that start netdiag run as written (transcripts:
with the exit status and first output line they show). Blocks naming lab addresses run in the
lab's ``src`` namespace, with dst set up as the docs describe it: a TCP listener on port 443,
port 8082 dropped, port 8083 rejected with admin-prohibited. Everything else runs on the local
host against loopback. The rules and the ``<!-- fragment -->`` marker are in tests/snippets.py
and CONTRIBUTING.md; the README's quick start is run by tests/test_package.py.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import snippets
from lab import DIAMOND, Lab
from snippets import Block, Command

ROOT = snippets.ROOT
TIMEOUT = 60.0
#: The README's quick start builds a venv and installs from PyPI; tests/test_package.py runs it.
QUICK_START = "python3 -m venv .venv"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
LAB_ADDRESSES = set(DIAMOND.all_addresses())

DOCS_DST_RULES = """
table inet docs {
    chain in {
        type filter hook input priority 0;
        tcp dport 8082 drop
        tcp dport 8083 reject with icmpx type admin-prohibited
    }
}
"""


def _env() -> dict[str, str]:
    """This interpreter's venv first on PATH (``python``, ``netdiag``), the tree importable."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where shell commands run: ``targets.txt`` for the mass-ping example (loopback only) and
    ``examples/`` as in a checkout."""
    (tmp_path / "targets.txt").write_text("127.0.0.1\n127.0.0.2\n::1\n")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


@pytest.fixture
def docs_lab(clean_lab: Lab) -> Iterator[Lab]:
    """The lab as the docs' lab examples expect it (see the module docstring)."""
    with clean_lab.enter("dst"):
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("::", 443))
        listener.listen(128)
        clean_lab.nft("dst", DOCS_DST_RULES)
        yield clean_lab
    finally:
        listener.close()


def check_addresses(block: Block) -> None:
    """A snippet that runs may only name loopback or addresses that exist in the lab."""
    for addr in block.addresses():
        if any(addr in net for net in LOOPBACK):
            continue
        assert addr in LAB_ADDRESSES, f"{block.id}: {addr} is neither loopback nor a lab address"


def check_safe(block: Block, text: str) -> None:
    """No DNS from a snippet: traces print numerically, the library's dns stays off."""
    assert "dns=True" not in text.replace(" ", "").split("#")[0], f"{block.id}: dns=True"
    for line in text.splitlines() if block.lang not in ("python", "py", "python3") else ():
        if "netdiag.trace" in line or "netdiag trace" in line:
            assert " -n" in line or "--help" in line or "-V" in line, (
                f"{block.id}: trace without -n"
            )


# -- Python blocks ---------------------------------------------------------------------------


PYTHON = [b for b in snippets.python_blocks() if not b.fragment]


@pytest.mark.privileged
@pytest.mark.parametrize("block", [b for b in PYTHON if not b.lab], ids=lambda b: b.id)
def test_python_snippet_runs_on_loopback(block: Block) -> None:
    check_addresses(block)
    check_safe(block, block.text)
    proc = subprocess.run([sys.executable, "-c", block.text], capture_output=True, text=True,
                          timeout=TIMEOUT, env=_env(), cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, f"{block.id} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{block.id} printed nothing"


@pytest.mark.privileged
@pytest.mark.parametrize("block", [b for b in PYTHON if b.lab], ids=lambda b: b.id)
def test_python_snippet_runs_in_the_lab(block: Block, docs_lab: Lab) -> None:
    check_addresses(block)
    check_safe(block, block.text)
    proc = docs_lab.python("src", "-c", block.text, check=False, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, f"{block.id} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{block.id} printed nothing"


# -- shell blocks ----------------------------------------------------------------------------


def _commands(block: Block) -> list[Command]:
    return [c for c in block.commands() if c.netdiag and not c.text.startswith(QUICK_START)]


SHELL = [b for b in snippets.netdiag_shell_blocks() if _commands(b)]


def _run(block: Block, cmd: Command, lab: Lab | None, cwd: Path) -> subprocess.CompletedProcess:
    argv = ["bash", "-c", cmd.text]
    if lab is not None:
        return lab.exec("src", *argv, check=False, timeout=TIMEOUT, env=_env(), cwd=cwd)
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=_env(),
                          cwd=cwd)  # fmt: skip


def _check(block: Block, cmd: Command, proc: subprocess.CompletedProcess) -> None:
    said = f"{block.id}: `{cmd.text}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    expected = cmd.expected_status()
    if cmd.text.rstrip().endswith("echo $?"):
        got = proc.stdout.strip().splitlines()[-1]
        assert expected is None or got == str(expected), said
    elif expected is not None:
        assert proc.returncode == expected, said
    else:  # 0: every target answered, 1: one did not; 2 is a usage error, anything else a crash
        assert proc.returncode in (0, 1), said
    shown = [line for line in cmd.output if line.strip()]
    if shown and shown[0].strip() not in ("...", ""):
        # a transcript interleaves stdout and stderr: its first line is the first of either
        firsts = [s.strip().splitlines()[0] for s in (proc.stdout, proc.stderr) if s.strip()]
        assert firsts, said
        want = snippets.normalise(shown[0])
        assert want in [snippets.normalise(f) for f in firsts], (
            f"{block.id}: `{cmd.text}` printed first\n  {firsts}\nbut the doc shows\n  {shown[0]}"
        )


@pytest.mark.privileged
@pytest.mark.parametrize("block", [b for b in SHELL if not b.lab], ids=lambda b: b.id)
def test_shell_snippet_runs_on_loopback(block: Block, workdir: Path) -> None:
    check_addresses(block)
    for cmd in _commands(block):
        check_safe(block, cmd.text)
    # Independent example lines: run them at once (each is bounded by its own -c/-W).
    cmds = _commands(block)
    procs = [
        subprocess.Popen(
            ["bash", "-c", c.text],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=workdir,
        )
        for c in cmds
    ]
    for cmd, p in zip(cmds, procs, strict=True):
        try:
            out, err = p.communicate(timeout=TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
        _check(block, cmd, subprocess.CompletedProcess(p.args, p.returncode, out, err))


@pytest.mark.privileged
@pytest.mark.parametrize("block", [b for b in SHELL if b.lab], ids=lambda b: b.id)
def test_shell_snippet_runs_in_the_lab(block: Block, docs_lab: Lab, workdir: Path) -> None:
    check_addresses(block)
    for cmd in _commands(block):
        check_safe(block, cmd.text)
        if cmd.text.startswith("setpriv") and shutil.which("setpriv") is None:
            pytest.fail("setpriv (util-linux) is needed for the docs' unprivileged examples")
        _check(block, cmd, _run(block, cmd, docs_lab, workdir))


# -- coverage of the rules themselves --------------------------------------------------------


def test_every_block_is_checked_or_marked() -> None:
    """No block that starts netdiag escapes: an unmarked synopsis is an error, and every
    Python block is either run above or marked as a fragment."""
    bad = [b.id for b in snippets.all_blocks() if b.unmarked_synopsis()]
    assert not bad, f"mark these usage blocks <!-- fragment --> or give them $ prompts: {bad}"
    assert PYTHON, "no Python snippets found: the extraction is broken"
    assert SHELL, "no shell snippets found: the extraction is broken"


def test_fragment_markers_stand_before_a_block() -> None:
    """A ``<!-- fragment -->`` line that marks nothing is a mistake (a moved block)."""
    for path in snippets.doc_files():
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if snippets.FRAGMENT.fullmatch(line.strip()):
                following = next((x for x in lines[i + 1 :] if x.strip()), "")
                assert following.lstrip().startswith("```"), f"{path.name}:{i + 1}"


def test_extraction_rules(tmp_path: Path) -> None:
    """The parser finds what the rules say (so the tests above cannot pass by finding
    nothing)."""
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nprint(1)\n```\n\n<!-- fragment: why -->\n```python\nasync with x:\n```\n\n"
        "```sh\npython -m netdiag.ping -c 1 127.0.0.1   # comment\nsudo true\n```\n\n"
        "```\n$ netdiag knock -c 1 198.18.6.2:443\nKNOCK ...\n(exit 1)\n```\n\n"
        "```\npython -m netdiag.trace [-n] host\n```\n"
    )
    found = snippets.blocks(page)
    assert [(b.lang, b.fragment) for b in found] == [
        ("python", False), ("python", True), ("sh", False), ("", False), ("", False)
    ]  # fmt: skip
    sh = found[2].commands()
    assert [c.text for c in sh] == ["python -m netdiag.ping -c 1 127.0.0.1", "sudo true"]
    assert [c.netdiag for c in sh] == [True, False]
    transcript = found[3].commands()
    assert transcript[0].expected_status() == 1 and found[3].lab
    assert found[4].unmarked_synopsis()
