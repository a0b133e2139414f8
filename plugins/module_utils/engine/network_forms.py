# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Networks in libvirt's ``<network>`` XML and in the YAML (dict) form, both
ways. From libvirt's XML only what the firewall needs is read (name, forward
mode and dev, nat, bridge name, ip addresses); everything else (uuid, mac,
dhcp, dns, domain, routes, ...) is ignored, as docs/networks.md says, and the
canonical XML written back holds only what was read."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Dict, Mapping, Optional, Tuple

from .dict_form import _flag, _known, _mapping, _scalar
from .errors import NwfilterError
from .model import _shown
from .network_model import Nat, Network, check_network_name, parse_interface
from .xml_form import _boolean, _element, _integer, _parse, _single, _text

_DICT_KEYS = ("name", "bridge", "forward", "ipv4", "ipv6", "nat")


# ---- libvirt XML ------------------------------------------------------------

def _attr(elem: Optional[ET.Element], name: str) -> Optional[str]:
    return None if elem is None else elem.get(name)


def _range(elem: Optional[ET.Element], what: str, where: str) -> Optional[Tuple[str, str]]:
    if elem is None:
        return None
    start = elem.get("start")
    if start is None:
        raise NwfilterError(f"<{what}> needs a start", where)
    return start, elem.get("end", start)


def _nat_from_xml(elem: Optional[ET.Element], where: str) -> Optional[Nat]:
    if elem is None:
        return None
    addresses = _range(_single(elem, "address", where), "address", where)
    ports = _range(_single(elem, "port", where), "port", where)
    return Nat(addresses, tuple(_integer(p, "nat port", where) for p in ports) if ports else (1024, 65535),
               _boolean(elem.get("ipv6", "no"), "nat ipv6", where))


def network_from_xml(text: str) -> Network:
    root = _parse(text, "network")
    if root.tag != "network":
        raise NwfilterError(f"expected <network>, found <{root.tag}>", "network")
    name_elem = _single(root, "name", "network")
    name = check_network_name((name_elem.text or "").strip() if name_elem is not None else "")
    where = f"network {name!r}"
    try:
        forward = _single(root, "forward", where)
        bridge = _attr(_single(root, "bridge", where), "name")
        if bridge is None:
            raise NwfilterError("needs <bridge name='...'/> (the bridge is matched by name)")
        # libvirt: a <forward> without mode is nat, no <forward> at all is an isolated network
        mode = "isolated" if forward is None else forward.get("mode", "nat")
        nat = _nat_from_xml(_single(forward, "nat", where), where) if forward is not None else None
        ipv4, ipv6 = [], []
        for index, ip in enumerate(root.findall("ip")):
            at = f"ip[{index}]"
            family = ip.get("family", "ipv4")
            if family not in ("ipv4", "ipv6"):
                raise NwfilterError(f"family {_shown(family)} must be ipv4 or ipv6", at)
            interface = parse_interface(ip.get("address", ""), ip.get("prefix"), ip.get("netmask"), at)
            if f"ipv{interface.version}" != family:
                raise NwfilterError(f"{interface.ip} is not an {family} address", at)
            (ipv4 if interface.version == 4 else ipv6).append(interface)
    except NwfilterError as exc:
        raise exc.within(where) from None
    return Network(name, bridge, mode, _attr(forward, "dev"), tuple(ipv4), tuple(ipv6), nat)


def network_to_xml(network: Network) -> str:
    children = [_element("name", (), text=network.name)]
    if network.mode != "isolated":
        attrs = [("mode", network.mode)] + ([("dev", network.dev)] if network.dev else [])
        nat = []
        if network.nat is not None:
            options = network.nat
            parts = []
            if options.addresses:
                parts.append(_element("address", (("start", options.addresses[0]), ("end", options.addresses[1]))))
            if options.ports != Nat().ports:
                parts.append(_element("port", (("start", str(options.ports[0])), ("end", str(options.ports[1])))))
            nat.append(_element("nat", [("ipv6", "yes")] if options.ipv6 else [], parts))
        children.append(_element("forward", attrs, nat))
    children.append(_element("bridge", (("name", network.bridge),)))
    for interface in network.ipv4 + network.ipv6:
        family = [("family", "ipv6")] if interface.version == 6 else []
        children.append(_element("ip", family + [("address", str(interface.ip)),
                                                 ("prefix", str(interface.network.prefixlen))]))
    return _text(_element("network", (), children))


