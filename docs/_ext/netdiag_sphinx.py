"""Sphinx glue for netdiag's docs: the API and CLI references are generated from the code.

Why our own directives rather than hand-written ``autoclass`` lists: the package's internals move
(modules split, classes renamed with deprecated aliases), so the pages must follow the *public*
surface -- ``netdiag.__all__`` and each diagnostic's ``__all__`` -- and the CLI page must follow
the tools' argparse parsers, so neither can drift from the code.

* ``netdiag-api`` (no argument; it emits reStructuredText, so in MyST put it inside
  ``{eval-rst}``): one section per diagnostic subpackage (``netdiag.ping``, ``netdiag.trace``,
  ``netdiag.knock``: each subpackage whose ``__all__`` classes ``netdiag`` all re-exports),
  then the rest of ``netdiag.__all__``; each name documented as ``netdiag.X`` with autodoc, and the
  internal types that public fields and docstrings name (``ErrorKind`` ...) after them.
* ``netdiag-cli`` (no argument): every module of netdiag with a ``parser()`` (or
  ``build_parser()``) function (the tools' command lines), rendered as its
  ``format_help()`` at a fixed width.
* A public class, function, method or property without a docstring is a warning, so the
  ``-W`` build fails on it.
"""

from __future__ import annotations

import argparse
import builtins
import enum
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

#: Width of the rendered ``--help`` text (argparse reads $COLUMNS).
HELP_COLUMNS = 100


def _modules(package: str = "netdiag") -> list[ModuleType]:
    """Every module of the package, imported (sorted by name, so pages are stable)."""
    root = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, prefix=f"{package}.")]
    out = []
    for name in sorted(names):
        if name.endswith(".__main__") and not _guarded(name):
            continue  # a script that runs when imported (``python -m netdiag``)
        try:
            out.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            # a module for an optional tool (netdiag.testing's pytest plugin needs pytest);
            # netdiag's own modules must import
            if (e.name or "").split(".")[0] == package:
                raise
            logger.info("netdiag docs: skipping %s (needs %s)", name, e.name)
    return out


def _guarded(name: str) -> bool:
    """True if module ``name`` runs nothing on import (``if __name__ == "__main__":``)."""
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec else None
    if not origin or not origin.endswith(".py"):
        return False
    with open(origin) as f:
        return re.search(r"^if __name__ == .__main__.:", f.read(), re.M) is not None


def diagnostic_sections() -> list[tuple[str, list[str]]]:
    """``[(subpackage, names), ...]`` then ``("netdiag", rest)``: how the API page is grouped.

    A diagnostic is a direct subpackage of ``netdiag`` whose ``__all__`` classes ``netdiag``
    all re-exports (an internal package such as the engine or the socket layer has others); its
    names are documented as ``netdiag.X`` when re-exported, else under the subpackage.
    """
    top = importlib.import_module("netdiag")
    public = list(top.__all__)
    sections: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for mod in _modules():
        if mod.__name__.count(".") != 1 or not hasattr(mod, "__path__"):
            continue
        names = list(getattr(mod, "__all__", ()))
        classes = [n for n in names if inspect.isclass(getattr(mod, n, None))]
        # a diagnostic's classes are all exported by netdiag; an internal package's (the
        # engine's, the socket layer's, which may re-export one public class) are not
        if classes and all(n in public for n in classes):
            sections.append((mod.__name__, names))
            seen.update(names)
    sections.append(("netdiag", [n for n in public if n not in seen]))
    return sections


def attribute_doc(package: str, name: str) -> list[str]:
    """The ``#:`` comment (or following string) that documents module attribute ``name`` in
    ``package`` or any of its modules -- where a re-exported constant is actually defined."""
    from sphinx.pycode import ModuleAnalyzer

    mod = importlib.import_module(package)
    names = [package]
    if hasattr(mod, "__path__"):
        names += [m.name for m in pkgutil.walk_packages(mod.__path__, prefix=f"{package}.")]
    for modname in names:
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except Exception:
            continue
        if ("", name) in docs:
            return [line for line in docs[("", name)] if line.strip()]
    return []


