"""Sphinx configuration for netdiag's documentation site.

Build (from the repository root, with the ``docs`` extra installed)::

    python -m sphinx -W --keep-going -n docs docs/_build/html

The Markdown pages in this folder are the source (MyST); the API and CLI references are
generated from the code by ``_ext/netdiag_sphinx.py``. Warnings are errors and nitpicky mode
is on, so a broken cross-reference to a netdiag name, or a public object without a docstring,
fails the build (tests/test_docs.py runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Document the working tree's netdiag, whatever is installed; our extension lives in _ext.
sys.path[:0] = [str(HERE.parent), str(HERE / "_ext")]

import netdiag  # noqa: E402

project = "netdiag"
author = "the netdiag authors"
copyright = "2026, the netdiag authors"
release = version = netdiag.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxcontrib_trio",
    "netdiag_sphinx",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"netdiag {release}"

# Signatures and types: hints rendered in the parameter lists, the source order kept.
autodoc_member_order = "bysource"
autodoc_typehints = "both"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"
# sphinxcontrib-trio marks async iterators ("async for") and async context managers through
# autodoc's class-based documenters, which Sphinx 9 keeps behind this switch.
autodoc_use_legacy_class_based = True

# Nitpicky: every reference must resolve. netdiag's own names always must; names from other
# projects (the standard library, trio, dpkt) are not linked, because the build runs without
# network access and so without intersphinx inventories -- _ext/netdiag_sphinx.py accepts those
# that exist (an importable module, a builtin), so a misspelt name still fails.
nitpicky = True
