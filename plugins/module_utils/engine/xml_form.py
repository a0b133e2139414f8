# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's nwfilter XML, in and out: filters (<filter>) and bindings
(<filterbinding>), read strictly and written in one canonical form."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from . import schema
from .errors import NwfilterError
from .model import Binding, Entry, Filter, FilterRef, Match, Rule, _shown
from .values import parse_whole_number

MAX_DOCUMENT = 1024 * 1024
# Entity declarations are the door to entity-expansion attacks; nwfilter XML never needs them.
_DECLARATION_RE = re.compile(r"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _parse(text: str, kind: str) -> ET.Element:
    if not isinstance(text, str):
        raise NwfilterError(f"{kind} XML must be text", kind)
    if len(text) > MAX_DOCUMENT:
        raise NwfilterError(f"{kind} XML is larger than {MAX_DOCUMENT} bytes", kind)
    if _DECLARATION_RE.search(text):
        raise NwfilterError("DOCTYPE and ENTITY declarations are not allowed", kind)
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        line, column = exc.position
        raise NwfilterError(f"malformed XML at line {line}, column {column + 1}", kind) from None


def _only(elem: ET.Element, allowed: Iterable[str], where: str) -> Dict[str, str]:
    allowed = tuple(allowed)
    for name in elem.attrib:
        if name not in allowed:
            raise NwfilterError(f"unknown attribute {_shown(name)} of <{elem.tag}>", where)
    if (elem.text or "").strip() and elem.tag != "uuid":
        raise NwfilterError(f"<{elem.tag}> takes no text", where)
    if (elem.tail or "").strip():
        raise NwfilterError(f"unexpected text after <{elem.tag}>", where)
    return dict(elem.attrib)


def _integer(text: str, what: str, where: str) -> int:
    try:
        return parse_whole_number(text)
    except NwfilterError:
        raise NwfilterError(f"{what} {_shown(text)} is not a whole number", where) from None


def _boolean(text: str, what: str, where: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise NwfilterError(f"{what} must be true or false, not {_shown(text)}", where)


def _parameters(elem: ET.Element, where: str) -> Dict[str, Tuple[str, ...]]:
    params: Dict[str, List[str]] = {}
    for child in elem:
        if child.tag != "parameter":
            raise NwfilterError(f"unknown element <{child.tag}>, expected <parameter>", where)
        attrs = _only(child, ("name", "value"), where)
        if "name" not in attrs or "value" not in attrs:
            raise NwfilterError("<parameter> needs name and value", where)
        params.setdefault(attrs["name"], []).append(attrs["value"])
    return {name: tuple(values) for name, values in params.items()}


def _filterref(elem: ET.Element, where: str) -> FilterRef:
    attrs = _only(elem, ("filter",), where)
    if "filter" not in attrs:
        raise NwfilterError("<filterref> needs a filter attribute", where)
    return FilterRef(attrs["filter"], _parameters(elem, f"{where} filterref {attrs['filter']!r}"))


def _rule(elem: ET.Element, where: str) -> Rule:
    attrs = _only(elem, ("action", "direction", "priority", "statematch"), where)
    for needed in ("action", "direction"):
        if needed not in attrs:
            raise NwfilterError(f"<rule> needs a {needed} attribute", where)
    where = f"{where} rule (action={attrs['action']!r}, direction={attrs['direction']!r})"
    priority = _integer(attrs.get("priority", str(schema.DEFAULT_RULE_PRIORITY)), "priority", where)
    statematch = _boolean(attrs.get("statematch", "true"), "statematch", where)
    protocol: Optional[str] = None
    matches: Dict[str, Match] = {}
    for child in elem:
        spec = schema.ELEMENTS.get(child.tag)
        if spec is None:
            raise NwfilterError(f"unknown protocol element <{child.tag}>", where)
        if protocol is not None and child.tag != protocol:
            raise NwfilterError(f"<{child.tag}> after <{protocol}>: a rule has one protocol element", where)
        protocol = child.tag
        values = _only(child, ("match",) + tuple(spec.attributes), where)
        negate = not _boolean(values.pop("match", "yes"), "match", f"{where} <{child.tag}>")
        if len(child):
            raise NwfilterError(f"<{child.tag}> takes no child elements", where)
        for name, value in values.items():
            if name in matches:
                raise NwfilterError(f"attribute {name!r} of <{child.tag}> given twice", where)
            matches[name] = Match(value, negate)
    return Rule(attrs["action"], attrs["direction"], priority, statematch, protocol,
                {name: matches[name] for name in _schema_order(protocol, matches)})


def _schema_order(protocol: Optional[str], matches: Mapping[str, Match]) -> List[str]:
    if protocol is None:
        return []
    return [name for name in schema.ELEMENTS[protocol].attributes if name in matches]


def filter_from_xml(text: str) -> Filter:
    root = _parse(text, "filter")
    if root.tag != "filter":
        raise NwfilterError(f"expected <filter>, found <{root.tag}>", "filter")
    attrs = _only(root, ("name", "chain", "priority"), "filter")
    if "name" not in attrs:
        raise NwfilterError("<filter> needs a name attribute", "filter")
    where = f"filter {attrs['name']!r}"
    priority = _integer(attrs["priority"], "priority", where) if "priority" in attrs else None
    uuid: Optional[str] = None
    entries: List[Entry] = []
    for child in root:
        if child.tag == "uuid":
            _only(child, (), where)
            if uuid is not None or len(child):
                raise NwfilterError("<uuid> given twice or with children", where)
            uuid = (child.text or "").strip()
        elif child.tag == "rule":
            entries.append(_rule(child, where))
        elif child.tag == "filterref":
            _only(child, ("filter",), where)
            entries.append(_filterref(child, where))
        else:
            raise NwfilterError(f"unknown element <{child.tag}>", where)
    try:
        return Filter(attrs["name"], attrs.get("chain", "root"), priority, uuid, tuple(entries))
    except NwfilterError as exc:
        raise exc if str(exc).startswith("filter") else exc.within(where) from None


def _single(root: ET.Element, tag: str, where: str) -> Optional[ET.Element]:
    found = root.findall(tag)
    if len(found) > 1:
        raise NwfilterError(f"has more than one <{tag}>", where)
    return found[0] if found else None


def _required(root: ET.Element, tag: str, where: str) -> ET.Element:
    found = _single(root, tag, where)
    if found is None:
        raise NwfilterError(f"needs a <{tag}>", where)
    return found


def binding_from_xml(text: str) -> Binding:
    root = _parse(text, "binding")
    if root.tag != "filterbinding":
        raise NwfilterError(f"expected <filterbinding>, found <{root.tag}>", "binding")
    _only(root, (), "binding")
    known = ("owner", "portdev", "linkdev", "mac", "filterref")
    for child in root:
        if child.tag not in known:
            raise NwfilterError(f"unknown element <{child.tag}>", "binding")
    owner = _required(root, "owner", "binding")
    _only(owner, (), "binding owner")
    name_elem = _single(owner, "name", "binding owner")
    uuid_elem = _single(owner, "uuid", "binding owner")
    portdev = _only(_required(root, "portdev", "binding"), ("name",), "binding portdev").get("name", "")
    linkdev_elem = _single(root, "linkdev", "binding")
    linkdev = _only(linkdev_elem, ("name",), "binding linkdev").get("name") if linkdev_elem is not None else None
    mac = _only(_required(root, "mac", "binding"), ("address",), "binding mac").get("address", "")
    ref = _required(root, "filterref", "binding")
    return Binding(portdev, mac, _filterref(ref, f"binding {portdev!r}"),
                   owner_name=(name_elem.text or "") if name_elem is not None else "",
                   owner_uuid=(uuid_elem.text or "").strip() if uuid_elem is not None else None,
                   linkdev=linkdev)


# ---- canonical output -------------------------------------------------------

def _element(tag: str, attrs: Iterable[Tuple[str, str]], children: List[ET.Element] = (), text: str = "") -> ET.Element:
    elem = ET.Element(tag, dict(attrs))
    elem.extend(children)
    if text:
        elem.text = text
    return elem


def _filterref_element(ref: FilterRef) -> ET.Element:
    params = [_element("parameter", (("name", name), ("value", value)))
              for name, values in ref.parameters.items() for value in values]
    return _element("filterref", (("filter", ref.filter),), params)


def _rule_element(rule: Rule) -> ET.Element:
    attrs = [("action", rule.action), ("direction", rule.direction), ("priority", str(rule.priority))]
    if not rule.statematch:
        attrs.append(("statematch", "false"))
    children = []
    if rule.protocol is not None:
        # match='no' applies to a whole element, so plain and negated attributes are two elements.
        for negate in (False, True):
            chosen = [(name, m.value) for name, m in rule.attributes.items() if m.negate == negate]
            if chosen or (not negate and not rule.attributes):
                children.append(_element(rule.protocol, chosen + ([("match", "no")] if negate else [])))
    return _element("rule", attrs, children)


def _text(root: ET.Element) -> str:
    ET.indent(root, "  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def filter_to_xml(flt: Filter) -> str:
    attrs = [("name", flt.name), ("chain", flt.chain)]
    if flt.priority is not None:
        attrs.append(("priority", str(flt.priority)))
    children = [_element("uuid", (), text=flt.uuid)] if flt.uuid else []
    children += [_filterref_element(e) if isinstance(e, FilterRef) else _rule_element(e) for e in flt.entries]
    return _text(_element("filter", attrs, children))


# a binding's text by the object's identity (its parameters make it unhashable): a change
# renders each binding it writes twice, for the store and for its diff
_BINDING_TEXTS: Dict[int, Tuple[Binding, str]] = {}


def binding_to_xml(binding: Binding) -> str:
    found = _BINDING_TEXTS.get(id(binding))
    if found is not None and found[0] is binding:
        return found[1]
    if len(_BINDING_TEXTS) > 20000:
        _BINDING_TEXTS.clear()
    text = _binding_text(binding)
    _BINDING_TEXTS[id(binding)] = (binding, text)
    return text


def _binding_text(binding: Binding) -> str:
    owner = [_element("name", (), text=binding.owner_name)] if binding.owner_name else []
    if binding.owner_uuid:
        owner.append(_element("uuid", (), text=binding.owner_uuid))
    children = [_element("owner", (), owner), _element("portdev", (("name", binding.portdev),))]
    if binding.linkdev:
        children.append(_element("linkdev", (("name", binding.linkdev),)))
    children += [_element("mac", (("address", binding.mac),)), _filterref_element(binding.filterref)]
    return _text(_element("filterbinding", (), children))