class ApiDirective(SphinxDirective):
    """Expand to autodoc directives for every public name (see the module docstring)."""

    has_content = False
    option_spec: ClassVar[dict[str, Any]] = {"modules": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        top = importlib.import_module("netdiag")
        lines = [".. automodule:: netdiag", "", ".. currentmodule:: netdiag", ""]
        for package, names in diagnostic_sections():
            mod = importlib.import_module(package)
            if package == "netdiag":
                title = "Shared"
                intro = "Names every diagnostic uses: binding, statistics, resolution, errors."
            else:
                title = package.split(".")[-1].capitalize()
                doc = inspect.getdoc(mod) or ""
                intro = doc.split("\n\n")[0].replace("\n", " ")
                intro = f"From ``{package}`` (re-exported by ``netdiag``). " + intro
            lines += [title, "-" * len(title), "", intro, ""]
            for name in names:
                obj = getattr(mod, name)
                if name not in top.__all__:
                    # public in the subpackage only: document it under its own module
                    lines += [f".. currentmodule:: {package}", ""]
                lines += self._entry(obj, name, package)
                if name not in top.__all__:
                    lines += [".. currentmodule:: netdiag", ""]
        for package in self.options.get("modules", "").split():
            # another public module (``netdiag.testing``): its docstring and its __all__
            mod = importlib.import_module(package)
            title = f"``{package}``"
            lines += [title, "-" * len(title), "", f".. automodule:: {package}", ""]
            lines += [f".. currentmodule:: {package}", ""]
            for name in getattr(mod, "__all__", ()):
                lines += self._entry(getattr(mod, name), name, package)
            lines += [".. currentmodule:: netdiag", ""]
        extra = referenced_types()
        if extra:
            title = "Types that appear in results"
            lines += [title, "-" * len(title), "",
                      "Not exported by ``netdiag``, but the values of some result fields and "
                      "the bases of some classes above are of these types.", ""]  # fmt: skip
            for cls in extra:
                kind = "autoexception" if issubclass(cls, BaseException) else "autoclass"
                lines += [f".. {kind}:: {cls.__module__}.{cls.__qualname__}"]
                if issubclass(cls, enum.Enum):  # the values are the point
                    lines += ["   :members:", "   :undoc-members:"]
                lines += [""]
        return self._parse(lines)

    @staticmethod
    def _entry(obj: Any, name: str, package: str) -> list[str]:
        """The autodoc directive for one public object of the current module."""
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or typing.get_origin(obj):
            # a constant or a type alias: its value, and the ``#:`` comment where it is defined
            value = repr(obj).replace("typing.", "")
            lines = [f".. py:data:: {name}", f"   :value: {value}", ""]
            return lines + [f"   {line}" for line in attribute_doc(package, name)] + [""]
        if inspect.isclass(obj):
            kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
        else:
            kind = "autofunction" if callable(obj) else "autodata"
        lines = [f".. {kind}:: {name}"]
        if kind == "autoexception":  # which built-in errors catch it matters
            lines += ["   :members:", "   :undoc-members:", "   :show-inheritance:",
                      "   :inherited-members: BaseException"]  # fmt: skip
        elif kind == "autoclass":
            lines += ["   :members:", "   :undoc-members:", "   :inherited-members: object"]
        return [*lines, ""]

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="<netdiag-api>"), node)
        return node.children


def public_objects() -> set[int]:
    """ids of the objects the API page documents under a public name."""
    found = set()
    for package, names in diagnostic_sections():
        mod = importlib.import_module(package)
        found.update(id(getattr(mod, n)) for n in names)
    return found


def _classes_in(hint: Any) -> Iterator[type]:
    """The classes a type hint names, ``list[X] | None`` included."""
    if isinstance(hint, type):
        yield hint
    origin = typing.get_origin(hint)
    if isinstance(origin, type):
        yield origin
    for arg in typing.get_args(hint):
        yield from _classes_in(arg)


#: ``:class:`~netdiag.x.Y``` and the like in a docstring: a fully qualified reference.
_QUALIFIED_REF = re.compile(r":(?:class|exc|attr|meth|obj):`~?(netdiag\.[\w.]+)`")


