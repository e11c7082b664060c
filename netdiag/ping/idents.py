"""Echo identifiers of one Pinger, allocated so one mask-and-compare covers them all.

The Pinger's raw ICMP sockets carry a kernel filter (:func:`netdiag.wire.bpf.echo_filter`) that
passes only echo replies and errors with one of *its* identifiers. For that filter to stay a
couple of instructions, identifiers come from one aligned block: ``2**bits`` values sharing a
random ``16 - bits``-bit prefix (``ident & mask == base``). The block starts at 256 identifiers;
only when some target has every identifier of the block in use by concurrent pings does it
double-and-double (4x), and the owner re-attaches the filter (attaching replaces the old
program atomically). Pure: no sockets, the randomness is injectable.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..errors import NetdiagError
from ..wire.bpf import Range

__all__ = ["IdentPool"]

#: Identifiers in a fresh block: 256 concurrent pings to one target before the block grows.
START_BITS = 8


class IdentPool:
    """Identifiers handed out per target (two running pings of one Pinger to one target
    never share one; pings to different targets may). ``on_grow`` is called after the block
    grew, so the kernel filter can follow."""

    def __init__(self, bits: int = START_BITS, rng: random.Random | None = None) -> None:
        if not 0 <= bits <= 16:
            raise ValueError(f"bits must be 0..16, not {bits}")
        r = rng or random.Random()
        self.bits = bits
        self.base = r.randrange(0x10000) & self.mask
        self._next = r.randrange(1 << bits)
        self._used: dict[tuple[bytes, int], None] = {}
        self.on_grow: Callable[[Range], None] | None = None

    @property
    def mask(self) -> int:
        return 0xFFFF & ~((1 << self.bits) - 1)

    @property
    def range(self) -> Range:
        """What the kernel filter must pass: every identifier of the block."""
        return Range(self.base, self.mask)

    def allocate(self, packed: bytes) -> int:
        """An identifier of the block no other running ping uses for target ``packed``."""
        while True:
            size = 1 << self.bits
            for _ in range(size):
                ident = self.base | (self._next & (size - 1))
                self._next = (self._next + 1) & (size - 1)
                if (packed, ident) not in self._used:
                    self._used[(packed, ident)] = None
                    return ident
            if self.bits >= 16:
                raise NetdiagError("more than 65536 concurrent pings to one target")
            self._grow()

    def claim(self, packed: bytes, ident: int) -> bool:
        """Take ``ident`` (one of the block) for ``packed`` too, if it is free there."""
        if ident & self.mask != self.base or (packed, ident) in self._used:
            return False
        self._used[(packed, ident)] = None
        return True

    def release(self, packed: bytes, ident: int) -> None:
        self._used.pop((packed, ident), None)

    def _grow(self) -> None:
        self.bits = min(16, self.bits + 2)
        self.base &= self.mask
        if self.on_grow is not None:
            self.on_grow(self.range)
