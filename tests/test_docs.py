"""The documentation site builds clean and covers the public surface (issue 17).

The build runs here rather than as a separate CI step so that the README's one test command
stays the whole of CI: ``sphinx-build -W --keep-going -n`` (warnings are errors, nitpicky
references), then the built inventory is checked to hold every public name and every CLI.
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import netdiag

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DIAGNOSTICS = ("netdiag.ping", "netdiag.trace", "netdiag.knock")
#: public modules besides the diagnostics (docs/api.md lists them)
HELPERS = ("netdiag.aio", "netdiag.sync", "netdiag.testing")
sys.path.insert(0, str(DOCS / "_ext"))
from netdiag_sphinx import cli_modules  # noqa: E402  (the docs' own discovery rule)

#: Every tool: each netdiag module with a parser() (or build_parser()), as the CLI page finds them.
CLIS = tuple(module for module, _ in cli_modules())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built once for this module exactly as CONTRIBUTING.md says."""
    out = tmp_path_factory.mktemp("html")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
         "-d", str(out / ".doctrees"), str(DOCS), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def inventory(site: Path) -> dict[str, str]:
    """``{object name: role}`` from the built ``objects.inv`` (format version 2)."""
    raw = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = raw.index(b"\n", header_end) + 1
    body = zlib.decompress(raw[header_end:]).decode()
    out = {}
    for line in body.splitlines():
        m = re.match(r"(\S+)\s+(\S+):(\S+)\s+(-?\d+)\s+(\S+)\s+(.*)", line)
        if m:
            out[m.group(1)] = f"{m.group(2)}:{m.group(3)}"
    return out


def public_names() -> list[str]:
    """Every public name: ``netdiag.__all__``, each diagnostic's ``__all__``, and the public
    helper modules' (``netdiag.testing``)."""
    names = {f"netdiag.{n}" for n in netdiag.__all__}
    for package in HELPERS:
        names.update(f"{package}.{n}" for n in importlib.import_module(package).__all__)
    for package in DIAGNOSTICS:
        mod = importlib.import_module(package)
        for n in mod.__all__:
            names.add(f"netdiag.{n}" if n in netdiag.__all__ else f"{package}.{n}")
    return sorted(names)


def test_every_public_name_has_an_api_entry(site: Path) -> None:
    inv = inventory(site)
    missing = [n for n in public_names() if n not in inv]
    assert not missing, f"not in the API reference: {missing}"
    # and the entries are on the API page, as the kind of object they are
    assert inv["netdiag.Pinger"] == "py:class"
    assert inv["netdiag.PrivilegeError"] == "py:exception"
    assert inv["netdiag.resolve"] == "py:function"


def test_async_iterators_are_marked_for_async_for(site: Path) -> None:
    """sphinxcontrib-trio renders async generators as ``async for ... in``, the way they
    must be used; a plain "await" there would mislead."""
    text = re.sub(r"<[^>]+>", "", (site / "api.html").read_text())
    for method in ("results", "ping", "sweep", "trace", "knock"):
        assert re.search(rf"async for \.\.\. in\s*{method}\(", text), method


def test_cli_page_is_the_parsers_help(site: Path) -> None:
    """The CLI page holds each tool's --help as its parser prints it (so it cannot drift)."""
    html = (site / "cli.html").read_text()
    text = re.sub(r"<[^>]+>", "", html).replace("&lt;", "<").replace("&gt;", ">")
    text = text.replace("&amp;", "&").replace("&#39;", "'").replace("&quot;", '"')
    for module in CLIS:
        mod = importlib.import_module(module)
        p = (getattr(mod, "parser", None) or mod.build_parser)()
        usage = p.format_usage().split()  # wrapping differs by width; the words do not
        assert " ".join(usage[1:4]) in " ".join(text.split()), module
        for action in p._actions:
            for opt in action.option_strings:
                assert opt in text, f"{module}: {opt} missing from the CLI page"


def test_every_tool_is_found() -> None:
    """The discovery the CLI page and the version test rely on finds the known tools."""
    known = {"netdiag.ping.__main__", "netdiag.trace.__main__", "netdiag.knock.__main__",
             "netdiag.doctor"}  # fmt: skip
    assert known <= set(CLIS)


def test_changelog_and_pages_are_in_the_site(site: Path) -> None:
    pages = ["index", "getting-started", "api", "cli", "changelog", "contributing"]
    pages += ["ping", "trace", "knock", "architecture", "performance", "reliability"]
    for page in pages:
        assert (site / f"{page}.html").exists(), page
    assert "0.1.0" in (site / "changelog.html").read_text()