def _import_class(dotted: str) -> type | None:
    """The class ``dotted`` names, or the class a member it names belongs to
    (``netdiag.wire.icmp.Unreach.ADMIN`` -> ``Unreach``); None if it names no class."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        cls = None
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if not inspect.isclass(obj):
                break
            cls = obj
        return cls
    return None


def referenced_types() -> list[type]:
    """netdiag classes that public classes' fields, properties and methods are typed with (or
    that their public members return), but that ``netdiag`` does not export -- e.g. the
    ``ErrorKind`` of a ``PingError`` -- so that the references to them resolve."""
    public = public_objects()
    top = importlib.import_module("netdiag")
    found: dict[str, type] = {}
    for name in top.__all__:
        obj = getattr(top, name)
        if not inspect.isclass(obj):
            continue
        members = [obj] + [
            m.fget if isinstance(m, property) else m
            for k, m in inspect.getmembers(obj)
            if not k.startswith("_") and (callable(m) or isinstance(m, property))
        ]
        for m in members:
            for ref in _QUALIFIED_REF.findall(inspect.getdoc(m) or ""):
                cls = _import_class(ref)
                if cls is not None and id(cls) not in public:
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
            try:
                hints = typing.get_type_hints(m)
            except Exception:
                continue
            for hint in hints.values():
                for cls in _classes_in(hint):
                    if cls.__module__.startswith("netdiag.") and id(cls) not in public:
                        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def _public_bases(app: Sphinx, name: str, obj: Any, options: Any, bases: list[type]) -> None:
    """Show only bases a reader can look up: drop netdiag's internal base classes (the engine's
    ``Diagnostic``, ``ProbeStats``), whose public members are documented on the subclass."""
    public = public_objects() | {id(c) for c in referenced_types()}
    bases[:] = [
        b
        for b in bases
        if not getattr(b, "__module__", "").startswith("netdiag") or id(b) in public
    ]


_MISSING = object()


def _lookup(dotted: str) -> Any:
    """The object a dotted ``netdiag...`` path names (module attribute, class member), or
    ``_MISSING``."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, _MISSING)
            if obj is _MISSING:
                return _MISSING
        return obj
    return _MISSING


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _resolve_netdiag_ref(app: Sphinx, env: Any, node: Any, contnode: nodes.Element) -> Any:
    """Resolve the Python references Sphinx could not, where netdiag's code is the judge.

    1. A name that matches exactly one documented object by its trailing components:
       ``:attr:`Unreach.ADMIN``` written in a module that imports ``Unreach``.
    2. A name that exists in netdiag under another path than the one it is documented at:
       ``netdiag.engine.ResultStream`` re-exports ``netdiag.engine.stream.ResultStream``.
    3. A name that exists in netdiag but is internal and not documented (an annotation naming
       the engine's ``Session``, an instance attribute set in ``__init__``): shown as code,
       without a link.

    4. A name from another project (the standard library, trio): not linked, since the build
       runs without network access and so without intersphinx inventories.

    Everything else -- a name that does not exist, say a renamed method still cited in a
    docstring -- stays a broken reference, an error under ``-W -n``.
    """
    if node.get("refdomain") != "py":
        return None
    from sphinx.util.nodes import make_refnode

    target = node["reftarget"].lstrip("~.")
    domain = env.get_domain("py")

    def link(name: str) -> Any:
        obj = domain.objects[name]
        return make_refnode(app.builder, node["refdoc"], obj.docname, obj.node_id, contnode, name)

    hits = [n for n in domain.objects if n.startswith("netdiag") and n.endswith("." + target)]
    if len(hits) == 1:
        return link(hits[0])
    top = target.split(".")[0]
    if top != "netdiag" and (hasattr(builtins, top) or _importable(top)):
        return contnode  # another project's name (stdlib, trio): not linked, see conf.py
    module, cls = node.get("py:module") or "", node.get("py:class") or ""
    candidates = [target, f"{module}.{target}", f"{module}.{cls}.{target}"]
    # a name used in the module that defines it (``Node`` in netdiag.testing.lab's annotations)
    candidates += [
        f"{m.__name__}.{target}"
        for m in list(sys.modules.values())
        if getattr(m, "__name__", "").startswith("netdiag")
        and getattr(getattr(m, top, None), "__module__", None) == m.__name__
    ]
    # an instance attribute the class sets in its methods (``self.stats = ...``)
    owner = _lookup(f"{module}.{cls}") if cls else _MISSING
    if inspect.isclass(owner) and "." not in target:
        try:
            source = inspect.getsource(owner)
        except (OSError, TypeError):
            source = ""
        if re.search(rf"self\.{re.escape(target)}\b\s*[:=]", source):
            return contnode
    for dotted in candidates:
        if not dotted.startswith("netdiag"):
            continue
        obj = _lookup(dotted)
        if obj is _MISSING:
            continue
        canonical = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        if canonical in domain.objects:
            return link(canonical)
        return contnode
    return None


