# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Our filter library: the 24 names libvirt ships, with the same meaning,
written here in our own words, and vmguard's own filters (names starting
``vmguard-``, which libvirt's plain names cannot take). A user's filter of the
same name overrides one of these. Kept as code (not data files) because
Ansible ships only Python module_utils to the managed host."""

from __future__ import annotations

from typing import Dict, Optional, Union

from .model import Filter, FilterRef, Match, Rule

BROADCAST = "ff:ff:ff:ff:ff:ff"


def _rule(action: str, direction: str, priority: int = 500,
          element: Optional[str] = None, **attributes: str) -> Rule:
    matches = {name.replace("_", "-"): Match(value) for name, value in attributes.items()}
    return Rule(action, direction, priority, protocol=element, attributes=matches)


def _ref(name: str) -> FilterRef:
    return FilterRef(name)


def _filter(name: str, chain: str = "root", *entries: Union[Rule, FilterRef],
            priority: Optional[int] = None) -> Filter:
    return Filter(name, chain, priority, entries=entries)


def _drop_other(direction: str = "out") -> Rule:
    """The last rule of an anti-spoofing sub-chain: whatever did not return."""
    return _rule("drop", direction, 1000)


def _dhcp_filters(name: str, version: str, trusted: bool) -> Filter:
    """allow-dhcp(v6)[-server]: the VM's requests out, replies in (from any
    server, or only from $DHCPSERVER)."""
    server = {"srcipaddr": "$DHCPSERVER"} if trusted else {}
    if version == "ipv4":
        request = _rule("accept", "out", 100, "ip", srcipaddr="0.0.0.0", dstipaddr="255.255.255.255",
                        protocol="udp", srcportstart="68", dstportstart="67")
        reply = _rule("accept", "in", 100, "ip", **server, protocol="udp", srcportstart="67", dstportstart="68")
    else:
        request = _rule("accept", "out", 100, "ipv6", protocol="udp", srcipaddr="FE80::", srcipmask="10",
                        dstipaddr="FF02::1:2", srcportstart="546", dstportstart="547")
        reply = _rule("accept", "in", 100, "ipv6", **server, protocol="udp", srcportstart="547", dstportstart="546")
    return _filter(name, version, request, reply)


def _announce_rarp(direction: str, **source: str) -> Rule:
    return _rule("accept", direction, 500, "rarp", opcode="Request_Reverse", **source, dstmacaddr=BROADCAST,
                 arpsrcmacaddr="$MAC", arpdstmacaddr="$MAC", arpsrcipaddr="0.0.0.0", arpdstipaddr="0.0.0.0")


_FILTERS = (
    _filter("allow-arp", "arp", _rule("accept", "inout")),
    _filter("allow-ipv4", "ipv4", _rule("accept", "inout")),
    _filter("allow-ipv6", "ipv6", _rule("accept", "inout")),
    _filter("allow-incoming-ipv4", "ipv4", _rule("accept", "in")),
    _filter("allow-incoming-ipv6", "ipv6", _rule("accept", "in")),
    _dhcp_filters("allow-dhcp", "ipv4", trusted=False),
    _dhcp_filters("allow-dhcp-server", "ipv4", trusted=True),
    _dhcp_filters("allow-dhcpv6", "ipv6", trusted=False),
    _dhcp_filters("allow-dhcpv6-server", "ipv6", trusted=True),
    # Frames from the VM must carry its own MAC.
    _filter("no-mac-spoofing", "mac",
            _rule("return", "out", element="mac", srcmacaddr="$MAC"),
            _rule("drop", "out", element="mac"),
            priority=-800),
    # IPv4 from the VM must come from one of its addresses (0.0.0.0 for DHCP).
    _filter("no-ip-spoofing", "ipv4-ip",
            _rule("return", "out", 100, "ip", srcipaddr="0.0.0.0", protocol="udp"),
            _rule("return", "out", 500, "ip", srcipaddr="$IP"),
            _drop_other(),
            priority=-710),
    _filter("no-ipv6-spoofing", "ipv6-ip",
            _rule("return", "out", 100, "ipv6", srcipaddr="FE80::", srcipmask="10", protocol="udp"),
            _rule("return", "out", 500, "ipv6", srcipaddr="$IPV6"),
            _drop_other(),
            priority=-610),
    # ARP from the VM must name its own MAC and IP as sender.
    _filter("no-arp-mac-spoofing", "arp-mac",
            _rule("return", "out", 350, "arp", arpsrcmacaddr="$MAC"),
            _drop_other(),
            priority=-520),
    _filter("no-arp-ip-spoofing", "arp-ip",
            _rule("return", "out", 400, "arp", arpsrcipaddr="$IP"),
            _drop_other(),
            priority=-510),
    _filter("no-arp-spoofing", "root", _ref("no-arp-mac-spoofing"), _ref("no-arp-ip-spoofing")),
    _filter("no-ip-multicast", "ipv4", _rule("drop", "out", element="ip", dstipaddr="224.0.0.0", dstipmask="4")),
    _filter("no-ipv6-multicast", "ipv6", _rule("drop", "out", element="ipv6", dstipaddr="FF00::", dstipmask="8")),
    _filter("no-mac-broadcast", "ipv4", _rule("drop", "out", element="mac", dstmacaddr=BROADCAST)),
    _filter("no-other-l2-traffic", "root", _rule("drop", "inout", 1000)),
    _filter("no-other-rarp-traffic", "rarp", _rule("drop", "inout", 1000)),
    # What qemu sends after a migration so switches learn the VM's new port.
    _filter("qemu-announce-self-rarp", "rarp",
            _announce_rarp("out", srcmacaddr="$MAC"),
            _announce_rarp("in")),
    _filter("qemu-announce-self", "root",
            _rule("accept", "out", element="mac", protocolid="0x835"),
            _ref("qemu-announce-self-rarp"),
            _ref("no-other-rarp-traffic")),
    _filter("clean-traffic", "root",
            _ref("no-mac-spoofing"),
            _ref("no-ip-spoofing"),
            _rule("accept", "out", -650, "mac", protocolid="ipv4"),
            _ref("allow-incoming-ipv4"),
            _ref("no-arp-spoofing"),
            _rule("accept", "inout", -500, "mac", protocolid="arp"),
            _ref("no-other-l2-traffic"),
            _ref("qemu-announce-self")),
    # As clean-traffic, but the VM may talk only to and from $GATEWAY_MAC.
    _filter("clean-traffic-gateway", "root",
            _ref("no-mac-spoofing"),
            _ref("no-ip-spoofing"),
            _ref("no-arp-spoofing"),
            _rule("accept", "inout", -500, "mac", protocolid="arp"),
            _rule("accept", "in", element="mac", srcmacaddr="$GATEWAY_MAC"),
            _rule("accept", "out", element="mac", dstmacaddr="$GATEWAY_MAC"),
            _ref("no-other-l2-traffic"),
            _ref("qemu-announce-self")),
)

LIBVIRT_FILTERS: Dict[str, Filter] = {flt.name: flt for flt in _FILTERS}

# ---- vmguard's own: IPv6 with neighbour discovery guarded (docs/dual-stack.md) ----
# ICMPv6 types (RFC 4861, RFC 3810)
MLD_REPORT, MLD_DONE, ROUTER_ADVERT, NEIGHBOR_SOLICIT, NEIGHBOR_ADVERT, REDIRECT, MLD2_REPORT = \
    131, 132, 134, 135, 136, 137, 143
OWN_ADDRESSES = ("$IPV6", "$IPV6_LINKLOCAL")


def _icmp6(action: str, direction: str, priority: int, first: int, last: Optional[int] = None,
           **attributes: str) -> Rule:
    if last is not None:
        attributes["typeend"] = str(last)
    return _rule(action, direction, priority, "ipv6", protocol="icmpv6", type=str(first), **attributes)


_VMGUARD_FILTERS = (
    # From the VM: no RA, redirect or DHCPv6 server message; NS and NA only
    # about its own addresses and MAC. Frames that pass return to the root
    # chain, where ipv6-vmg-src checks their source.
    _filter("vmguard-ipv6-nd-guard", "ipv6-vmg-nd",
            _rule("drop", "out", 100, "ipv6", protocol="udp", srcportstart="547"),
            Rule("return", "out", 110, protocol="ipv6", attributes={"protocol": Match("icmpv6", negate=True)}),
            _icmp6("drop", "out", 120, ROUTER_ADVERT),
            _icmp6("drop", "out", 120, REDIRECT),
            _icmp6("return", "out", 130, 0, ROUTER_ADVERT),
            _icmp6("return", "out", 130, REDIRECT + 1, 255),
            # duplicate address detection: from ::, for an address of its own
            *(_icmp6("return", "out", 200, NEIGHBOR_SOLICIT, srcipaddr="::", vmguard_ndtargetaddr=own)
              for own in OWN_ADDRESSES),
            _icmp6("drop", "out", 210, NEIGHBOR_SOLICIT, srcipaddr="::"),
            *(_icmp6("return", "out", 220, NEIGHBOR_SOLICIT, vmguard_ndlladdr=lladdr) for lladdr in ("$MAC[0]", "none")),
            *(_icmp6("return", "out", 230, NEIGHBOR_ADVERT, vmguard_ndtargetaddr=own, vmguard_ndlladdr=lladdr)
              for own in OWN_ADDRESSES for lladdr in ("$MAC[0]", "none")),
            _drop_other(),
            priority=-620),
    # IPv6 from the VM comes from one of its addresses, or from :: for DAD and MLD.
    _filter("vmguard-no-ipv6-spoofing", "ipv6-vmg-src",
            *(_rule("return", "out", 100, "ipv6", srcipaddr=own) for own in OWN_ADDRESSES),
            _icmp6("return", "out", 110, NEIGHBOR_SOLICIT, srcipaddr="::"),
            _icmp6("return", "out", 110, MLD_REPORT, MLD_DONE, srcipaddr="::"),
            _icmp6("return", "out", 110, MLD2_REPORT, srcipaddr="::"),
            _drop_other(),
            priority=-610),
    # IPv6 to the VM: to its addresses, all nodes and solicited-node groups.
    _filter("vmguard-ipv6-incoming", "ipv6-vmg-dst",
            *(_rule("return", "in", 100, "ipv6", dstipaddr=own) for own in OWN_ADDRESSES),
            _rule("return", "in", 100, "ipv6", dstipaddr="ff02::1"),
            _rule("return", "in", 100, "ipv6", dstipaddr="ff02::1:ff00:0", dstipmask="104"),
            _drop_other("in"),
            priority=-610),
    _filter("vmguard-clean-traffic-dualstack", "root",
            _ref("clean-traffic"),
            _ref("vmguard-ipv6-nd-guard"),
            _ref("vmguard-no-ipv6-spoofing"),
            _ref("vmguard-ipv6-incoming"),
            _rule("accept", "inout", -590, "mac", protocolid="ipv6")),
    # RAs to the VM only from the routers in $RA_SERVER (their link-local addresses).
    _filter("vmguard-ipv6-ra-server", "ipv6-vmg-dst",
            _icmp6("return", "in", 90, ROUTER_ADVERT, srcipaddr="$RA_SERVER"),
            _icmp6("drop", "in", 95, ROUTER_ADVERT),
            priority=-610),
    _filter("vmguard-clean-traffic-dualstack-ra-server", "root",
            _ref("vmguard-clean-traffic-dualstack"),
            _ref("vmguard-ipv6-ra-server")),
)

BUILTIN_FILTERS: Dict[str, Filter] = {**LIBVIRT_FILTERS, **{flt.name: flt for flt in _VMGUARD_FILTERS}}
