# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables match expressions for one resolved rule.

Only typed values (checked by values.parse_typed) are rendered, never text a
user wrote, so a value can never become firewall syntax. ``swap`` exchanges
source and destination, as libvirt does for the mirrored half of a rule.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import schema
from .errors import NwfilterError
from .ruleset import ResolvedRule
from .set_members import lookup_width

STP_DESTINATION = "01:80:c2:00:00:00"
ETHERTYPE = {"arp": 0x0806, "rarp": 0x8035, "vlan": 0x8100}
# STP BPDU fields as (bit offset from the start of the frame, width): 14 bytes
# of 802.3 header and 3 of LLC come first.
STP_FIELDS: Dict[str, Tuple[int, int]] = {
    "type": (160, 8), "flags": (168, 8), "root-priority": (176, 16), "root-address": (192, 48),
    "root-cost": (240, 32), "sender-priority": (272, 16), "sender-address": (288, 48), "port": (336, 16),
    "age": (352, 16), "max-age": (368, 16), "hello-time": (384, 16), "forward-delay": (400, 16),
}
# ARP/RARP header fields (bit offset from the network header, width). Raw
# payload works for both ethertypes; nft's arp expression knows only 0x0806.
ARP_FIELDS: Dict[str, Tuple[int, int]] = {
    "hwtype": (0, 16), "protocoltype": (16, 16), "opcode": (48, 16), "arpsrcmacaddr": (64, 48),
    "arpsrcipaddr": (112, 32), "arpdstmacaddr": (144, 48), "arpdstipaddr": (192, 32),
}
ARP_MASKS = {name: name.replace("addr", "mask") for name in ARP_FIELDS if name.endswith("ipaddr")}
# Neighbour discovery (RFC 4861), in bits from the start of the ICMPv6 header:
# NS, NA and redirect carry the target address at 64; the options of NS and NA
# start at 192. The link-layer address option an NS (source, 1) or an NA
# (target, 2) carries: its type and length (1 = 8 bytes), then the MAC.
ND_TARGET_TYPES = (135, 137)
ND_TARGET = (64, 128)
ND_LLADDR_OPTION = {135: 0x0101, 136: 0x0201}
ND_HEADER_BYTES = 24
SWAPS = {"src": "dst", "dst": "src", "sport": "dport", "dport": "sport"}
CT_STATES = {"NEW": "new", "ESTABLISHED": "established", "RELATED": "related", "INVALID": "invalid",
             "NONE": "untracked"}


def unsupported(element: str, attribute: str) -> NwfilterError:
    return NwfilterError(f"not supported by the nftables backend: {element} {attribute}")


ALL_ONES = {"ether type": "0xffff", "ether": "ff:ff:ff:ff:ff:ff", "ip saddr": "255.255.255.255", "ip daddr": "255.255.255.255",
            "ip6": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}


def _ones(expr: str) -> str:
    for prefix, mask in ALL_ONES.items():
        if expr.startswith(prefix):
            return mask
    if expr.startswith("@"):
        return hex((1 << int(expr.split(",")[2])) - 1)
    return "0xff" if expr.split()[-1] in ("type", "code", "protocol") and expr != "vlan type" else "0xffff"


def _is(expr: str, value: object, negate: bool) -> str:
    """``expr value`` or ``expr != value``. A plain negated header match gets
    an all-ones mask: nft 1.0.6 sorts and merges adjacent header fields into
    one comparison, which turns ``a != x b != y`` into "not both" instead of
    "neither"; a masked comparison is left alone. Meta expressions, ranges
    and prefixes are never merged."""
    if not negate:
        return f"{expr} {value}"
    # bitfields (dscp, vlan id) are already masked; meta, ranges and prefixes never merge
    if expr.startswith("meta") or expr.endswith(("dscp", "vlan id")) or any(c in str(value) for c in "-/"):
        return f"{expr} != {value}"
    return f"{expr} & {_ones(expr)} != {value}"


class NotShared(Exception):
    """A variable's value goes where a set lookup cannot stand (a mask, a
    flag list, a comment): the port keeps chains of its own."""


