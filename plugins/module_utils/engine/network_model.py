# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Virtual networks (libvirt's ``<network>``, the parts a firewall needs): a
bridge, how its guests reach the outside (``forward`` mode and device), the
host's addresses on the bridge and the NAT options. Every value is checked
when the object is made, and ``check_networks`` checks a host's set of them."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .errors import NwfilterError
from .model import _shown, check_ifname

MODES = ("nat", "route", "open", "isolated")
# libvirt's modes for networks whose guests sit on a host device, not on a bridge of ours
_NOT_OURS = ("bridge", "private", "vepa", "passthrough", "hostdev")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

Interface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
Range = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def check_network_name(name: object) -> str:
    # the name becomes part of nft chain names: letters, digits and . _ - only
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise NwfilterError(f"network name {_shown(str(name))} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def parse_interface(address: str, prefix: Optional[str], netmask: Optional[str], where: str) -> Interface:
    """The host's address on the bridge with its prefix (or IPv4 netmask): it
    must be a host address of that network, not the network or its broadcast."""
    if prefix is not None and netmask is not None:
        raise NwfilterError("give prefix or netmask, not both", where)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise NwfilterError(f"{_shown(str(address))} is not an IP address", where) from None
    if netmask is not None:
        if ip.version != 4:
            raise NwfilterError("netmask is for IPv4; give an IPv6 prefix", where)
        try:
            bits = ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
        except ValueError:
            raise NwfilterError(f"netmask {_shown(netmask)} is not a contiguous mask", where) from None
    elif prefix is None:
        raise NwfilterError(f"{ip} needs a prefix", where)
    else:
        limit = ip.max_prefixlen
        if not str(prefix).isdigit() or not 1 <= int(prefix) <= limit:
            raise NwfilterError(f"prefix {_shown(str(prefix))} must be a whole number 1-{limit}", where)
        bits = int(prefix)
    interface = ipaddress.ip_interface(f"{ip}/{bits}")
    net = interface.network
    if net.num_addresses > 2 and ip in (net.network_address, getattr(net, "broadcast_address", None)):
        raise NwfilterError(f"{interface} is not a host address of {net} (give the host's address on the bridge)",
                            where)
    return interface


@dataclass(frozen=True)
class Nat:
    """NAT options: source addresses (IPv4 start-end) and ports for
    translated tcp/udp (libvirt's default 1024-65535), and NAT of IPv6."""

    addresses: Optional[Tuple[str, str]] = None
    ports: Tuple[int, int] = (1024, 65535)
    ipv6: bool = False

    def __post_init__(self) -> None:
        if self.addresses is not None:
            start, end = (_nat_address(a) for a in self.addresses)
            if start > end:
                raise NwfilterError(f"nat address range {start}-{end} is reversed")
            object.__setattr__(self, "addresses", (str(start), str(end)))
        low, high = self.ports
        for port in self.ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise NwfilterError(f"nat port {_shown(str(port))} must be a whole number 1-65535")
        if low > high:
            raise NwfilterError(f"nat port range {low}-{high} is reversed")


def _nat_address(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise NwfilterError(f"nat address {_shown(str(text))} is not an IPv4 address") from None


@dataclass(frozen=True)
class Network:
    name: str
    bridge: str
    mode: str = "isolated"
    dev: Optional[str] = None
    ipv4: Tuple[ipaddress.IPv4Interface, ...] = ()
    ipv6: Tuple[ipaddress.IPv6Interface, ...] = ()
    nat: Optional[Nat] = None

    def __post_init__(self) -> None:
        check_network_name(self.name)
        if self.nat == Nat():
            object.__setattr__(self, "nat", None)  # libvirt's defaults: one canonical form
        where = f"network {self.name!r}"
        try:
            self._check()
        except NwfilterError as exc:
            raise exc.within(where) from None

    def _check(self) -> None:
        check_ifname(self.bridge, "bridge")
        if self.mode in _NOT_OURS:
            raise NwfilterError(f"forward mode {self.mode!r} puts guests on a host device, not on a bridge; "
                                f"supported modes: {', '.join(MODES)}")
        if self.mode not in MODES:
            raise NwfilterError(f"unknown forward mode {_shown(str(self.mode))} (one of {', '.join(MODES)})")
        if self.dev is not None:
            check_ifname(self.dev, "forward dev")
            if self.dev == self.bridge:
                raise NwfilterError(f"forward dev {self.dev!r} is the network's own bridge")
            if self.mode == "isolated":
                raise NwfilterError("an isolated network has no forward dev")
        if self.nat is not None and self.mode != "nat":
            raise NwfilterError(f"nat options need forward mode nat, not {self.mode}")
        for version, interfaces in ((4, self.ipv4), (6, self.ipv6)):
            for interface in interfaces:
                if interface.version != version:
                    raise NwfilterError(f"{interface} is not an IPv{version} address")
        overlap = _overlap([(net, self.name) for net in self.ranges()])
        if overlap:
            raise NwfilterError(overlap)
        if self.nat is not None and self.nat.addresses is not None:
            start, end = (ipaddress.IPv4Address(a) for a in self.nat.addresses)
            for net in self.ranges():
                if net.version == 4 and start <= net.broadcast_address and net.network_address <= end:
                    raise NwfilterError(f"nat address range {start}-{end} overlaps the network's own {net}")

    def ranges(self) -> Tuple[Range, ...]:
        """The guests' networks (the host's addresses with their prefixes)."""
        return tuple(interface.network for interface in self.ipv4 + self.ipv6)

    @property
    def nat_options(self) -> Nat:
        return self.nat or Nat()


def _overlap(ranges: Sequence[Tuple[Range, str]]) -> Optional[str]:
    """Two ranges of one family that overlap, as a message naming them and their networks."""
    for index, (net, name) in enumerate(ranges):
        for other, other_name in ranges[:index]:
            if net.version == other.version and net.overlaps(other):
                whose = "" if name == other_name else f"networks {other_name!r} and {name!r}: "
                return f"{whose}{other} and {net} overlap"
    return None


def check_networks(networks: Iterable[Network]) -> None:
    """What must hold between a host's networks: one bridge each, no range in two."""
    bridges: Dict[str, str] = {}
    ranges: List[Tuple[Range, str]] = []
    for network in sorted(networks, key=lambda n: n.name):
        if network.bridge in bridges:
            raise NwfilterError(f"networks {bridges[network.bridge]!r} and {network.name!r} "
                                f"use the same bridge {network.bridge!r}")
        bridges[network.bridge] = network.name
        ranges += [(net, network.name) for net in network.ranges()]
    overlap = _overlap(ranges)
    if overlap:
        raise NwfilterError(overlap)
