# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nftables compiler for virtual networks: libvirt's network firewall
(its FWX/FWI/FWO forward chains, the host's DNS/DHCP rules and the NAT rules)
in one table of our own, ``table inet vmguard-net``, apart from the per-port
tables (docs/networks.md).

One ``inet`` table holds both families and both kinds of chain (filter and
nat), so a network is one unit in one transaction. Bridges and forward devices
are matched by name only (``iifname``/``oifname`` and maps keyed by name), so
neither has to exist when the rules are applied and re-creating either keeps
the rules in force. Each network has its own chains ``n/<name>/<part>``,
reached through verdict maps:

- forward: ``oifname vmap @into`` (to a network's bridge: libvirt's FWX and
  FWI) then ``iifname vmap @outof`` (from it: FWO), libvirt's order;
- input ``iifname vmap @host_in`` and output ``oifname vmap @host_out``
  (DNS and DHCP between guests and the host);
- nat postrouting: ``ip saddr vmap @nat4`` and ``ip6 saddr vmap @nat6``
  (interval maps on the networks' ranges, which never overlap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .network_model import Network, Range

NET_TABLE = "vmguard-net"
_MAPS = (("into", "ifname : verdict;"), ("outof", "ifname : verdict;"), ("host_in", "ifname : verdict;"),
         ("host_out", "ifname : verdict;"), ("nat4", "ipv4_addr : verdict; flags interval;"),
         ("nat6", "ipv6_addr : verdict; flags interval;"))
BASE_CHAINS = (
    ("forward", "type filter hook forward priority 0; policy accept;", ("oifname vmap @into", "iifname vmap @outof")),
    ("input", "type filter hook input priority 0; policy accept;", ("iifname vmap @host_in",)),
    ("output", "type filter hook output priority 0; policy accept;", ("oifname vmap @host_out",)),
    ("postrouting", "type nat hook postrouting priority srcnat; policy accept;",
     ("ip saddr vmap @nat4", "ip6 saddr vmap @nat6")),
)
MAP_TYPES = dict(_MAPS)
# the destinations libvirt never translates for: local multicast and broadcast
_NO_NAT_V4 = ("224.0.0.0/24", "255.255.255.255")


@dataclass(frozen=True)
class NetworkProgram:
    """One network's chains (name, rules) and map elements (map, key as nft syntax, chain)."""

    name: str
    chains: Tuple[Tuple[str, Tuple[str, ...]], ...]
    elements: Tuple[Tuple[str, str, str], ...]

    @property
    def text(self) -> str:
        """The network's rules as nft statements, for people (network_info)."""
        return "\n".join([f"{name}: {rule}" for name, rules in self.chains for rule in rules] +
                         [f"{vmap} {key} -> {chain}" for vmap, key, chain in self.elements])


def chain_of(network: str, part: str) -> str:
    """``n/<network>/<part>``: network names have no ``/`` and ports' chains start with ``p/``."""
    return f"n/{network}/{part}"


def _ip(net: Range) -> str:
    return "ip" if net.version == 4 else "ip6"


def _translate(network: Network, net: Range, l4: bool) -> str:
    """libvirt's NAT target: masquerade, or SNAT to the given addresses (IPv4
    only); tcp and udp (``l4``) get the port range (default 1024-65535)."""
    nat = network.nat_options
    ports = f":{nat.ports[0]}-{nat.ports[1]}" if l4 else ""
    if nat.addresses is None or net.version == 6:
        return f"masquerade to {ports}" if l4 else "masquerade"
    start, end = nat.addresses
    return f"snat ip to {start if start == end else f'{start}-{end}'}{ports}"


def _natted(network: Network, net: Range) -> bool:
    """libvirt NATs a nat network's IPv4 ranges, and its IPv6 ones only with
    ``<nat ipv6='yes'>``; other IPv6 ranges of a nat network are routed."""
    return network.mode == "nat" and (net.version == 4 or network.nat_options.ipv6)


def _nat_rules(network: Network, out: str) -> List[str]:
    rules = []
    for net in network.ranges():
        if not _natted(network, net):
            continue
        ip = _ip(net)
        if ip == "ip":
            # ... and (libvirt) for IPv4 not towards local multicast and broadcast
            rules += [f"ip saddr {net} ip daddr {dest} {out}return" for dest in _NO_NAT_V4]
        to = [f"meta l4proto {p} {_translate(network, net, True)}" for p in ("tcp", "udp")]
        to.append(_translate(network, net, False))
        rules += [f"{ip} saddr {net} {ip} daddr != {net} {out}{target}" for target in to]
    return rules


def _host_rules(network: Network) -> Tuple[List[str], List[str]]:
    """libvirt's rules for DNS and DHCP between guests and the host (its
    dnsmasq): accepted from the bridge to the host, and DHCP replies back."""
    into: List[str] = []
    out: List[str] = []
    if network.ipv4:
        into.append("meta nfproto ipv4 meta l4proto { tcp, udp } th dport { 53, 67 } accept")
        out.append("meta nfproto ipv4 meta l4proto { tcp, udp } th dport 68 accept")
    if network.ipv6:
        into.append("meta nfproto ipv6 meta l4proto { tcp, udp } th dport 53 accept")
        into.append("meta nfproto ipv6 udp dport 547 accept")
        out.append("meta nfproto ipv6 udp dport 546 accept")
    return into, out


def compile_network(network: Network) -> NetworkProgram:
    """libvirt's firewall for one network; an ``open`` network has none."""
    if network.mode == "open":
        return NetworkProgram(network.name, (), ())
    bridge = f'"{network.bridge}"'
    dev_in = f'iifname "{network.dev}" ' if network.dev else ""
    dev_out = f'oifname "{network.dev}" ' if network.dev else ""
    into = [f"iifname {bridge} accept"]  # FWX: guests of one network reach each other
    outof: List[str] = []
    if network.mode in ("nat", "route"):
        for net in network.ranges():
            ip = _ip(net)
            state = "ct state established,related " if _natted(network, net) else ""
            into.append(f"{dev_in}{ip} daddr {net} {state}accept")  # FWI
            outof.append(f"{ip} saddr {net} {dev_out}accept")  # FWO
    # anything else to or from the bridge is refused, both families (docs/differences-from-libvirt.md)
    into.append("reject")
    outof.append("reject")
    host_in, host_out = _host_rules(network)
    parts: Dict[str, List[str]] = {"i": into, "o": outof, "hi": host_in, "ho": host_out,
                                   "nat": _nat_rules(network, dev_out)}
    chains = tuple((chain_of(network.name, part), tuple(rules)) for part, rules in parts.items() if rules)
    elements = [("into", bridge, chain_of(network.name, "i")), ("outof", bridge, chain_of(network.name, "o"))]
    elements += [(vmap, bridge, chain_of(network.name, part))
                 for vmap, part in (("host_in", "hi"), ("host_out", "ho")) if parts[part]]
    if parts["nat"]:
        elements += [(f"nat{net.version}", str(net), chain_of(network.name, "nat"))
                     for net in network.ranges() if _natted(network, net)]
    return NetworkProgram(network.name, chains, tuple(elements))


def table_script(programs: Sequence[NetworkProgram]) -> str:
    """One nft script that makes our network table exactly these programs:
    the old table goes and the new one comes in the same kernel transaction
    (a handful of chains per network, so rebuilding all is cheap; the per-port
    tables are never named). Without rules to hold, the table is removed."""
    lines = [f"add table inet {NET_TABLE}", f"delete table inet {NET_TABLE}"]
    if not any(program.chains for program in programs):
        return "\n".join(lines) + "\n"
    lines.append(f"add table inet {NET_TABLE}")
    for program in sorted(programs, key=lambda p: p.name):
        for name, rules in program.chains:
            lines.append(f"add chain inet {NET_TABLE} {name}")
            lines += [f"add rule inet {NET_TABLE} {name} {rule}" for rule in rules]
    # elements are declared with their map: added to an interval map created
    # earlier in the same transaction, nft 1.0.6 refuses them
    for vmap, key_type in _MAPS:
        found = sorted(f"{key} : jump {chain}" for program in programs for m, key, chain in program.elements if m == vmap)
        elements = f" elements = {{ {', '.join(found)} }};" if found else ""
        lines.append(f"add map inet {NET_TABLE} {vmap} {{ type {key_type}{elements} }}")
    for name, spec, rules in BASE_CHAINS:
        lines.append(f"add chain inet {NET_TABLE} {name} {{ {spec} }}")
        lines += [f"add rule inet {NET_TABLE} {name} {rule}" for rule in rules]
    return "\n".join(lines) + "\n"


def expected_table(programs: Sequence[NetworkProgram]) -> Optional[Dict[str, object]]:
    """What our network table should hold (for checks against the kernel):
    chain name (the networks' and the base chains) to rules and map name to
    elements; None when there should be no table."""
    if not any(program.chains for program in programs):
        return None
    chains = {name: list(rules) for p in programs for name, rules in p.chains}
    chains.update((name, list(rules)) for name, _spec, rules in BASE_CHAINS)
    return {"chains": chains,
            "elements": {vmap: sorted(f"{key} : jump {chain}" for p in programs for m, key, chain in p.elements
                                      if m == vmap) for vmap, _type in _MAPS}}
