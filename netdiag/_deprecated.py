"""Old names kept importable for one release, each warning where it is used (see CHANGELOG)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["deprecated_alias"]


def deprecated_alias(module: str, renamed: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves each old name in ``renamed`` with a
    :class:`DeprecationWarning` naming the new one."""

    def __getattr__(name: str) -> Any:
        new = renamed.get(name)
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} is deprecated: use {getattr(new, '__qualname__', new)} "
            f"(renamed in netdiag 0.2; the old name goes in 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        return new

    return __getattr__