# ---- YAML (dict) form ---------------------------------------------------------

def _interfaces(value: Any, key: str, where: str) -> list:
    """``["192.0.2.1/24", {address: ..., prefix: 24}, ...]`` (one item may stand alone)."""
    found = []
    items = value if isinstance(value, list) else [value]
    for index, item in enumerate(items):
        at = f"{where}.{key}[{index}]"
        if isinstance(item, str):
            address, _slash, prefix = item.partition("/")
            found.append(parse_interface(address, prefix or None, None, at))
            continue
        item = _mapping(item, at)
        _known(item, ("address", "prefix", "netmask"), at)
        prefix = item.get("prefix")
        netmask = item.get("netmask")
        found.append(parse_interface(_scalar(item.get("address", ""), at), None if prefix is None else _scalar(prefix, at),
                                     None if netmask is None else _scalar(netmask, at), at))
    versions = {interface.version for interface in found}
    if versions - {int(key[-1])}:
        raise NwfilterError(f"{key} takes IPv{key[-1]} addresses only", f"{where}.{key}")
    return found


def _span(value: Any, what: str, where: str) -> Tuple[str, str]:
    """``start-end``, one value, or ``{start, end}``."""
    if isinstance(value, Mapping):
        _known(value, ("start", "end"), where)
        start = _scalar(value.get("start", ""), where)
        return start, _scalar(value.get("end", start), where)
    text = _scalar(value, where)
    start, _dash, end = text.partition("-")
    if not start:
        raise NwfilterError(f"{what} {_shown(text)} must be start-end", where)
    return start, end or start


def _port(text: str, where: str) -> int:
    if not text.isdigit():
        raise NwfilterError(f"nat port {_shown(text)} must be a whole number 1-65535", where)
    return int(text)


def network_from_dict(data: Any) -> Network:
    data = _mapping(data, "network")
    name = check_network_name(data.get("name"))
    where = f"network {name!r}"
    _known(data, _DICT_KEYS, where)
    forward = _mapping(data.get("forward") or {}, f"{where}.forward")
    _known(forward, ("mode", "dev"), f"{where}.forward")
    nat: Optional[Nat] = None
    if data.get("nat") is not None:
        options = _mapping(data["nat"], f"{where}.nat")
        _known(options, ("addresses", "ports", "ipv6"), f"{where}.nat")
        try:
            addresses = _span(options["addresses"], "nat addresses", f"{where}.nat.addresses") \
                if options.get("addresses") is not None else None
            ports = _span(options["ports"], "nat ports", f"{where}.nat.ports") \
                if options.get("ports") is not None else ("1024", "65535")
            nat = Nat(addresses, (_port(ports[0], f"{where}.nat.ports"), _port(ports[1], f"{where}.nat.ports")),
                      _flag(options.get("ipv6", False), f"{where}.nat.ipv6"))
        except NwfilterError as exc:
            raise exc if str(exc).startswith(where) else exc.within(where) from None
    bridge = data.get("bridge")
    if bridge is None:
        raise NwfilterError("needs a bridge", where)
    dev = forward.get("dev")
    mode = _scalar(forward.get("mode", "isolated"), f"{where}.forward.mode")
    return Network(name, _scalar(bridge, f"{where}.bridge"), mode,
                   None if dev is None else _scalar(dev, f"{where}.forward.dev"),
                   tuple(_interfaces(data.get("ipv4") or [], "ipv4", where)),
                   tuple(_interfaces(data.get("ipv6") or [], "ipv6", where)), nat)


def network_to_dict(network: Network) -> Dict[str, Any]:
    forward: Dict[str, Any] = {"mode": network.mode}
    if network.dev:
        forward["dev"] = network.dev
    result: Dict[str, Any] = {"name": network.name, "bridge": network.bridge, "forward": forward,
                              "ipv4": [str(i) for i in network.ipv4], "ipv6": [str(i) for i in network.ipv6]}
    if network.nat is not None:
        nat: Dict[str, Any] = {"ports": f"{network.nat.ports[0]}-{network.nat.ports[1]}", "ipv6": network.nat.ipv6}
        if network.nat.addresses:
            nat["addresses"] = "-".join(network.nat.addresses)
        result["nat"] = nat
    return result


def networks_xml(networks: Mapping[str, Network]) -> str:
    """Several networks, in name order (diff output)."""
    return "".join(network_to_xml(networks[name]) for name in sorted(networks))
