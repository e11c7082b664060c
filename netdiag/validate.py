"""Argument checks shared by the diagnostics' parameter classes (``Ping``, ``Knock``,
``Trace``): they raise early, naming the field, the allowed range and the bad value."""

from __future__ import annotations

import math

__all__ = ["check_float", "check_int"]


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
