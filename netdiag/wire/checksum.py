"""The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

Everything here is pure and allocation-light because it sits on the probe hot path: a mass ping
computes one checksum per echo request. The one's-complement sum is computed on a big integer
built from the whole buffer, which CPython does in C, instead of a Python loop over 16-bit words.
"""

from __future__ import annotations

import struct

__all__ = ["checksum", "ones_sum", "pseudo_header_v4", "pseudo_header_v6", "update16"]


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """One's-complement sum of ``data`` as big-endian 16-bit words, folded to 16 bits.

    ``start`` lets callers chain sums (for example a pseudo-header, then a segment) without
    concatenating buffers.
    """
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\x00"
        n += 1
    if n == 0:
        return start & 0xFFFF
    # Summing the buffer as one huge integer and folding modulo 0xFFFF is the classic trick:
    # 2**16 == 1 (mod 0xFFFF), so the big integer is congruent to the sum of its 16-bit words.
    total = int.from_bytes(data, "big") % 0xFFFF + start
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    # The modulo maps a true sum of 0xFFFF (a buffer of all ones, or words adding up to it) to 0;
    # both are the same value in one's-complement arithmetic ("negative zero"), except that a
    # buffer that is all zeros must sum to 0, which it does.
    if total == 0 and any(data) and start == 0:
        return 0xFFFF
    return total


def checksum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The Internet checksum of ``data``: the complement of its one's-complement sum."""
    return ~ones_sum(data, start) & 0xFFFF


def update16(old_checksum: int, old_word: int, new_word: int) -> int:
    """Incrementally update ``old_checksum`` when one 16-bit word changes (RFC 1624, eqn. 3).

    Used to turn an echo request into the checksum of its reply, or to patch a sequence number
    into a precomputed probe without summing the whole packet again.
    """
    total = (~old_checksum & 0xFFFF) + (~old_word & 0xFFFF) + (new_word & 0xFFFF)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header_v4(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The IPv4 pseudo-header that TCP and UDP checksums cover (RFC 793 / RFC 768)."""
    return src + dst + struct.pack("!BBH", 0, proto, length)


def pseudo_header_v6(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The IPv6 pseudo-header that upper-layer checksums cover (RFC 8200 section 8.1)."""
    return src + dst + struct.pack("!I3xB", length, proto)