def _public_members(obj: type) -> list[tuple[str, str]]:
    """``(name, docstring)`` of a class's public netdiag methods and properties; a docstring
    is inherited from the method it overrides, as autodoc shows it."""
    out = []
    for name, _member in inspect.getmembers(obj):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(obj, name)
        if isinstance(raw, (classmethod, staticmethod)):
            raw = raw.__func__
        fn = raw.fget if isinstance(raw, property) else raw
        if inspect.isfunction(fn) and getattr(fn, "__module__", "").startswith("netdiag"):
            doc = inspect.getdoc(raw) if isinstance(raw, property) else inspect.getdoc(fn)
            if not doc:  # an override without its own: the overridden method's, as autodoc does
                doc = next((inspect.getdoc(getattr(base, name)) for base in obj.__mro__[1:]
                            if name in vars(base)), None)  # fmt: skip
            out.append((name, doc or ""))
    return out


def test_every_public_name_and_member_has_a_docstring() -> None:
    """The same rule the docs build enforces, without Sphinx: public classes, functions,
    methods and properties say what they are for."""
    missing = []
    for qualname in public_names():
        module, _, name = qualname.rpartition(".")
        obj = getattr(importlib.import_module(module), name)
        documentable = inspect.isclass(obj) or inspect.isfunction(obj)  # data: `#:` comments
        if documentable and not (inspect.getdoc(obj) or "").strip():
            missing.append(qualname)
        if inspect.isclass(obj):
            for member, doc in _public_members(obj):
                if not doc.strip():
                    missing.append(f"{qualname}.{member}")
    assert not missing, f"public names without a docstring: {missing}"


def test_docstring_check_catches_a_missing_docstring() -> None:
    """The walker above is not vacuous: a public method without a docstring is found."""

    class Sample:
        def documented(self) -> None:
            """Has one."""

        def bare(self) -> None:
            pass

    Sample.bare.__module__ = Sample.documented.__module__ = "netdiag.sample"

    class Override(Sample):
        def documented(self) -> None:  # inherits "Has one."
            pass

    Override.documented.__module__ = "netdiag.sample"
    found = [name for name, doc in _public_members(Sample) if not doc.strip()]
    assert found == ["bare"]
    found = [name for name, doc in _public_members(Override) if not doc.strip()]
    assert found == ["bare"]


def test_public_names_are_not_shadowed_by_their_modules() -> None:
    """After every module is imported (as the docs build does), each public name is still the
    object, not a submodule of the same name (``netdiag.resolve`` the function, not the module:
    importing a submodule sets the package attribute, which PEP 562's lazy ``__getattr__``
    never overrides)."""
    code = (
        "import importlib, pkgutil, types, netdiag\n"
        "for m in pkgutil.walk_packages(netdiag.__path__, 'netdiag.'):\n"
        "    if not m.name.endswith('__main__') and 'pytest' not in m.name:\n"
        "        importlib.import_module(m.name)\n"
        "bad = [n for n in netdiag.__all__ if isinstance(getattr(netdiag, n), types.ModuleType)]\n"
        "print(bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


BROKEN_PAGE = """
Broken
======

.. autoclass:: netdiag.Ping

See :class:`netdiag.NoSuchThing` and :meth:`netdiag.Pinger.no_such_method`.

.. autofunction:: undocumented.public_function
"""


def test_build_fails_on_broken_references_and_missing_docstrings(tmp_path: Path) -> None:
    """The checks the site relies on are live: with this repository's extension and settings,
    a reference to a name netdiag does not have and a public function without a docstring
    each fail the build."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "undocumented.py").write_text("def public_function():\n    pass\n")
    (src / "conf.py").write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(src)!r}, {str(DOCS / '_ext')!r}, {str(ROOT)!r}]\n"
        "extensions = ['sphinx.ext.autodoc', 'sphinxcontrib_trio', 'netdiag_sphinx']\n"
        "autodoc_use_legacy_class_based = True\n"
        "nitpicky = True\n"
    )
    (src / "index.rst").write_text(BROKEN_PAGE)
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
         str(src), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "netdiag.NoSuchThing" in proc.stderr
    assert "netdiag.Pinger.no_such_method" in proc.stderr
    assert "undocumented.public_function has no docstring" in proc.stderr


@pytest.mark.parametrize("module", CLIS)
def test_every_cli_prints_the_one_version(module: str) -> None:
    for flag in ("-V", "--version"):
        proc = subprocess.run([sys.executable, "-m", module.removesuffix(".__main__"), flag],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().endswith(f"(netdiag) {netdiag.__version__}"), proc.stdout


def test_console_script_version_and_metadata_agree() -> None:
    from importlib.metadata import version

    from netdiag import cli

    assert version("netdiag") == netdiag.__version__
    assert cli.main(["--version"]) == 0
