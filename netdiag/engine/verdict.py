"""What an answer is to the probe it matches: the first, a duplicate, or late.

One pure decision, shared by every diagnostic, so ping, knock and trace cannot drift apart:

* an answer to a probe whose deadline already passed is **late**: the probe was reported lost
  (timeout, filtered, ``*``) and stays so; the late answer is reported as such and counted
  nowhere else -- never credited to another probe;
* a second answer to an answered probe is a **duplicate** (iputils' ``DUP!``);
* otherwise it is the **first** answer: it resolves the probe.
"""

from __future__ import annotations

import enum

__all__ = ["Verdict", "verdict"]


class Verdict(enum.Enum):
    FIRST = "first"
    DUPLICATE = "duplicate"
    LATE = "late"


def verdict(expired: bool, answered: bool) -> Verdict:
    """The verdict on an answer to a probe that has ``expired`` (or whose call ended) and/or
    was already ``answered``. Lateness wins: an expired probe was never answered in time."""
    if expired:
        return Verdict.LATE
    if answered:
        return Verdict.DUPLICATE
    return Verdict.FIRST
