# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the filter language allows: protocol elements, their attributes and
the type of each attribute, chains, actions and directions.

The tables here are the single source of truth for the parser, the YAML form,
the resolver's type checks and the compilers' coverage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

ACTIONS = ("drop", "accept", "reject", "return", "continue")
DIRECTIONS = ("in", "out", "inout")
DEFAULT_RULE_PRIORITY = 500
PRIORITY_RANGE = (-1000, 1000)

# Filter chains: "root" or a name that starts with one of these prefixes.
CHAIN_DEFAULT_PRIORITY: Dict[str, int] = {
    "root": 0,
    "stp": -810,
    "mac": -800,
    "vlan": -750,
    "ipv4": -700,
    "ipv6": -600,
    "arp": -500,
    "rarp": -400,
}
# Which frames a sub-chain sees (the jump from the root chain matches these).
CHAIN_ETHERTYPE: Dict[str, Optional[int]] = {
    "mac": None,
    "stp": None,  # matched on the STP destination MAC instead
    "vlan": 0x8100,
    "ipv4": 0x0800,
    "ipv6": 0x86DD,
    "arp": 0x0806,
    "rarp": 0x8035,
}
_CHAIN_RE = re.compile(r"(root|(stp|mac|vlan|ipv4|ipv6|arp|rarp)[a-zA-Z0-9_.:-]*)")
CHAIN_MAX_LEN = 12

RESERVED_VARIABLES = ("MAC", "IP", "IPV6", "DHCPSERVER", "CTRL_IP_LEARNING", "IPV6_LINKLOCAL")
IP_LEARNING_MODES = ("any", "dhcp", "none")

_MAC = {"srcmacaddr": "mac", "srcmacmask": "macmask", "dstmacaddr": "mac", "dstmacmask": "macmask"}
_COMMENT = {"comment": "comment"}
_PORTS = {"srcportstart": "port", "srcportend": "port", "dstportstart": "port", "dstportend": "port"}
_STP = {
    "type": "uint8", "flags": "uint8",
    "root-priority": "uint16", "root-priority-hi": "uint16",
    "root-address": "mac", "root-address-mask": "macmask",
    "root-cost": "uint32", "root-cost-hi": "uint32",
    "sender-priority": "uint16", "sender-priority-hi": "uint16",
    "sender-address": "mac", "sender-address-mask": "macmask",
    "port": "uint16", "port-hi": "uint16",
    "age": "uint16", "age-hi": "uint16",
    "max-age": "uint16", "max-age-hi": "uint16",
    "hello-time": "uint16", "hello-time-hi": "uint16",
    "forward-delay": "uint16", "forward-delay-hi": "uint16",
}
_ARP = {
    "hwtype": "uint16", "protocoltype": "uint16", "opcode": "arpopcode",
    "arpsrcmacaddr": "mac", "arpdstmacaddr": "mac",
    "arpsrcipaddr": "ipv4", "arpsrcipmask": "ipv4mask",
    "arpdstipaddr": "ipv4", "arpdstipmask": "ipv4mask",
    "gratuitous": "boolean",
}


# vmguard's own attributes, where libvirt's language cannot say it (neighbour
# discovery): the prefix keeps them apart from any libvirt may add, and a
# filter that uses them cannot be fed back to libvirt.
_ND = {"vmguard-ndtargetaddr": "ipv6", "vmguard-ndtargetmask": "ipv6mask", "vmguard-ndlladdr": "ndlladdr"}


def _addresses(addr: str, mask: str) -> Dict[str, str]:
    return {"srcipaddr": addr, "srcipmask": mask, "dstipaddr": addr, "dstipmask": mask}


def _l4_common(addr: str, mask: str) -> Dict[str, str]:
    return {
        "srcmacaddr": "mac",
        **_addresses(addr, mask),
        "srcipfrom": addr, "srcipto": addr, "dstipfrom": addr, "dstipto": addr,
        "dscp": "dscp",
        "connlimit-above": "uint32",
        "state": "state",
        "ipset": "ipsetname", "ipsetflags": "ipsetflags",
        **_COMMENT,
    }


