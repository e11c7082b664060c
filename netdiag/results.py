"""Turning result dataclasses into JSON-ready values, the same way for every diagnostic.

The CLIs' ``--json`` and every ``as_dict()`` go through :func:`jsonable`, so an address is always
a string, an enum always its name as users know it, and a nested error always an object.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from typing import Any

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` with dataclasses as dicts of their fields, ``ipaddress`` objects as strings,
    enums as their label (or value), bytes as hex, and tuples as lists -- recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, enum.Enum):
        return getattr(value, "label", value.value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value
