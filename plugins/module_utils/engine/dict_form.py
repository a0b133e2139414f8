# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The YAML (dict) form of filters and bindings, for playbooks: the same
expressive power as the XML form, converted both ways (docs/yaml-form.md)."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import schema
from .errors import NwfilterError
from .model import Binding, Entry, Filter, FilterRef, Match, Rule, _shown
from .values import parse_whole_number

_RULE_KEYS = ("action", "direction", "priority", "statematch")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise NwfilterError(f"must be a mapping, not {type(value).__name__}", where)
    return value


def _known(data: Mapping[str, Any], allowed: Tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise NwfilterError(f"unknown key {_shown(str(key))}", where)


def _scalar(value: Any, where: str) -> str:
    """Strings as they are; whole numbers as decimal text (YAML turns 22 into an int)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise NwfilterError(f"must be a string or a whole number, not {type(value).__name__}", where)


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise NwfilterError(f"must be true or false, not {_shown(str(value))}", where)


def _priority(value: Any, where: str) -> int:
    """A number, or its decimal text (a templated value): never '1_000' or '0x10'."""
    if isinstance(value, str):
        with contextlib.suppress(NwfilterError):
            return parse_whole_number(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise NwfilterError(f"must be a whole number, not {_shown(str(value))}", where)


def parameters_from_dict(params: Any, where: str) -> Dict[str, Tuple[str, ...]]:
    """``{NAME: value or [values]}``; the model checks names and values."""
    result: Dict[str, Tuple[str, ...]] = {}
    for name, value in _mapping(params, where).items():
        at = f"{where}.{name}"
        values = value if isinstance(value, list) else [value]
        result[str(name)] = tuple(_scalar(v, at) for v in values)
    return result


def parameters_to_dict(params: Mapping[str, Tuple[str, ...]]) -> Dict[str, Any]:
    return {name: values[0] if len(values) == 1 else list(values) for name, values in params.items()}


def _element(protocol: str, value: Any, where: str) -> Dict[str, Match]:
    spec = schema.ELEMENTS[protocol]
    parts = value if isinstance(value, list) else [value]
    matches: Dict[str, Match] = {}
    for index, part in enumerate(parts):
        at = f"{where}.{protocol}" + (f"[{index}]" if isinstance(value, list) else "")
        part = _mapping({} if part is None else part, at)
        negate = not _flag(part.get("match", True), f"{at}.match")
        for name, raw in part.items():
            if name == "match":
                continue
            if spec.attribute_type(str(name)) is None:
                raise NwfilterError(f"unknown attribute {_shown(str(name))} of {protocol}", at)
            if name in matches:
                raise NwfilterError(f"attribute {name!r} given twice", at)
            matches[name] = Match(_scalar(raw, f"{at}.{name}"), negate)
    return {name: matches[name] for name in spec.attributes if name in matches}


def _rule(data: Mapping[str, Any], where: str) -> Rule:
    elements = [key for key in data if key not in _RULE_KEYS]
    for key in elements:
        if key not in schema.ELEMENTS:
            raise NwfilterError(f"unknown key or protocol element {_shown(str(key))}", where)
    if len(elements) > 1:
        raise NwfilterError(f"a rule has one protocol element, not {', '.join(map(str, elements))}", where)
    for needed in ("action", "direction"):
        if needed not in data:
            raise NwfilterError(f"needs {needed}", where)
    protocol = elements[0] if elements else None
    return Rule(_scalar(data["action"], f"{where}.action"), _scalar(data["direction"], f"{where}.direction"),
                _priority(data.get("priority", schema.DEFAULT_RULE_PRIORITY), f"{where}.priority"),
                _flag(data.get("statematch", True), f"{where}.statematch"), protocol,
                _element(protocol, data[protocol], where) if protocol else {})


def _entry(data: Any, where: str) -> Entry:
    data = _mapping(data, where)
    if "filterref" in data:
        _known(data, ("filterref", "parameters"), where)
        return FilterRef(_scalar(data["filterref"], f"{where}.filterref"),
                         parameters_from_dict(data.get("parameters") or {}, f"{where}.parameters"))
    return _rule(data, where)


def filter_from_dict(data: Any) -> Filter:
    data = _mapping(data, "filter")
    _known(data, ("name", "chain", "priority", "uuid", "rules"), "filter")
    if "name" not in data:
        raise NwfilterError("needs a name", "filter")
    where = f"filter {_shown(str(data['name']))}"
    rules = data.get("rules") or []
    if not isinstance(rules, list):
        raise NwfilterError("rules must be a list", where)
    priority = data.get("priority")
    return Filter(_scalar(data["name"], f"{where}.name"), _scalar(data.get("chain", "root"), f"{where}.chain"),
                  None if priority is None else _priority(priority, f"{where}.priority"),
                  None if data.get("uuid") is None else _scalar(data["uuid"], f"{where}.uuid"),
                  tuple(_entry(rule, f"{where}.rules[{index}]") for index, rule in enumerate(rules)))


def _element_to_dict(rule: Rule) -> Any:
    parts: List[Dict[str, Any]] = []
    for negate in (False, True):
        chosen: Dict[str, Any] = {name: m.value for name, m in rule.attributes.items() if m.negate == negate}
        if chosen:
            parts.append({"match": False, **chosen} if negate else chosen)
    return parts[0] if len(parts) == 1 else (parts or {})


def _entry_to_dict(entry: Entry) -> Dict[str, Any]:
    if isinstance(entry, FilterRef):
        out: Dict[str, Any] = {"filterref": entry.filter}
        if entry.parameters:
            out["parameters"] = parameters_to_dict(entry.parameters)
        return out
    out = {"action": entry.action, "direction": entry.direction, "priority": entry.priority}
    if not entry.statematch:
        out["statematch"] = False
    if entry.protocol:
        out[entry.protocol] = _element_to_dict(entry)
    return out


def filter_to_dict(flt: Filter) -> Dict[str, Any]:
    out: Dict[str, Any] = {"name": flt.name, "chain": flt.chain}
    if flt.priority is not None:
        out["priority"] = flt.priority
    if flt.uuid:
        out["uuid"] = flt.uuid
    out["rules"] = [_entry_to_dict(entry) for entry in flt.entries]
    return out


def binding_from_dict(data: Any) -> Binding:
    data = _mapping(data, "binding")
    _known(data, ("portdev", "mac", "filter", "parameters", "owner", "linkdev"), "binding")
    for needed in ("portdev", "mac", "filter"):
        if not data.get(needed):
            raise NwfilterError(f"needs {needed}", "binding")
    where = f"binding {_shown(str(data['portdev']))}"
    owner = _mapping(data.get("owner") or {}, f"{where}.owner")
    _known(owner, ("name", "uuid"), f"{where}.owner")
    linkdev: Optional[Any] = data.get("linkdev")
    parameters = parameters_from_dict(data.get("parameters") or {}, f"{where}.parameters")
    if "MAC" in parameters:
        raise NwfilterError("MAC comes from mac, not from parameters (it would be ignored)", f"{where}.parameters")
    return Binding(_scalar(data["portdev"], f"{where}.portdev"), _scalar(data["mac"], f"{where}.mac"),
                   FilterRef(_scalar(data["filter"], f"{where}.filter"), parameters),
                   owner_name=_scalar(owner.get("name", ""), f"{where}.owner.name"),
                   owner_uuid=None if owner.get("uuid") is None else _scalar(owner["uuid"], f"{where}.owner.uuid"),
                   linkdev=None if linkdev is None else _scalar(linkdev, f"{where}.linkdev"))


def binding_to_dict(binding: Binding) -> Dict[str, Any]:
    out: Dict[str, Any] = {"portdev": binding.portdev, "mac": binding.mac, "filter": binding.filterref.filter}
    if binding.filterref.parameters:
        out["parameters"] = parameters_to_dict(binding.filterref.parameters)
    owner = {key: value for key, value in (("name", binding.owner_name), ("uuid", binding.owner_uuid)) if value}
    if owner:
        out["owner"] = owner
    if binding.linkdev:
        out["linkdev"] = binding.linkdev
    return out
