"""ICMP extensions (RFC 4884 structure, RFC 4950 MPLS, RFC 5837 interface information), parsed
from messages built byte by byte here, each field named after the RFC section that defines it."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from netdiag.wire.checksum import checksum
from netdiag.wire.icmpext import (
    IcmpExtensions,
    InterfaceInfo,
    MplsEntry,
    RawObject,
    parse_extensions,
    parse_objects,
)

# A quoted IPv4 header + 8 bytes of UDP (what a router quotes at least), padded below.
QUOTE4 = bytes.fromhex("4500003c1c4640000111" + "0000" + "c6120102" + "c6120602") + bytes.fromhex(
    "f0a8829a00281234"
)


def mpls_word(label: int, tc: int, s: int, ttl: int) -> bytes:
    """RFC 4950 section 7 / RFC 3032 section 2.1: label 20 bits, TC 3, S 1, TTL 8."""
    return struct.pack("!I", label << 12 | tc << 9 | s << 8 | ttl)


def ext_object(class_num: int, c_type: int, payload: bytes) -> bytes:
    """RFC 4884 section 8: length (incl. this 4-byte header), class-num, c-type, payload."""
    return struct.pack("!HBB", 4 + len(payload), class_num, c_type) + payload


def ext_structure(*objects: bytes, good_checksum: bool = True) -> bytes:
    """RFC 4884 section 7: version 2 in the high nibble, 12 reserved bits, checksum."""
    body = b"".join(objects)
    head = bytes([0x20, 0x00, 0x00, 0x00])
    ck = checksum(head + body)
    if not good_checksum:
        ck ^= 0x0101
    return head[:2] + struct.pack("!H", ck) + body


def icmp4_time_exceeded(quote: bytes, ext: bytes, length_field: bool = True) -> bytes:
    """RFC 4884 section 4.1: byte 5 = length of the original datagram in 32-bit words; the
    quote is zero-padded to 128 bytes when extensions follow (section 5.1)."""
    padded = quote + bytes(max(0, 128 - len(quote)))
    words = len(padded) // 4 if length_field else 0
    head = bytes([11, 0, 0, 0, 0, words, 0, 0])
    msg = head + padded + ext
    ck = checksum(msg)
    return msg[:2] + struct.pack("!H", ck) + msg[4:]


LSE = mpls_word(24008, 0, 1, 1)  # label 24008, TC 0, bottom of stack, TTL 1


def test_mpls_label_stack_v4() -> None:
    msg = icmp4_time_exceeded(QUOTE4, ext_structure(ext_object(1, 1, LSE)))
    ext = parse_extensions(msg, v6=False)
    assert ext == IcmpExtensions(((MplsEntry(24008, 0, True, 1),),))
    assert str(ext.mpls[0]) == "L=24008,E=0,S=1,T=1"


def test_two_entry_stack_and_its_order() -> None:
    stack = mpls_word(16, 5, 0, 254) + mpls_word(1048575, 7, 1, 1)
    msg = icmp4_time_exceeded(QUOTE4, ext_structure(ext_object(1, 1, stack)))
    ext = parse_extensions(msg, v6=False)
    assert ext is not None
    assert ext.mpls == (MplsEntry(16, 5, False, 254), MplsEntry(1048575, 7, True, 1))


def test_pre_rfc4884_zero_length_uses_128_bytes_only_with_a_real_checksum() -> None:
    """RFC 4884 section 5.5: a zero length field; the structure follows a 128-byte quote."""
    msg = icmp4_time_exceeded(QUOTE4, ext_structure(ext_object(1, 1, LSE)), length_field=False)
    ext = parse_extensions(msg, v6=False)
    assert ext is not None and ext.mpls == (MplsEntry(24008, 0, True, 1),)
    # A plain long quote (no extensions) must not be read as one.
    long_quote = icmp4_time_exceeded(QUOTE4 + bytes(200), b"", length_field=False)
    assert parse_extensions(long_quote, v6=False) is None


def test_icmpv6_length_in_64_bit_words() -> None:
    """RFC 4884 section 4.2: ICMPv6 byte 4 is the quote length in 64-bit words."""
    quote = bytes(128)
    ext = ext_structure(ext_object(1, 1, LSE))
    msg = bytes([3, 0, 0, 0, 128 // 8, 0, 0, 0]) + quote + ext
    parsed = parse_extensions(msg, v6=True)
    assert parsed is not None and parsed.mpls == (MplsEntry(24008, 0, True, 1),)
    # With 120 bytes of quote the length field would say 15 words: under the 128 the RFC
    # requires, so not an extension structure.
    short = bytes([3, 0, 0, 0, 15, 0, 0, 0]) + bytes(120) + ext
    assert parse_extensions(short, v6=True) is None


def test_interface_information_object() -> None:
    """RFC 5837 section 4: c-type 0x0F = role incoming, ifIndex, IP address, name, MTU."""
    ifindex = struct.pack("!I", 7)
    ip = struct.pack("!HH", 1, 0) + bytes([198, 18, 2, 1])  # AFI 1 = IPv4 (section 4.2)
    name = bytes([8]) + b"eth1" + bytes(3)  # length octet counts itself, multiple of 4 (4.3)
    mtu = struct.pack("!I", 1500)
    obj = ext_object(2, 0x0F, ifindex + ip + name + mtu)
    msg = icmp4_time_exceeded(QUOTE4, ext_structure(obj, ext_object(1, 1, LSE)))
    ext = parse_extensions(msg, v6=False)
    assert ext is not None
    assert ext.interfaces == (
        InterfaceInfo("incoming", 7, ipaddress.IPv4Address("198.18.2.1"), "eth1", 1500),
    )
    assert ext.mpls == (MplsEntry(24008, 0, True, 1),)


def test_unknown_objects_are_kept_raw_and_bad_structures_ignored() -> None:
    raw = parse_objects(ext_structure(ext_object(99, 3, b"\x01\x02\x03\x04")))
    assert raw == IcmpExtensions((RawObject(99, 3, b"\x01\x02\x03\x04"),))
    assert parse_objects(ext_structure(ext_object(1, 1, LSE), good_checksum=False)) is None
    truncated = ext_structure(ext_object(1, 1, LSE))[:-2]
    assert parse_objects(truncated) is None
    assert parse_objects(bytes([0x10, 0, 0, 0])) is None  # version 1
    # A zero checksum means "not computed": accepted with an explicit length field.
    zero = bytes([0x20, 0, 0, 0]) + ext_object(1, 1, LSE)
    assert parse_objects(zero) == IcmpExtensions(((MplsEntry(24008, 0, True, 1),),))


def test_only_extended_types_are_looked_at() -> None:
    msg = icmp4_time_exceeded(QUOTE4, ext_structure(ext_object(1, 1, LSE)))
    echo = bytes([0]) + msg[1:]
    assert parse_extensions(echo, v6=False) is None


@given(st.binary(max_size=400), st.booleans())
def test_never_raises(data: bytes, v6: bool) -> None:
    parse_extensions(data, v6)
    parse_objects(data)
