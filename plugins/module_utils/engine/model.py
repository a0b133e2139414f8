# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filter model: filters, rules, filter references and bindings.

Every object checks itself when it is built, so whatever path made it (XML,
YAML, code) a model object is always valid; only variable values are left to
the resolver, which checks them against the attribute they land in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from . import schema
from .errors import NwfilterError
from .values import parse_typed
from .variables import parse_reference

_NAME_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9_.:-]{0,127}")
_IFNAME_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,14}")
_VARNAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,63}")
_VARVALUE_RE = re.compile(r"[a-zA-Z0-9_.:-]{1,256}")
_OWNER_RE = re.compile(r"[^\x00-\x1f\x7f<>&\"'\\`$]{0,256}")

# A parameter's values: one string, or several for a list variable.
ParamValues = Tuple[str, ...]
Parameters = Mapping[str, ParamValues]


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def check_filter_name(name: str, where: str = "filter") -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise NwfilterError(f"invalid filter name {_shown(str(name))}", where)
    return name


def check_ifname(name: str, where: str) -> str:
    if not isinstance(name, str) or not _IFNAME_RE.fullmatch(name):
        raise NwfilterError(f"invalid interface name {_shown(str(name))} (1-15 of a-z A-Z 0-9 _ . -)", where)
    return name


def check_priority(value: int, where: str) -> int:
    low, high = schema.PRIORITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise NwfilterError(f"priority {value!r} is not a whole number from {low} to {high}", where)
    return value


def check_uuid(value: str, where: str) -> str:
    """The UUID in its canonical form (what uuid.UUID accepts; that module's
    import alone costs the libvirt hook more than its whole check)."""
    if isinstance(value, str) and len(value) <= 45:
        digits = value.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "").lower()
        if len(digits) == 32 and all(c in "0123456789abcdef" for c in digits):
            return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    raise NwfilterError(f"invalid uuid {_shown(str(value))}", where)


def check_parameters(params: Mapping[str, Sequence[str]], where: str) -> Dict[str, ParamValues]:
    """Variable names and values, checked strictly: values are hostile input."""
    checked: Dict[str, ParamValues] = {}
    for name, values in params.items():
        if not isinstance(name, str) or not _VARNAME_RE.fullmatch(name):
            raise NwfilterError(f"invalid variable name {_shown(str(name))}", where)
        if isinstance(values, str) or not values:
            raise NwfilterError(f"variable {name} needs at least one value", where)
        for value in values:
            if not isinstance(value, str) or not _VARVALUE_RE.fullmatch(value):
                raise NwfilterError(
                    f"invalid value {_shown(str(value))} for variable {name}"
                    " (1-256 of a-z A-Z 0-9 _ . : -)", where)
        checked[name] = tuple(values)
    mode = checked.get("CTRL_IP_LEARNING")
    if mode and any(v.lower() not in schema.IP_LEARNING_MODES for v in mode):
        raise NwfilterError(f"CTRL_IP_LEARNING must be one of {', '.join(schema.IP_LEARNING_MODES)}", where)
    return checked


@dataclass(frozen=True)
class Match:
    """One attribute of a rule's protocol element: text as written (a literal
    or a variable reference) and whether the element had ``match='no'``."""

    value: str
    negate: bool = False


