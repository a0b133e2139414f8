# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A shape's set elements (nft_compile.Shape) as the kernel holds them: the
key, and for an interval set the key's end, each part padded to 32 bits.
The kernel check compares these bytes with what a set dump returns, and a
removal sends them, so neither needs nft. Only the expressions that
nft_matches turns into lookups (LOOKUP_EXPRESSIONS) are encoded; what a
port's value is in nft syntax, nft_compile wrote from typed values."""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Dict, List, Mapping, Optional, Tuple

from . import nft_layout as layout  # the mark's layout by attribute: a test installs the previous one
from .nft_netlink import NFTA_LIST_ELEM, NLA_F_NESTED, attribute, cstring

IFNAMSIZ = 16
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END, NFTA_DATA_VALUE = 1, 10, 1
_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")  # an interface name safe to write between quotes
ETHER_TYPES = {0x0800: "ip", 0x0806: "arp", 0x86DD: "ip6", 0x8100: "8021q", 0x88A8: "8021ad"}  # the names nft lists
_RAW = re.compile(r"@(ll|nh|th),(\d+),(\d+)")
# expression -> bytes of one value (network byte order)
_WIDTHS: Dict[str, int] = {"ether saddr": 6, "ether daddr": 6, "ip saddr": 4, "ip daddr": 4, "ip6 saddr": 16,
                           "ip6 daddr": 16, "th sport": 2, "th dport": 2, "ether type": 2}


def lookup_width(expr: str) -> int:
    """Bytes of a value of ``expr`` in a set key; 0 where it is not encoded here (no lookup then)."""
    raw = _RAW.fullmatch(expr)
    if raw:
        bits = int(raw.group(3))
        return bits // 8 if bits % 8 == 0 and int(raw.group(2)) % 8 == 0 else 0
    return _WIDTHS.get(expr, 0)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _number(text: str, width: int) -> int:
    if ":" in text and width == 6:
        return int(text.replace(":", ""), 16)
    if "." in text or ":" in text:
        return int(ipaddress.ip_address(text))
    return int(text, 0)


def _value(expr: str, text: str, interval: bool) -> Tuple[bytes, bytes]:
    """(low, high) of one part of a key: a value is both."""
    if expr in ("iifname", "oifname"):
        name = text.strip('"').encode().ljust(IFNAMSIZ, b"\0")
        return name, name
    if expr in ("meta mark", "mark"):
        # host byte order; in an interval set's key network byte order (nft converts it, to compare ranges)
        mark = struct.pack(">I" if interval else "=I", int(text, 0))
        return mark, mark
    width = lookup_width(expr)
    if "/" in text:
        network = ipaddress.ip_network(text, strict=False)
        low, high = int(network.network_address), int(network.broadcast_address)
    elif "-" in text:
        first, last = text.split("-", 1)
        low, high = _number(first, width), _number(last, width)
    else:
        low = high = _number(text, width)
    return _pad(low.to_bytes(width, "big")), _pad(high.to_bytes(width, "big"))


def expressions(spec: str) -> List[str]:
    """The parts of a set's key, from its declaration (``typeof a . b;`` or ``type mark;``)."""
    declared = spec.split(";", 1)[0].split(None, 1)[1]
    return [part.strip() for part in declared.split(" . ")]


def encode(spec: str, element: str) -> Tuple[bytes, bytes]:
    """(key, key end: empty unless the set is an interval set) of an element in nft syntax."""
    parts = [_value(expr, text, "interval" in spec) for expr, text in zip(expressions(spec), element.split(" . "))]
    key = b"".join(low for low, _high in parts)
    return key, b"".join(high for _low, high in parts) if "interval" in spec else b""


def _text(expr: str, data: bytes, interval: bool) -> Optional[str]:
    """One value of ``expr`` in nft syntax, from what the kernel holds (padding included)."""
    if expr in ("iifname", "oifname"):
        name = data.rstrip(b"\0").decode("ascii", errors="replace")
        return f'"{name}"' if _NAME.fullmatch(name) else None
    if expr in ("meta mark", "mark"):
        return f"0x{struct.unpack('>I' if interval else '=I', data[:4])[0]:08x}"  # as nft lists a mark
    width = lookup_width(expr)
    number = int.from_bytes(data[:width], "big")
    if expr.startswith(("ether ", "ip ", "ip6 ")) and expr != "ether type":
        if width == 6:
            return ":".join(f"{byte:02x}" for byte in data[:6])
        return str(ipaddress.ip_address(number if width == 4 else number.to_bytes(16, "big")))
    if expr == "ether type":
        return ETHER_TYPES.get(number, f"0x{number:04x}")
    return str(number) if expr.startswith("th ") else f"0x{number:x}"


