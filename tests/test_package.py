"""The package as a user gets it: sdist and wheel build, pass ``twine check``, and the wheel
installed into a fresh venv runs (issue 17).

The build and the install happen once per session, from a copy of the checkout (tracked and
untracked-but-not-ignored files, as a fresh clone would have them) into a temporary
directory, so nothing in the working tree is read by the installed package and nothing is
written into the working tree. The venv is made without system site packages and the wheel
installed non-editable; its dependencies (trio, dpkt) come from the package index. Commands run
from outside the checkout with PYTHONPATH unset, so a file missing from the wheel shows up as a
failure here. The README's quick start is run verbatim in another copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import netdiag

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 600.0


def checkout_copy(dest: Path) -> Path:
    """Copy the files a fresh clone of this checkout would have into ``dest``."""
    git = shutil.which("git")
    files: list[str] = []
    if git and (ROOT / ".git").exists():
        proc = subprocess.run(
            [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        files = [f for f in proc.stdout.split("\0") if f and (ROOT / f).is_file()]
    assert files, "cannot list the checkout's files (git ls-files)"
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would import the working tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return {**env, **extra}


def run(argv: list[str | Path], cwd: Path, timeout: float = BUILD_TIMEOUT,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env or clean_env())  # fmt: skip
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build`` of a clean copy: the sdist, then the wheel built from the sdist."""
    src = checkout_copy(tmp_path_factory.mktemp("checkout"))
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, src], cwd=src)
    return out


def _one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {dist}: {found}"
    return found[0]


@pytest.fixture(scope="session")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the built wheel installed (not editable); returns its bin/."""
    home = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", home / "v"], cwd=home)
    wheel = _one(dist, "netdiag-*.whl")
    run([home / "v/bin/python", "-m", "pip", "install", "-q", wheel], cwd=home)
    return home / "v/bin"


def test_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    wheel, sdist = _one(dist, "*.whl"), _one(dist, "*.tar.gz")
    v = netdiag.__version__
    assert wheel.name == f"netdiag-{v}-py3-none-any.whl"
    assert sdist.name == f"netdiag-{v}.tar.gz"
    run([sys.executable, "-m", "twine", "check", "--strict", wheel, sdist], cwd=dist)


def test_wheel_holds_the_package_and_its_metadata(dist: Path) -> None:
    wheel = _one(dist, "*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(meta_name).decode()
    tree = {str(p.relative_to(ROOT)) for p in (ROOT / "netdiag").rglob("*.py")}
    assert tree <= names, f"modules missing from the wheel: {sorted(tree - names)}"
    assert "netdiag/py.typed" in names
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)
    licenses = {n.rsplit("/", 1)[-1] for n in names if "/licenses/" in n}
    assert {"LICENSE-MIT", "LICENSE-APACHE"} <= licenses
    assert f"Version: {netdiag.__version__}" in meta
    assert "License-Expression: MIT OR Apache-2.0" in meta
    assert "Requires-Dist: trio" in meta and "Requires-Dist: dpkt" in meta
    assert "Classifier: Framework :: Trio" in meta and "Project-URL:" in meta


def test_sdist_holds_what_a_packager_needs(dist: Path) -> None:
    sdist = _one(dist, "*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for needed in ("pyproject.toml", "README.md", "CHANGELOG.md", "CONTRIBUTING.md",
                   "LICENSE-MIT", "LICENSE-APACHE", "docs/conf.py", "docs/index.md",
                   "examples/ping.py", "tests/conftest.py", "tests/lab.py"):  # fmt: skip
        assert needed in names, needed
    assert not any("__pycache__" in n or n.startswith("docs/_build") for n in names)


def test_installed_wheel_imports_every_module(venv: Path, tmp_path: Path) -> None:
    """Every module of the installed package imports, from the venv, not the checkout."""
    code = (
        "import importlib, importlib.util, pkgutil, re, netdiag, sys\n"
        "assert netdiag.__file__.startswith(sys.prefix), netdiag.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(netdiag.__path__, 'netdiag.')]\n"
        "def script(n):  # a __main__ that runs on import (python -m netdiag)\n"
        "    src = open(importlib.util.find_spec(n).origin).read()\n"
        "    return n.endswith('__main__') and not re.search(r'^if __name__', src, re.M)\n"
        "for n in names:\n"
        "    if script(n): continue\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except ModuleNotFoundError as e:\n"
        "        print('optional', n, e.name)\n"
        "for n in netdiag.__all__: getattr(netdiag, n)\n"
        "print('imported', netdiag.__version__, len(names))\n"
    )
    proc = run([venv / "python", "-c", code], cwd=tmp_path, timeout=120)
    lines = [line.split() for line in proc.stdout.splitlines()]
    _, version, count = lines[-1]
    assert version == netdiag.__version__
    assert int(count) >= 20  # wire's modules, the diagnostics and their CLIs
    # A module may need more than the core dependencies only if what it needs is declared in
    # an extra (the exporter's prometheus-client and hypercorn; pytest for netdiag.testing's
    # pytest plugin, in the test extra): a user who installs that extra has it.
    from importlib.metadata import requires

    extra_only = {
        re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("-", "_")
        for req in requires("netdiag") or []
        if "extra ==" in req
    }
    missing = {(name, needed.split(".")[0]) for _, name, needed in lines[:-1]}
    assert all(needed in extra_only for _, needed in missing), (missing, extra_only)
    core = {"netdiag", "netdiag.ping", "netdiag.trace", "netdiag.knock", "netdiag.cli"}
    assert not any(name in core or name.endswith("__main__") for name, _ in missing), missing


def test_installed_console_script_runs(venv: Path, tmp_path: Path) -> None:
    proc = run([venv / "netdiag", "--help"], cwd=tmp_path, timeout=120)
    assert "ping" in proc.stdout and "trace" in proc.stdout and "knock" in proc.stdout
    proc = run([venv / "netdiag", "--version"], cwd=tmp_path, timeout=120)
    assert proc.stdout.strip() == f"netdiag {netdiag.__version__}"
    proc = run([venv / "python", "-m", "netdiag.trace", "-V"], cwd=tmp_path, timeout=120)
    assert proc.stdout.strip() == f"netdiag.trace (netdiag) {netdiag.__version__}"


@pytest.mark.privileged
def test_installed_wheel_pings_loopback(venv: Path, tmp_path: Path) -> None:
    proc = run([venv / "python", "-m", "netdiag.ping", "-c", "1", "127.0.0.1"], cwd=tmp_path,
               timeout=120)  # fmt: skip
    assert "1 packets transmitted, 1 received" in proc.stdout


@pytest.mark.privileged
def test_readme_quick_start_runs_verbatim(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The README's quick start, as written, in a copy of the checkout: a venv, ``pip install
    .``, the CLI and the example against 127.0.0.1 and ::1."""
    import snippets

    readme = ROOT / "README.md"
    blocks = [b for b in snippets.blocks(readme) if b.lang == "sh" and "venv" in b.text]
    assert blocks, "README has no quick-start block"
    command = blocks[0].commands()[0].text
    assert "netdiag" in command
    src = checkout_copy(tmp_path_factory.mktemp("quickstart"))
    bindir = str(Path(sys.executable).parent)
    env = clean_env(PATH=f"{bindir}:{os.environ.get('PATH', '')}")
    proc = run(["bash", "-c", command], cwd=src, env=env)
    assert "4 packets transmitted, 4 received" in proc.stdout
    assert "RTT" in proc.stdout  # examples/ping.py's lines
