"""Argument checks shared by the diagnostics' parameter classes (``Ping``, ``Knock``,
``Trace``): they raise early, naming the field, the allowed range and the bad value."""

from __future__ import annotations

import functools
import math
from typing import Any, TypeVar

__all__ = ["check_float", "check_int", "expiry_not_timeout"]

_C = TypeVar("_C", bound=type)


def check_int(name: str, value: object, lo: int, hi: int) -> None:
    """``value`` must be an ``int`` (not a ``bool``) within ``[lo, hi]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")


def check_float(name: str, value: object, lo: float, hi: float, open_low: bool = False) -> None:
    """``value`` must be a number of seconds within ``[lo, hi]`` (``(lo, hi]`` if
    ``open_low``); NaN is always refused."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if math.isnan(value) or value > hi or value < lo or (open_low and value == lo):
        low = f"more than {lo}" if open_low else f"at least {lo}"
        raise ValueError(f"{name} must be {low} and at most {hi} seconds, got {value}")


def expiry_not_timeout(cls: _C) -> _C:
    """Class decorator: ``timeout=`` (the name users try first, and what the CLIs' ``-W`` is
    called) raises a ``TypeError`` that names the field, ``expiry``, instead of Python's bare
    "unexpected keyword argument". One name per field: no alias to keep in sync."""
    init = cls.__init__  # type: ignore[misc]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if "timeout" in kwargs:
            raise TypeError(
                f"{cls.__name__}() has no 'timeout': the seconds each probe waits for its "
                f"answer are expiry= (the CLIs' -W, trace's -w)"
            )
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]
    return cls