def cli_modules() -> list[tuple[str, argparse.ArgumentParser]]:
    """``[(module, parser), ...]`` for every netdiag module with a ``parser()`` (or
    ``build_parser()``) function."""
    found = []
    for mod in _modules():
        fn = getattr(mod, "parser", None) or getattr(mod, "build_parser", None)
        if callable(fn) and getattr(fn, "__module__", None) == mod.__name__:
            p = fn()
            if isinstance(p, argparse.ArgumentParser):
                found.append((mod.__name__, p))
    # the diagnostics in the order the docs present them, then any other tool by name
    order = ["netdiag.ping.__main__", "netdiag.trace.__main__", "netdiag.knock.__main__",
             "netdiag.doctor"]  # fmt: skip
    return sorted(found, key=lambda f: (order.index(f[0]) if f[0] in order else 99, f[0]))


def help_text(p: argparse.ArgumentParser) -> str:
    """``p.format_help()`` at :data:`HELP_COLUMNS`, independent of the terminal."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        return p.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


class CliDirective(SphinxDirective):
    """One section per tool: how to start it, and its ``--help``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        for module, p in cli_modules():
            command = module.removesuffix(".__main__")
            short = command.split(".", 1)[1]
            section = nodes.section(ids=[nodes.make_id(f"cli-{short}")])
            section += nodes.title(text=f"python -m {command}")
            para = nodes.paragraph()
            para += nodes.Text("Also ")
            para += nodes.literal(text=f"netdiag {short}")
            para += nodes.Text(f". Generated from {module}.parser().")
            section += para
            text = help_text(p)
            block = nodes.literal_block(text, text)
            block["language"] = "text"
            section += block
            out.append(section)
        return out


_CHECKED = {"class", "exception", "function", "method", "property", "classmethod", "module"}


def _require_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Warn (an error under ``-W``) when a public object on a page has no docstring."""
    if what not in _CHECKED or name.rsplit(".", 1)[-1].startswith("_"):
        return
    if not any(line.strip() for line in lines):
        logger.warning("public %s %s has no docstring", what, name, type="netdiag", subtype="doc")


def _returns_async_iterator(obj: Any) -> bool:
    """True for a plain method annotated to return an async iterator (``ResultStream``)."""
    fn = getattr(obj, "__func__", obj)
    if not callable(fn) or inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return False
    try:
        ret = typing.get_type_hints(fn).get("return")
    except Exception:
        return False
    origin = typing.get_origin(ret) or ret
    return isinstance(origin, type) and hasattr(origin, "__aiter__")


def _teach_trio_marker() -> None:
    """sphinxcontrib-trio marks ``async for ... in`` only on async generator functions; a method
    that returns an async-iterable object (``Pinger.results()`` returns a ``ResultStream``) is
    used the same way, so mark it too, from its return annotation."""
    import sphinxcontrib_trio

    sniff = sphinxcontrib_trio.sniff_options
    if getattr(sniff, "_netdiag", False):
        return

    def sniff_options(obj: Any) -> set[str]:
        options: set[str] = sniff(obj)
        if not options & sphinxcontrib_trio.EXCLUSIVE_OPTIONS and _returns_async_iterator(obj):
            options.add("async-for")
        return options

    sniff_options._netdiag = True  # type: ignore[attr-defined]
    sphinxcontrib_trio.sniff_options = sniff_options


OTHER_PAGES = "@other-pages@"


def _other_pages(app: Sphinx, docname: str, source: list[str]) -> None:
    """In the index, replace ``@other-pages@`` with the pages it does not list (sorted), so a
    page added to docs/ is in the toctree -- an orphan page would fail the ``-W`` build."""
    if docname != app.config.root_doc or OTHER_PAGES not in source[0]:
        return
    text = source[0]
    listed = set(re.findall(r"^([\w./-]+)\s*$", text, re.M))
    pages = sorted(
        str(path.relative_to(app.srcdir).with_suffix(""))
        for path in Path(app.srcdir).glob("*.md")
        if path.stem != docname
    )
    others = [p for p in pages if p not in listed]
    source[0] = text.replace(OTHER_PAGES, "\n".join(others))


def setup(app: Sphinx) -> dict[str, Any]:
    _teach_trio_marker()
    app.add_directive("netdiag-api", ApiDirective)
    app.add_directive("netdiag-cli", CliDirective)
    app.connect("source-read", _other_pages)
    app.connect("autodoc-process-docstring", _require_docstring, priority=100)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("missing-reference", _resolve_netdiag_ref)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