@dataclass(frozen=True)
class Rule:
    action: str
    direction: str
    priority: int = schema.DEFAULT_RULE_PRIORITY
    statematch: bool = True
    protocol: Optional[str] = None  # protocol element name; None matches every frame of the chain
    attributes: Mapping[str, Match] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"rule (action={self.action!r}, direction={self.direction!r})"
        if self.action not in schema.ACTIONS:
            raise NwfilterError(f"action must be one of {', '.join(schema.ACTIONS)}, not {_shown(str(self.action))}",
                                "rule")
        if self.direction not in schema.DIRECTIONS:
            raise NwfilterError(
                f"direction must be one of {', '.join(schema.DIRECTIONS)}, not {_shown(str(self.direction))}", "rule")
        check_priority(self.priority, where)
        if self.protocol is None:
            if self.attributes:
                raise NwfilterError("attributes given without a protocol element", where)
        else:
            self._check_element(where)
        object.__setattr__(self, "attributes", dict(self.attributes))
        # attributes is a dict (so the dataclass cannot hash it); the compile caches key on rules
        object.__setattr__(self, "_hash", hash((self.action, self.direction, self.priority, self.statematch,
                                                self.protocol, frozenset(self.attributes.items()))))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]  # set once in __post_init__

    def _check_element(self, where: str) -> None:
        spec = schema.ELEMENTS.get(self.protocol or "")
        if spec is None:
            raise NwfilterError(f"unknown protocol element <{self.protocol}>", where)
        for name, match in self.attributes.items():
            kind = spec.attribute_type(name)
            at = f"{where} <{spec.name} {name}={_shown(match.value)}>"
            if kind is None:
                raise NwfilterError(f"unknown attribute {name!r} of <{spec.name}>", where)
            try:
                if parse_reference(match.value) is None:
                    parse_typed(kind, match.value)
            except NwfilterError as exc:
                raise exc.within(at) from None


@dataclass(frozen=True)
class FilterRef:
    filter: str
    parameters: Parameters = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_filter_name(self.filter, "filterref")
        object.__setattr__(self, "parameters",
                           check_parameters(self.parameters, f"filterref {self.filter!r}"))


Entry = Union[Rule, FilterRef]


@dataclass(frozen=True)
class Filter:
    name: str
    chain: str = "root"
    priority: Optional[int] = None  # None: the chain's default priority
    uuid: Optional[str] = None
    entries: Tuple[Entry, ...] = ()

    def __post_init__(self) -> None:
        check_filter_name(self.name)
        where = f"filter {self.name!r}"
        if not isinstance(self.chain, str) or schema.chain_prefix(self.chain) is None:
            raise NwfilterError(
                f"invalid chain {_shown(str(self.chain))}: 'root' or a name of at most 12 characters"
                " starting with mac, stp, vlan, arp, rarp, ipv4 or ipv6", where)
        if self.priority is not None:
            check_priority(self.priority, where)
        if self.uuid is not None:
            object.__setattr__(self, "uuid", check_uuid(self.uuid, where))
        object.__setattr__(self, "entries", tuple(self.entries))

    @property
    def effective_priority(self) -> int:
        return self.priority if self.priority is not None else schema.default_chain_priority(self.chain)

    def references(self) -> Tuple[str, ...]:
        return tuple(e.filter for e in self.entries if isinstance(e, FilterRef))


@dataclass(frozen=True)
class Binding:
    """A VM interface bound to a filter tree; keyed by ``portdev``."""

    portdev: str
    mac: str
    filterref: FilterRef
    owner_name: str = ""
    owner_uuid: Optional[str] = None
    linkdev: Optional[str] = None

    def __post_init__(self) -> None:
        where = f"binding {self.portdev!r}"
        check_ifname(self.portdev, "binding portdev")
        if self.linkdev is not None:
            check_ifname(self.linkdev, f"{where} linkdev")
        try:
            object.__setattr__(self, "mac", parse_typed("mac", self.mac))
        except NwfilterError as exc:
            raise exc.within(f"{where} mac") from None
        if not isinstance(self.owner_name, str) or not _OWNER_RE.fullmatch(self.owner_name):
            raise NwfilterError(f"invalid owner name {_shown(str(self.owner_name))}", where)
        if self.owner_uuid is not None:
            object.__setattr__(self, "owner_uuid", check_uuid(self.owner_uuid, where))
        if not isinstance(self.filterref, FilterRef):
            raise NwfilterError("needs a filterref", where)

    @property
    def parameters(self) -> Parameters:
        """The binding's own parameters; MAC always comes from the binding."""
        return {**self.filterref.parameters, "MAC": (self.mac,)}
