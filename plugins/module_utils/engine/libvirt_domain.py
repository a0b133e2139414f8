# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A libvirt domain's XML, as its hook script gets it: the domain's name and
UUID, its interfaces (MAC, tap name of this start, lower device) and the
filter references kept for us in the domain's ``<metadata>``:

    <metadata>
      <vmguard:nwfilter xmlns:vmguard="urn:vmguard:nwfilter:1">
        <vmguard:interface mac="52:54:00:aa:00:01">
          <vmguard:filterref filter="clean-traffic">
            <vmguard:parameter name="IP" value="192.0.2.10"/>
          </vmguard:filterref>
        </vmguard:interface>
      </vmguard:nwfilter>
    </metadata>

Interfaces are matched by MAC address, the one thing of an interface that is
the same at every start; the tap name is taken from the live XML. Elements
inside our element may also be unqualified (as ``virsh metadata --set``
leaves them when they are written without a prefix)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Dict, List, Optional

from .errors import NwfilterError
from .model import Binding, FilterRef, check_uuid
from .values import parse_typed
from .xml_form import binding_from_xml

NAMESPACE = "urn:vmguard:nwfilter:1"
_OURS = f"{{{NAMESPACE}}}"
MAX_DOMAIN_XML = 4 * 1024 * 1024


@dataclass(frozen=True)
class Interface:
    mac: str
    tap: Optional[str]       # <target dev>: in the live XML once libvirt created the tap
    linkdev: Optional[str]   # <source dev> of a macvtap (type='direct') interface
    libvirt_filter: bool     # a <filterref> of its own: libvirt's nwfilter acts on it too


def _local(elem: ET.Element, where: str) -> str:
    """The element's name, which must be in our namespace or in none."""
    if elem.tag.startswith(_OURS):
        return elem.tag[len(_OURS):]
    if elem.tag.startswith("{"):
        raise NwfilterError(f"element {elem.tag} is not in the namespace {NAMESPACE}", where)
    return elem.tag


def _unqualified(elem: ET.Element, where: str) -> ET.Element:
    """A copy of ``elem`` with its and its children's names made unqualified."""
    copy = ET.Element(_local(elem, where), elem.attrib)
    copy.text, copy.tail = elem.text, elem.tail
    copy.extend([_unqualified(child, where) for child in elem])
    return copy


class Domain:
    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or len(text) > MAX_DOMAIN_XML:
            raise NwfilterError(f"the domain XML is not text of at most {MAX_DOMAIN_XML} bytes")
        if "<!DOCTYPE" in text or "<!ENTITY" in text:
            raise NwfilterError("DOCTYPE and ENTITY declarations are not allowed in the domain XML")
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            line, column = exc.position
            raise NwfilterError(f"malformed domain XML at line {line}, column {column + 1}") from None
        if root.tag != "domain":
            raise NwfilterError(f"expected <domain>, found <{root.tag}>")
        self.name = (root.findtext("name") or "").strip()
        where = f"domain {self.name!r}"
        self.where = where
        self.uuid = check_uuid((root.findtext("uuid") or "").strip(), where)
        self.interfaces: List[Interface] = []
        for elem in root.iterfind("devices/interface"):
            mac_elem, target, source = elem.find("mac"), elem.find("target"), elem.find("source")
            if mac_elem is None or not mac_elem.get("address"):
                continue  # only an inactive definition lacks one; libvirt fills it in before any hook
            linkdev = source.get("dev") if source is not None and elem.get("type") == "direct" else None
            self.interfaces.append(Interface(parse_typed("mac", mac_elem.get("address")),
                                             target.get("dev") if target is not None else None,
                                             linkdev, elem.find("filterref") is not None))
        self._ours = root.find(f"metadata/{_OURS}nwfilter")

    @property
    def taps(self) -> List[str]:
        return [i.tap for i in self.interfaces if i.tap]

    def references(self) -> Dict[str, FilterRef]:
        """Our filter references by MAC address (normalised)."""
        found: Dict[str, FilterRef] = {}
        if self._ours is None:
            return found
        for elem in self._ours:
            if _local(elem, self.where) != "interface":
                raise NwfilterError(f"unknown element <{_local(elem, self.where)}> in <vmguard:nwfilter>", self.where)
            try:
                mac = parse_typed("mac", elem.get("mac", ""))
            except NwfilterError as exc:
                raise exc.within(f"{self.where} <vmguard:interface>") from None
            refs = list(elem)
            if len(refs) != 1 or _local(refs[0], self.where) != "filterref":
                raise NwfilterError(f"<vmguard:interface mac={mac!r}> needs exactly one <filterref>", self.where)
            if mac in found:
                raise NwfilterError(f"<vmguard:interface mac={mac!r}> given twice", self.where)
            # the filterref as a <filterbinding> holds it, checked by the binding parser itself
            probe = ET.Element("filterbinding")
            ET.SubElement(ET.SubElement(probe, "owner"), "name")
            ET.SubElement(probe, "portdev", name="x")
            ET.SubElement(probe, "mac", address=mac)
            probe.append(_unqualified(refs[0], self.where))
            try:
                found[mac] = binding_from_xml(ET.tostring(probe, encoding="unicode")).filterref
            except NwfilterError as exc:
                raise exc.within(f"{self.where} interface {mac}") from None
        return found

    def bindings(self) -> List[Binding]:
        """The bindings of this start: one per interface with a reference of ours, on its tap."""
        refs = self.references()
        by_mac = {i.mac: i for i in self.interfaces}
        bindings = []
        for mac, ref in refs.items():
            interface = by_mac.get(mac)
            if interface is None:
                raise NwfilterError(f"<vmguard:interface mac={mac!r}> matches no interface of the domain", self.where)
            if not interface.tap:
                raise NwfilterError(f"interface {mac} has no tap name (<target dev>) to bind", self.where)
            try:
                bindings.append(Binding(interface.tap, mac, ref, owner_name=self.name, owner_uuid=self.uuid,
                                        linkdev=interface.linkdev))
            except NwfilterError as exc:
                raise exc.within(self.where) from None
        return sorted(bindings, key=lambda b: b.portdev)

    def doubly_filtered(self) -> List[str]:
        """MACs of interfaces that libvirt's nwfilter filters too (a <filterref> left in <interface>)."""
        refs = self.references()
        return [i.mac for i in self.interfaces if i.libvirt_filter and i.mac in refs]