def _range(expr: str, low: str, high: str) -> str:
    """A range as nft lists it: a network of addresses as a prefix."""
    if expr.startswith(("ip ", "ip6 ")):
        networks = list(ipaddress.summarize_address_range(ipaddress.ip_address(low), ipaddress.ip_address(high)))
        if len(networks) == 1:
            return str(networks[0])
    return f"{low}-{high}"


def decode(spec: str, key: bytes, end: bytes) -> Optional[str]:
    """An element as the kernel holds it, in nft syntax; None where it cannot
    be written safely (an interface name no binding could have)."""
    parts, offset = [], 0
    for expr in expressions(spec):
        size = IFNAMSIZ if expr in ("iifname", "oifname") else 4 if expr in ("meta mark", "mark") \
            else lookup_width(expr) + (-lookup_width(expr) % 4)
        if not size or offset + size > len(key):
            return None
        low = _text(expr, key[offset:offset + size], bool(end))
        high = _text(expr, end[offset:offset + size], True) if end else low
        if low is None or high is None:
            return None
        parts.append(low if low == high else _range(expr, low, high))
        offset += size
    return " . ".join(parts)


def keyed_port(family: str, key: bytes, end: bytes, by_id: Mapping[int, str]) -> Optional[str]:
    """The port an element of a shape's set is keyed by (``port_prefixes``
    the other way): its name (bridge), or its id as sender or receiver
    (inet; an interval set's key is in network byte order)."""
    if family == "bridge":
        return key[:IFNAMSIZ].rstrip(b"\0").decode(errors="replace")
    mark = struct.unpack(">I" if end else "=I", key[:4])[0]
    return by_id.get(mark & layout.FROM_MASK or mark >> layout.TO_SHIFT)


def port_prefixes(portdev: str, port_id: Optional[int]) -> List[bytes]:
    """How the keys of a port's elements begin: its name (bridge sets) or its
    id as sender or receiver (inet sets), a mark in either byte order."""
    marks = [struct.pack(order, port_id << shift) for shift in (0, layout.TO_SHIFT) for order in ("=I", ">I")
             ] if port_id else []
    return [portdev.encode().ljust(IFNAMSIZ, b"\0")] + marks


def map_key(key: str) -> bytes:
    """A key of our verdict maps in nft syntax (an interface name or a port mark) as the kernel holds it."""
    if key.startswith('"'):
        return key.strip('"').encode().ljust(IFNAMSIZ, b"\0")  # type ifname: the name, zero-padded
    return struct.pack("=I", int(key, 0))  # type mark: 32 bits in host byte order


def map_key_text(key: bytes) -> str:
    """``map_key`` the other way, as nft lists it."""
    if len(key) == IFNAMSIZ:
        return '"' + key.rstrip(b"\0").decode(errors="replace") + '"'
    return f"0x{struct.unpack('=I', key[:4])[0]:08x}"


def set_named(name: str) -> bytes:
    """The netlink attributes naming a set of ours, for a request about its elements."""
    return attribute(NFTA_SET_ELEM_LIST_TABLE, cstring(layout.TABLE)) + attribute(NFTA_SET_ELEM_LIST_SET, cstring(name))


def element_list(name: str, key: bytes, end: bytes = b"") -> bytes:
    """The netlink attributes naming one element of a set of ours (``end``:
    of an interval set's element, its key's end), to delete or to get it."""
    data = attribute(NFTA_SET_ELEM_KEY | NLA_F_NESTED, attribute(NFTA_DATA_VALUE, key))
    if end:
        data += attribute(NFTA_SET_ELEM_KEY_END | NLA_F_NESTED, attribute(NFTA_DATA_VALUE, end))
    return set_named(name) + attribute(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
                                       attribute(NFTA_LIST_ELEM | NLA_F_NESTED, data))