# A comparison with a variable's value, in a chain shared by many ports:
# "$K . <expr> [!= ]@$S<value>#<recipe>$" (``I``: an interval set, for ranges
# and prefixes). nft_compile turns it into a lookup in a set of the port's
# values keyed by the port ($K); '$' is in no other rule text (comments refuse
# it). The recipe (RECIPES) makes the value from another port's variables.
LOOKUP = "$K . {expr} {negate}@${kind}{value}#{recipe}$"
# (format, its arguments): each a constant ("const", typed value or None) or a
# variable's one value ("var", variable, where from, type for values.parse_typed)
Recipe = Tuple[Callable[..., str], Tuple[Tuple[Any, ...], ...]]
RECIPES: List[Recipe] = []  # by number; as many as distinct rules, whatever the number of ports
_RECIPE_NUMBERS: Dict[Recipe, int] = {}
_RECIPES_LOCK = threading.Lock()  # the learner compiles in two threads


def _recipe_number(recipe: Recipe) -> int:
    number = _RECIPE_NUMBERS.get(recipe)
    if number is None:
        with _RECIPES_LOCK:
            number = _RECIPE_NUMBERS.setdefault(recipe, len(RECIPES))
            if number == len(RECIPES):
                RECIPES.append(recipe)
    return number


def set_kind(value: str) -> str:
    """The set a value is looked up in: I (interval) for a range or a prefix, else S."""
    return "I" if any(c in value for c in "-/") else "S"


# How a comparison writes the values of its attributes (None: one the rule
# lacks); a recipe names them, so they are functions of those values alone.
def _text(value: Any) -> str:
    return str(value)


def _span(low: Any, high: Any) -> str:
    return str(low) if high is None else f"{low}-{high}"


def _hex4(value: int) -> str:
    return f"0x{value:04x}"


def _raw_mac(value: str) -> str:
    return f"0x{_mac_int(value):x}"


def _raw_ipv4(value: str) -> str:
    return f"0x{_ipv4_int(value):x}"


def _raw_int(value: Any) -> str:
    return f"0x{int(value):x}"