@dataclass(frozen=True)
class ElementSpec:
    """One protocol element: ``layer`` is "l2" (bridge level) or "l3" (IP level)."""

    name: str
    layer: str
    attributes: Mapping[str, str]
    family: Optional[str] = None  # "ipv4" or "ipv6" for l3 elements
    ip_protocol: Optional[int] = None  # fixed L4 protocol of an l3 element

    def attribute_type(self, attribute: str) -> Optional[str]:
        return self.attributes.get(attribute)


def _l4(name: str, family: str, proto: Optional[int], extra: Mapping[str, str]) -> ElementSpec:
    addr, mask = ("ipv4", "ipv4mask") if family == "ipv4" else ("ipv6", "ipv6mask")
    return ElementSpec(name, "l3", {**_l4_common(addr, mask), **extra}, family, proto)


_ELEMENT_LIST: Tuple[ElementSpec, ...] = (
    ElementSpec("mac", "l2", {**_MAC, "protocolid": "ethertype", **_COMMENT}),
    ElementSpec("vlan", "l2", {**_MAC, "vlanid": "vlanid", "encap-protocol": "ethertype", **_COMMENT}),
    ElementSpec("stp", "l2", {"srcmacaddr": "mac", "srcmacmask": "macmask", **_STP, **_COMMENT}),
    ElementSpec("arp", "l2", {**_MAC, **_ARP, **_COMMENT}),
    ElementSpec("rarp", "l2", {**_MAC, **_ARP, **_COMMENT}),
    ElementSpec("ip", "l2", {
        **_MAC, **_addresses("ipv4", "ipv4mask"), "protocol": "ipproto", **_PORTS, "dscp": "dscp", **_COMMENT,
    }),
    ElementSpec("ipv6", "l2", {
        **_MAC, **_addresses("ipv6", "ipv6mask"), "protocol": "ipproto", **_PORTS,
        "type": "uint8", "typeend": "uint8", "code": "uint8", "codeend": "uint8", **_ND, **_COMMENT,
    }),
    _l4("tcp", "ipv4", 6, {**_PORTS, "flags": "tcpflags"}),
    _l4("udp", "ipv4", 17, _PORTS),
    _l4("sctp", "ipv4", 132, _PORTS),
    _l4("udplite", "ipv4", 136, {}),
    _l4("esp", "ipv4", 50, {}),
    _l4("ah", "ipv4", 51, {}),
    _l4("icmp", "ipv4", 1, {"type": "uint8", "code": "uint8"}),
    _l4("igmp", "ipv4", 2, {}),
    _l4("all", "ipv4", None, {}),
    _l4("tcp-ipv6", "ipv6", 6, {**_PORTS, "flags": "tcpflags"}),
    _l4("udp-ipv6", "ipv6", 17, _PORTS),
    _l4("sctp-ipv6", "ipv6", 132, _PORTS),
    _l4("udplite-ipv6", "ipv6", 136, {}),
    _l4("esp-ipv6", "ipv6", 50, {}),
    _l4("ah-ipv6", "ipv6", 51, {}),
    _l4("icmpv6", "ipv6", 58, {"type": "uint8", "code": "uint8"}),
    _l4("all-ipv6", "ipv6", None, {}),
)
ELEMENTS: Dict[str, ElementSpec] = {spec.name: spec for spec in _ELEMENT_LIST}

# Port attributes in the ip/ipv6 elements need one of these protocols.
PORT_PROTOCOLS = (6, 17, 33, 132)  # tcp, udp, dccp, sctp


def chain_prefix(chain: str) -> Optional[str]:
    """The protocol prefix of a valid chain name ("root" for root), else None."""
    if len(chain) > CHAIN_MAX_LEN:
        return None
    match = _CHAIN_RE.fullmatch(chain)
    if not match:
        return None
    return match.group(2) or "root"


def default_chain_priority(chain: str) -> int:
    prefix = chain_prefix(chain)
    return CHAIN_DEFAULT_PRIORITY[prefix] if prefix else 0
