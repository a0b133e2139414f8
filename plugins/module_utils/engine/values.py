# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Typed attribute values: the strict check that keeps any text, above all a
variable's value, from ever becoming firewall syntax.

Every checker takes the text as written and returns a typed Python value
(int, str in canonical spelling, frozenset, ...) or raises NwfilterError.
Compilers only ever see these typed values.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any, Callable, Dict, FrozenSet, Tuple

from .errors import NwfilterError

MAX_TEXT = 256

_MAC_RE = re.compile(r"^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$")
_DEC_RE = re.compile(r"^[0-9]{1,10}$")
_HEX_RE = re.compile(r"^0[xX][0-9a-fA-F]{1,8}$")
_IPV4_RE = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")
_IPV6_RE = re.compile(r"^[0-9a-fA-F:.]{2,45}$")
_IPSET_RE = re.compile(r"^[a-zA-Z0-9_.:-]{1,31}$")
# Printable text without quotes or backslashes: comments are the only free
# text that may reach a firewall (as a rule comment), always quoted by us.
_COMMENT_RE = re.compile(r"^[^\x00-\x1f\x7f\"'\\`$]{0,256}$")

ETHERTYPE_NAMES = {"arp": 0x0806, "rarp": 0x8035, "ipv4": 0x0800, "ipv6": 0x86DD, "vlan": 0x8100}
IP_PROTOCOL_NAMES = {
    "icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "esp": 50, "ah": 51,
    "icmpv6": 58, "sctp": 132, "udplite": 136,
}
ARP_OPCODE_NAMES = {
    "request": 1, "reply": 2, "request_reverse": 3, "reply_reverse": 4,
    "drarp_request": 5, "drarp_reply": 6, "drarp_error": 7,
    "inarp_request": 8, "arp_nak": 10,
}
CONN_STATES = ("NEW", "ESTABLISHED", "RELATED", "INVALID", "NONE")
TCP_FLAGS = ("SYN", "ACK", "URG", "PSH", "FIN", "RST")


def _fail(kind: str, text: str) -> NwfilterError:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return NwfilterError(f"{shown!r} is not a valid {kind}")


def parse_number(text: str, low: int, high: int, kind: str = "number") -> int:
    if _DEC_RE.fullmatch(text):
        value = int(text, 10)
    elif _HEX_RE.fullmatch(text):
        value = int(text, 16)
    else:
        raise _fail(kind, text)
    if not low <= value <= high:
        raise NwfilterError(f"{text!r} is out of range for a {kind} ({low}-{high})")
    return value


_SIGNED_RE = re.compile(r"[-+]?[0-9]{1,10}")


def parse_whole_number(text: str) -> int:
    """A signed decimal as libvirt reads one (strtol, base 10): no underscores,
    no hex or octal prefixes, no spaces, which Python's int() would take."""
    if not _SIGNED_RE.fullmatch(text):
        raise _fail("whole number", text)
    return int(text, 10)


def _ranged(low: int, high: int, kind: str) -> Callable[[str], int]:
    return lambda text: parse_number(text, low, high, kind)


def parse_mac(text: str) -> str:
    if not _MAC_RE.fullmatch(text):
        raise _fail("MAC address", text)
    return ":".join(f"{int(part, 16):02x}" for part in text.split(":"))


def parse_ipv4(text: str) -> str:
    if not _IPV4_RE.fullmatch(text):
        raise _fail("IPv4 address", text)
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise _fail("IPv4 address", text) from None


def parse_ipv6(text: str) -> str:
    if not _IPV6_RE.fullmatch(text):
        raise _fail("IPv6 address", text)
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise _fail("IPv6 address", text) from None


def parse_nd_lladdr(text: str) -> str:
    """A MAC, or ``none`` (an ND message without options); vmguard's own type."""
    if text.lower() == "none":
        return "none"
    try:
        return parse_mac(text)
    except NwfilterError:
        raise _fail("ND link-layer address (a MAC or none)", text) from None


def eui64_link_local(mac: str) -> str:
    """The link-local address a MAC gives by modified EUI-64 (RFC 4291), the
    default of a Linux guest; the default of the variable IPV6_LINKLOCAL."""
    octets = bytes.fromhex(parse_mac(mac).replace(":", ""))
    interface_id = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + interface_id))


def _mask_prefix(text: str, bits: int, parse_addr: Callable[[str], str], kind: str) -> int:
    if _DEC_RE.fullmatch(text):
        return parse_number(text, 0, bits, kind)
    try:
        addr = parse_addr(text)
    except NwfilterError:
        raise _fail(kind, text) from None
    value = int(ipaddress.ip_address(addr))
    inverted = ~value & ((1 << bits) - 1)
    if inverted & (inverted + 1):
        raise NwfilterError(f"{text!r} is not a contiguous {kind}")
    return bits - inverted.bit_length()