@functools.lru_cache(maxsize=1 << 12)  # a port's address is written into several of its rules
def _ipv4_int(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def _mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


_RAW_NUMBER = {_raw_mac: _mac_int, _raw_ipv4: _ipv4_int, _raw_int: int}  # the number each raw format writes


class Attrs:
    """A rule's matches by attribute name, with libvirt's src/dst swap applied."""

    def __init__(self, rule: ResolvedRule, swap: bool, shared: bool = False) -> None:
        self.element = rule.protocol or ""
        self.values: Dict[str, Tuple[Any, bool]] = {}
        for name, value, negate in rule.matches:
            self.values[_swapped(name) if swap else name] = (value, negate)
        self.used: set = set()
        # attributes a variable gave, looked up in a set when the chain is shared: where their values come from
        self.sources = {(_swapped(name) if swap else name): ("var", variable, where, kind)
                        for name, variable, where, kind in rule.sources} if shared else {}

    def compare(self, expr: str, negate: bool, fmt: Callable[..., str], *names: str) -> str:
        """``expr`` against ``fmt`` of the values of ``names``: ``_is``, or a
        lookup (LOOKUP) when a variable gave one of them."""
        values = [self.values[name][0] if name in self.values else None for name in names]
        text = fmt(*values)
        if self.sources.keys().isdisjoint(names):
            return _is(expr, text, negate)
        if not lookup_width(expr):
            raise NotShared(self.element, expr)
        # a default of the tree is the same for every port of a shape: a constant
        sources = tuple(self.sources[name] if name in self.sources and self.sources[name][2] != "default"
                        else ("const", value) for name, value in zip(names, values))
        return LOOKUP.format(expr=expr, negate="!= " if negate else "", kind=set_kind(text), value=text,
                             recipe=_recipe_number((fmt, sources)))

    def fixed(self, *names: str) -> None:
        """``names`` are rendered where no lookup can stand."""
        given = self.sources.keys() & set(names)
        if given:
            raise NotShared(self.element, sorted(given))

    def take(self, name: str) -> Optional[Tuple[Any, bool]]:
        found = self.values.get(name)
        if found is not None:
            self.used.add(name)
        return found

    def check_all_used(self) -> None:
        for name in self.values:
            if name not in self.used:
                raise unsupported(self.element, name)


@functools.lru_cache(maxsize=None)  # attribute names: a few dozen
def _swapped(name: str) -> str:
    for old, new in (("srcport", "dstport"), ("dstport", "srcport"), ("srcip", "dstip"), ("dstip", "srcip"),
                     ("srcmac", "dstmac"), ("dstmac", "srcmac"), ("arpsrc", "arpdst"), ("arpdst", "arpsrc")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _mac(attrs: Attrs, which: str, expr: str) -> List[str]:
    found = attrs.take(f"{which}macaddr")
    mask = attrs.take(f"{which}macmask")
    if found is None:
        return []
    mac, negate = found
    if mask is None:
        return [attrs.compare(expr, negate, _text, f"{which}macaddr")]
    attrs.fixed(f"{which}macaddr", f"{which}macmask")
    masked = f"{_mac_int(mac) & _mac_int(mask[0]):012x}"
    network = ":".join(masked[i:i + 2] for i in range(0, 12, 2))
    return [f"{expr} & {mask[0]} {'!=' if negate else '=='} {network}"]


def _network(addr: str, prefix: Optional[int]) -> str:
    if prefix is None:
        return addr
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def _address(attrs: Attrs, which: str, expr: str) -> List[str]:
    out = []
    found = attrs.take(f"{which}ipaddr")
    attrs.take(f"{which}ipmask")  # compare reads it
    if found is not None:
        out.append(attrs.compare(expr, found[1], _network, f"{which}ipaddr", f"{which}ipmask"))
    low = attrs.take(f"{which}ipfrom")
    attrs.take(f"{which}ipto")  # compare reads it
    if low is not None:
        out.append(attrs.compare(expr, low[1], _span, f"{which}ipfrom", f"{which}ipto"))
    return out


def _range(attrs: Attrs, start: str, end: str, expr: str) -> List[str]:
    low = attrs.take(start)
    attrs.take(end)  # compare reads it
    if low is None:
        return []
    return [attrs.compare(expr, low[1], _span, start, end)]


def _raw(attrs: Attrs, name: str, base: str, field: Tuple[int, int], mask_name: Optional[str] = None) -> List[str]:
    found = attrs.take(name)
    if found is None:
        return []
    value, negate = found
    offset, width = field
    fmt = _raw_mac if width == 48 else _raw_ipv4 if width == 32 and "ip" in name else _raw_int
    mask = attrs.take(mask_name) if mask_name else None
    expr = f"@{base},{offset},{width}"
    if mask is None:
        return [attrs.compare(expr, negate, fmt, name)]
    attrs.fixed(name, mask_name or name)
    number = _RAW_NUMBER[fmt](value)
    bits = _mac_int(mask[0]) if width == 48 else (0xFFFFFFFF << (32 - mask[0])) & 0xFFFFFFFF
    return [f"{expr} & 0x{bits:x} {'!=' if negate else '=='} 0x{number & bits:x}"]


def _nd_types(attrs: Attrs, attribute: str, allowed: Tuple[int, int]) -> Tuple[int, int]:
    """The ICMPv6 types the rule matches, which must lie in ``allowed``;
    negation is refused (the negation of several comparisons is not one)."""
    low, high = attrs.values.get("type"), attrs.values.get("typeend")
    negated = any(attrs.values[name][1] for name in attrs.values if name.startswith("vmguard-nd"))
    if low is None or low[1] or negated or not allowed[0] <= low[0] <= (high or low)[0] <= allowed[1]:
        what = " or ".join(map(str, range(allowed[0], allowed[1] + 1)))
        raise NwfilterError(f"{attrs.element} {attribute} needs type {what}, and no match='no'")
    return low[0], (high or low)[0]


def _nd(attrs: Attrs) -> List[str]:
    """vmguard's neighbour-discovery matches (no nft 1.0.6 keyword reads the
    target or the options, so raw transport-header payload). Where the message
    is too short the load fails and the rule does not match: fail closed."""
    out: List[str] = []
    if any(name.startswith("vmguard-nd") for name in attrs.values):
        attrs.fixed("vmguard-ndtargetaddr", "vmguard-ndtargetmask", "vmguard-ndlladdr", "type", "typeend")
    target, prefix = attrs.take("vmguard-ndtargetaddr"), attrs.take("vmguard-ndtargetmask")
    if target is not None:
        _nd_types(attrs, "vmguard-ndtargetaddr", ND_TARGET_TYPES)
        length = 128 if prefix is None else prefix[0]
        bits = (1 << 128) - (1 << (128 - length))
        number = int(ipaddress.IPv6Address(target[0])) & bits
        expr = f"@th,{ND_TARGET[0]},{ND_TARGET[1]}"
        if length:  # a /0 target is any target
            out.append(f"{expr} 0x{number:x}" if length == 128 else f"{expr} & 0x{bits:x} == 0x{number:x}")
    lladdr = attrs.take("vmguard-ndlladdr")
    if lladdr is not None:
        low, high = _nd_types(attrs, "vmguard-ndlladdr", (135, 136))
        if low != high:
            raise NwfilterError(f"{attrs.element} vmguard-ndlladdr needs one type, 135 or 136")
        # no extension headers and exactly the options named, so no second option can carry another MAC
        if lladdr[0] == "none":
            out += ["ip6 nexthdr 58", f"ip6 length {ND_HEADER_BYTES}"]
        else:
            out += ["ip6 nexthdr 58", f"ip6 length {ND_HEADER_BYTES + 8}",
                    f"@th,{ND_HEADER_BYTES * 8},16 0x{ND_LLADDR_OPTION[low]:04x}",
                    f"@th,{ND_HEADER_BYTES * 8 + 16},48 0x{_mac_int(lladdr[0]):012x}"]
    return out


def _comment(attrs: Attrs) -> List[str]:
    found = attrs.take("comment")
    attrs.fixed("comment")
    return [f'comment "{found[0]}"'] if found else []


def _ports(attrs: Attrs) -> List[str]:
    return _range(attrs, "srcportstart", "srcportend", "th sport") + \
        _range(attrs, "dstportstart", "dstportend", "th dport")


def _stp(attrs: Attrs) -> List[str]:
    out = [f"ether daddr {STP_DESTINATION}"]
    for name, field in STP_FIELDS.items():
        if name.endswith("-address"):
            out += _raw(attrs, name, "ll", field, f"{name}-mask")
            continue
        low = attrs.take(name)
        attrs.take(f"{name}-hi")  # compare reads it
        if low is not None:
            out.append(attrs.compare(f"@ll,{field[0]},{field[1]}", low[1], _span, name, f"{name}-hi"))
    return out


def _arp(attrs: Attrs, ethertype: int) -> List[str]:
    found = attrs.take("gratuitous")
    if found is not None:
        raise unsupported(attrs.element, "gratuitous")
    out = [f"ether type 0x{ethertype:04x}"]
    for name, field in ARP_FIELDS.items():
        if name in attrs.values:  # a rule names one or two of them
            out += _raw(attrs, name, "nh", field, ARP_MASKS.get(name))
    return out


def bridge_matches(rule: ResolvedRule, reverse: bool, shared: bool = False) -> List[str]:
    """Expressions for a layer-2 rule in the bridge family (libvirt's ebtables
    rules); ``shared``: for a chain many ports share (LOOKUP)."""
    if rule.protocol is None:
        return []
    attrs = Attrs(rule, reverse, shared)
    element = rule.protocol
    if element == "stp" and reverse and attrs.values.get("dstmacaddr"):
        raise NwfilterError("stp in direction inout with srcmacaddr set is not supported (as in libvirt)")
    out = _mac(attrs, "src", "ether saddr") + _mac(attrs, "dst", "ether daddr")
    if element == "mac":
        found = attrs.take("protocolid")
        if found is not None:
            out.append(attrs.compare("ether type", found[1], _hex4, "protocolid"))
    elif element == "vlan":
        out.append("ether type 0x8100")
        out += [attrs.compare("vlan id", v[1], _text, "vlanid") for v in [attrs.take("vlanid")] if v]
        out += [attrs.compare("vlan type", v[1], _hex4, "encap-protocol") for v in [attrs.take("encap-protocol")] if v]
    elif element == "stp":
        out += _stp(attrs)
    elif element in ("arp", "rarp"):
        out += _arp(attrs, ETHERTYPE[element])
    elif element in ("ip", "ipv6"):
        family = "ip" if element == "ip" else "ip6"
        out.append(f"ether type {'0x0800' if element == 'ip' else '0x86dd'}")
        out += _address(attrs, "src", f"{family} saddr") + _address(attrs, "dst", f"{family} daddr")
        proto = attrs.take("protocol")
        if proto is not None:
            out.append(attrs.compare("ip protocol" if element == "ip" else "meta l4proto", proto[1], _text, "protocol"))
        out += _ports(attrs)
        out += [attrs.compare("ip dscp", v[1], _text, "dscp") for v in [attrs.take("dscp")] if v]
        out += _range(attrs, "type", "typeend", "icmpv6 type") + _range(attrs, "code", "codeend", "icmpv6 code")
        out += _nd(attrs)
    out += _comment(attrs)
    attrs.check_all_used()
    return out


def ip_matches(rule: ResolvedRule, swap: bool, may_skip_icmp: bool, shared: bool = False) -> Optional[List[str]]:
    """Expressions for a layer-3/4 rule in the inet family (libvirt's
    iptables/ip6tables rules), or None where libvirt leaves this half out."""
    spec = schema.ELEMENTS[rule.protocol or "all"]
    attrs = Attrs(rule, swap, shared)
    family = "ip" if spec.family == "ipv4" else "ip6"
    out = [f"meta nfproto {'ipv4' if family == 'ip' else 'ipv6'}"]
    if spec.ip_protocol is not None:
        out.append(f"meta l4proto {spec.ip_protocol}")
    source_mac = attrs.take("dstmacaddr" if swap else "srcmacaddr")
    if source_mac is not None and not swap:
        out.append(attrs.compare("ether saddr", source_mac[1], _text, "srcmacaddr"))
    out += _address(attrs, "src", f"{family} saddr") + _address(attrs, "dst", f"{family} daddr")
    out += [attrs.compare(f"{family} dscp", v[1], _text, "dscp") for v in [attrs.take("dscp")] if v]
    flags = attrs.take("flags")
    if flags is not None:
        attrs.fixed("flags")
        (mask, wanted), negate = flags
        out.append(f"tcp flags & ({_flag_list(mask)}) {'!=' if negate else '=='} {_flag_list(wanted)}")
    out += _ports(attrs)
    icmp_type, icmp_code = attrs.take("type"), attrs.take("code")
    if icmp_type is not None:
        if may_skip_icmp:
            return None
        proto = "icmp" if family == "ip" else "icmpv6"
        out.append(attrs.compare(f"{proto} type", icmp_type[1], _text, "type"))
        if icmp_code is not None:
            out.append(attrs.compare(f"{proto} code", icmp_code[1], _text, "code"))
    if attrs.take("ipset") or attrs.take("ipsetflags"):
        raise unsupported(spec.name, "ipset")
    attrs.take("state")
    attrs.take("connlimit-above")
    attrs.take("comment")
    attrs.fixed("state", "connlimit-above", "comment")  # the compiler renders them
    attrs.check_all_used()
    if source_mac is not None and swap and len(out) == (2 if spec.ip_protocol is not None else 1):
        return None  # libvirt drops a mirrored rule whose only match was the source MAC
    return out


def _flag_list(flags: frozenset) -> str:
    return "0x0" if not flags else "|".join(sorted(f.lower() for f in flags))


def ct_states(states: frozenset) -> str:
    return ",".join(CT_STATES[s] for s in sorted(states))