def parse_ipv4_mask(text: str) -> int:
    """A prefix length or a dotted mask; returns the prefix length."""
    return _mask_prefix(text, 32, parse_ipv4, "IPv4 mask")


def parse_ipv6_mask(text: str) -> int:
    return _mask_prefix(text, 128, parse_ipv6, "IPv6 mask")


def parse_ethertype(text: str) -> int:
    name = text.lower()
    if name in ETHERTYPE_NAMES:
        return ETHERTYPE_NAMES[name]
    return parse_number(text, 0x600, 0xFFFF, "protocol id (0x600-0xffff or arp, rarp, ipv4, ipv6, vlan)")


def parse_ip_protocol(text: str) -> int:
    name = text.lower()
    if name in IP_PROTOCOL_NAMES:
        return IP_PROTOCOL_NAMES[name]
    return parse_number(text, 0, 255, "IP protocol")


def parse_arp_opcode(text: str) -> int:
    name = text.lower()
    if name in ARP_OPCODE_NAMES:
        return ARP_OPCODE_NAMES[name]
    return parse_number(text, 0, 65535, "ARP opcode")


def _flag_list(text: str, allowed: Tuple[str, ...], kind: str) -> FrozenSet[str]:
    items = [item.strip().upper() for item in text.split(",")]
    if not text or any(item not in allowed for item in items):
        raise _fail(kind, text)
    return frozenset(items)


def parse_state(text: str) -> FrozenSet[str]:
    return _flag_list(text, CONN_STATES, "connection state list (NEW, ESTABLISHED, RELATED, INVALID, NONE)")


def _tcp_flag_set(text: str) -> FrozenSet[str]:
    upper = text.upper()
    if upper == "ALL":
        return frozenset(TCP_FLAGS)
    if upper == "NONE":
        return frozenset()
    return _flag_list(text, TCP_FLAGS, "TCP flag list")


def parse_tcp_flags(text: str) -> Tuple[FrozenSet[str], FrozenSet[str]]:
    """``MASK/SET``: the flags examined and, of those, the ones that must be set."""
    parts = text.split("/")
    if len(parts) != 2:
        raise _fail("TCP flags value (MASK/SET)", text)
    return _tcp_flag_set(parts[0]), _tcp_flag_set(parts[1])


def parse_boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise _fail("boolean (true or false)", text)


def parse_comment(text: str) -> str:
    if not _COMMENT_RE.fullmatch(text):
        raise NwfilterError(
            "comment must be at most 256 printable characters without quotes, backslashes, '`' or '$'"
        )
    return text


def parse_ipset_name(text: str) -> str:
    if not _IPSET_RE.fullmatch(text):
        raise _fail("ipset name", text)
    return text


def parse_ipset_flags(text: str) -> Tuple[str, ...]:
    items = tuple(item.strip().lower() for item in text.split(","))
    if not 1 <= len(items) <= 6 or any(item not in ("src", "dst") for item in items):
        raise _fail("ipset flags value (1 to 6 of src, dst)", text)
    return items


PARSERS: Dict[str, Callable[[str], Any]] = {
    "mac": parse_mac,
    "macmask": parse_mac,
    "ipv4": parse_ipv4,
    "ipv4mask": parse_ipv4_mask,
    "ipv6": parse_ipv6,
    "ipv6mask": parse_ipv6_mask,
    "uint8": _ranged(0, 0xFF, "8-bit number"),
    "uint16": _ranged(0, 0xFFFF, "16-bit number"),
    "uint32": _ranged(0, 0xFFFFFFFF, "32-bit number"),
    "port": _ranged(0, 65535, "port"),
    "dscp": _ranged(0, 63, "DSCP value"),
    "vlanid": _ranged(0, 4095, "VLAN id"),
    "ethertype": parse_ethertype,
    "ipproto": parse_ip_protocol,
    "arpopcode": parse_arp_opcode,
    "state": parse_state,
    "tcpflags": parse_tcp_flags,
    "boolean": parse_boolean,
    "comment": parse_comment,
    "ipsetname": parse_ipset_name,
    "ipsetflags": parse_ipset_flags,
    "ndlladdr": parse_nd_lladdr,
}


def parse_typed(kind: str, text: str) -> Any:
    """Check ``text`` against the attribute type ``kind``; return the typed value."""
    if not isinstance(text, str):
        raise NwfilterError(f"expected text, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise NwfilterError(f"value of {len(text)} characters is longer than {MAX_TEXT}")
    return _parse_cached(kind, text)


@functools.lru_cache(maxsize=65536)
def _parse_cached(kind: str, text: str) -> Any:
    # typed values are immutable, and the same values recur in every binding
    return PARSERS[kind](text)
