# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filter-tree resolver: from a binding and the defined filters to the
flat, ordered rule list a compiler consumes (engine.ruleset.Ruleset).

Ordering follows libvirt 9.0: rule instances are sorted root chain first,
then by priority (stable, so tree order breaks ties); each sub-chain exists in
a direction only if one of its rules applies there, and its jump sits in the
root chain among the root rules by chain priority (before a root rule of the
same priority).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from . import schema
from .errors import NwfilterError
from . import bounds
from .bounds import check_tree
from .model import Binding, Entry, Filter, FilterRef, Rule
from .ruleset import Chain, Jump, ResolvedRule, Ruleset
from .values import eui64_link_local, parse_typed
from .variables import VarRef, parse_reference

Variables = Dict[str, Tuple[str, ...]]
# the variables a rule names: (name, values, where they come from: "binding", "default" or "derived")
_Values = Tuple[Tuple[str, Tuple[str, ...], str], ...]
_Frame = Tuple[Filter, Dict[str, Tuple[str, ...]], Iterator[Entry]]


class MissingVariables(NwfilterError):
    """Variables the tree uses that no one gave a value. ``learnable``: they
    are IP and/or IPV6, so the binding can wait for the learner to find them
    (from the VM's own traffic in mode any, from DHCP/DHCPv6 in mode dhcp)."""

    def __init__(self, names: Sequence[str], where: str = "") -> None:
        self.names = tuple(sorted(names))
        self.learnable = bool(self.names) and set(self.names) <= {"IP", "IPV6"}
        hint = " (it can be learned: CTRL_IP_LEARNING any or dhcp)" if self.learnable else ""
        super().__init__(f"missing variable{'s' if len(self.names) > 1 else ''} "
                         f"{', '.join(self.names)}{hint}", where)


@dataclass(frozen=True)
class _Instance:
    """A rule of the tree with the defaults in force where it stands (the
    parameters of the filterrefs above it; the binding's override them)."""

    rule: Rule
    chain: str
    chain_priority: int
    origin: str
    defaults: Mapping[str, Tuple[str, ...]]
    order: int  # position in the tree walk, for stable sorting

    @property
    def layer(self) -> str:
        return schema.ELEMENTS[self.rule.protocol].layer if self.rule.protocol else "l2"


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it keys nft_compile's templates
class _Plan:
    """What of a binding's resolution depends only on the tree: its rules in
    libvirt's order and the chains they form (``layout``: per bridge chain,
    its name, priority and entries as jumps or indexes into ``ordered``).
    Bindings that share a tree share one plan."""

    filters: Tuple[Filter, ...]  # keeps the filters alive while their ids key the plan
    ordered: Tuple[_Instance, ...]
    unset: frozenset  # variables some rule uses that no filterref above it sets
    uses: frozenset  # every variable some rule uses
    layout: Tuple[Tuple[str, int, Tuple[Any, ...]], ...]


def effective_variables(binding: Binding, extra: Optional[Mapping[str, Sequence[str]]] = None) -> Variables:
    """The binding's parameters, learned values (``extra``) and MAC."""
    variables: Variables = dict(binding.parameters)
    for name, values in (extra or {}).items():
        variables[name] = tuple(values)
    return variables


def derived_defaults(binding: Binding) -> Variables:
    """Variables with a value derived from the binding, weaker than any value
    given anywhere in the tree: IPV6_LINKLOCAL, the MAC's EUI-64 link-local address."""
    return {"IPV6_LINKLOCAL": (eui64_link_local(binding.mac),)}


def _reachable(filters: Mapping[str, Filter], root: str) -> List[Tuple[str, Optional[Filter]]]:
    """Each filter reachable from ``root`` once (missing ones as None): the plan's key."""
    seen = {root}
    found, todo = [], [root]
    while todo:
        name = todo.pop()
        flt = filters.get(name)
        found.append((name, flt))
        for ref in flt.references() if flt is not None else ():
            if ref not in seen:
                seen.add(ref)
                todo.append(ref)
    return found


_PLANS: Dict[tuple, _Plan] = {}
MAX_PLANS = 256  # distinct trees kept; a host has a handful


def _plan(filters: Mapping[str, Filter], root: str, where: str) -> _Plan:
    """The plan of the tree under ``root`` (``where``: the binding), built
    once its size is known to be within the limits (bounds.check_tree)."""
    reachable = _reachable(filters, root)
    key = (root,) + tuple((name, id(flt)) for name, flt in reachable)
    plan = _PLANS.get(key)
    if plan is None:
        try:
            check_tree(filters, root)
        except NwfilterError as exc:
            raise exc.within(where) from None
        instances = _walk(filters, root, where)
        ordered = tuple(sorted(instances, key=lambda i: (i.chain != "root", i.rule.priority, i.order)))
        refs = [(ref.name, inst) for inst in instances for _attr, ref in _references(inst.rule)]
        unset = frozenset(name for name, inst in refs if name not in inst.defaults)
        if len(_PLANS) >= MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[key] = _Plan(tuple(flt for _name, flt in reachable if flt is not None), ordered, unset,
                                   frozenset(name for name, _inst in refs), _layout(ordered))
    return plan


def _walk(filters: Mapping[str, Filter], root: str, where: str) -> List[_Instance]:
    """Depth-first, iterative walk of the tree under ``root``. A filterref's
    own parameters are defaults: what comes from above overrides them."""
    instances: List[_Instance] = []

    def enter(ref: FilterRef, inherited: Mapping[str, Tuple[str, ...]], where: str) -> _Frame:
        flt = filters.get(ref.filter)
        if flt is None:
            raise NwfilterError(f"references filter {ref.filter!r}, which is not defined", where)
        return flt, {**ref.parameters, **inherited}, iter(flt.entries)

    stack = [enter(FilterRef(root), {}, where)]
    while stack:
        flt, defaults, entries = stack[-1]
        for entry in entries:
            if isinstance(entry, FilterRef):
                stack.append(enter(entry, defaults, f"filter {flt.name!r}"))
                break
            instances.append(_Instance(entry, flt.chain, flt.effective_priority, flt.name, defaults, len(instances)))
        else:
            stack.pop()
    return instances


@functools.lru_cache(maxsize=1 << 14)
def _references(rule: Rule) -> Tuple[Tuple[str, VarRef], ...]:
    return tuple((name, ref) for name, ref in ((name, parse_reference(match.value))
                                               for name, match in rule.attributes.items()) if ref is not None)


def unset_variables(filters: Mapping[str, Filter], root: str) -> FrozenSet[str]:
    """The variables the tree of ``root`` uses and no filter of it sets: a
    binding of it must give them (or a learner find them)."""
    return _plan(filters, root, f"filter {root!r}").unset


def missing_variables(filters: Mapping[str, Filter], binding: Binding,
                      extra: Optional[Mapping[str, Sequence[str]]] = None) -> Set[str]:
    """Every variable the tree uses without a value, over the whole tree."""
    derived = derived_defaults(binding)
    return set(_plan(filters, binding.filterref.filter, f"binding {binding.portdev!r}").unset
               - set(effective_variables(binding, extra)) - set(derived))


@functools.lru_cache(maxsize=1 << 16)
def _axes(rule: Rule, values: _Values, where: str) -> Tuple[Tuple[Dict[str, str], ...], ...]:
    """The rule's variable references as axes of a cross product: one
    iterator walks its lists in parallel (repeated tuples skipped), different
    iterators give the cross product. Linear in the lists' lengths, so the
    size of the product is known before it is expanded."""
    variables = {name: listed for name, listed, _where in values}
    iterators: Dict[Any, List[str]] = {0: []}
    for _attr, ref in _references(rule):
        if ref.index is not None:
            listed = variables[ref.name]
            if ref.index >= len(listed):
                raise NwfilterError(f"${ref.name}[{ref.index}] is past the end of its {len(listed)} value(s)", where)
            iterators[("index", ref.name, ref.index)] = [ref.name]
            continue
        names = iterators.setdefault(ref.iterator, [])
        if ref.name not in names:
            if names and len(variables[names[0]]) != len(variables[ref.name]):
                raise NwfilterError(
                    f"lists ${names[0]} and ${ref.name} walked by iterator @{ref.iterator}"
                    " must have the same number of values", where)
            names.append(ref.name)
    axes = []
    for key, names in iterators.items():
        if isinstance(key, tuple):
            axes.append(({f"{names[0]}[{key[2]}]": variables[names[0]][key[2]]},))
            continue
        length = len(variables[names[0]]) if names else 1
        seen: Set[Tuple[str, ...]] = set()
        axis = []
        for i in range(length):
            combo = tuple(variables[name][i] for name in names)
            if combo not in seen:
                seen.add(combo)
                axis.append({f"{name}@{key}": value for name, value in zip(names, combo)})
        axes.append(tuple(axis))
    return tuple(axes)


def _combinations(axes: Sequence[Sequence[Dict[str, str]]]) -> Iterator[Dict[str, str]]:
    """Each assignment of the cross product, the first axis varying fastest."""
    # itertools.product varies the last axis fastest; libvirt varies the first.
    for picked in itertools.product(*reversed(axes)):
        assignment: Dict[str, str] = {}
        for part in picked:
            assignment.update(part)
        yield assignment


def _instantiate(rule: Rule, assignment: Mapping[str, str], where: str) -> Tuple[Tuple[str, Any, bool], ...]:
    spec = schema.ELEMENTS[rule.protocol] if rule.protocol else None
    matches = []
    for name, match in rule.attributes.items():
        ref = parse_reference(match.value)
        text = match.value
        if ref is not None:
            key = f"{ref.name}[{ref.index}]" if ref.index is not None else f"{ref.name}@{ref.iterator}"
            text = assignment[key]
        kind = spec.attribute_type(name) if spec else None
        try:
            value = parse_typed(kind, text) if kind else text
        except NwfilterError as exc:
            source = f" (from {match.value})" if ref is not None else ""
            raise exc.within(f"{where} <{rule.protocol} {name}>{source}") from None
        matches.append((name, value, match.negate))
    order = list(spec.attributes) if spec else []
    matches.sort(key=lambda item: order.index(item[0]))
    return tuple(matches)


def _values(instance: _Instance, variables: Mapping[str, Tuple[str, ...]],
            derived: Mapping[str, Tuple[str, ...]]) -> _Values:
    """The values of the variables the rule names: the binding's, else the
    tree's defaults where the rule stands, else those derived from the binding."""
    # Only these matter: a rule without variables, or with values many ports
    # share, is expanded once (a redefine rebuilds every port of a tree that
    # mostly repeats itself).
    return tuple((ref.name, variables[ref.name], "binding") if ref.name in variables else
                 (ref.name, instance.defaults[ref.name], "default") if ref.name in instance.defaults else
                 (ref.name, derived[ref.name], "derived") for _attr, ref in _references(instance.rule))


@functools.lru_cache(maxsize=1 << 16)
def _count_rule(rule: Rule, values: _Values, origin: str) -> int:
    """Rule instances the rule expands to, at most (before duplicates are dropped)."""
    return math.prod(len(axis) for axis in _axes(rule, values, f"filter {origin!r}"))


@functools.lru_cache(maxsize=1 << 16)
def _expand_rule(rule: Rule, origin: str, values: _Values) -> Tuple[ResolvedRule, ...]:
    where = f"filter {origin!r}"
    rules = []
    seen = set()
    spec = schema.ELEMENTS[rule.protocol] if rule.protocol else None
    where_from = {name: source for name, _listed, source in values}
    sources = tuple((name, ref.name, where_from[ref.name], spec.attribute_type(name) if spec else None)
                    for name, ref in _references(rule))
    for assignment in _combinations(_axes(rule, values, where)):
        matches = _instantiate(rule, assignment, where)
        if matches in seen:
            continue
        seen.add(matches)
        rules.append(ResolvedRule(rule.action, rule.direction, rule.priority, rule.protocol,
                                  matches, rule.statematch, origin, sources))
    return tuple(rules)


def _sub_chains(instances: Sequence[_Instance], direction: str) -> Dict[str, int]:
    """Sub-chains with at least one rule for ``direction``, and their priority
    (libvirt keeps the last one seen when filters of one chain disagree)."""
    chains: Dict[str, int] = {}
    for inst in instances:
        if inst.chain != "root" and inst.rule.direction in (direction, "inout"):
            chains[inst.chain] = inst.chain_priority
    return chains


def _layout(ordered: Sequence[_Instance]) -> Tuple[Tuple[str, int, Tuple[Any, ...]], ...]:
    """The bridge chains: root's rules with the sub-chains' jumps among them
    by priority, then each sub-chain's rules. Every instance expands to at
    least one rule, all of its priority, so this holds for every binding."""
    l2 = [index for index, inst in enumerate(ordered) if inst.layer == "l2"]
    subs: Dict[str, int] = {}
    for direction in ("out", "in"):
        for name, priority in _sub_chains([ordered[i] for i in l2], direction).items():
            subs.setdefault(name, priority)
    jumps = sorted((Jump(name, priority) for name, priority in subs.items()), key=lambda j: j.priority)
    root: List[Any] = []
    pending = list(jumps)
    for index in l2:
        if ordered[index].chain == "root":
            while pending and pending[0].priority <= ordered[index].rule.priority:
                root.append(pending.pop(0))
            root.append(index)
    root.extend(pending)
    chains = [("root", 0, tuple(root))]
    for jump in jumps:
        chains.append((jump.chain, jump.priority, tuple(i for i in l2 if ordered[i].chain == jump.chain)))
    return tuple(chains)


def resolve(filters: Mapping[str, Filter], binding: Binding,
            extra: Optional[Mapping[str, Sequence[str]]] = None) -> Ruleset:
    """The binding's tree, flat and ordered; raises MissingVariables when the
    tree needs variables nobody gave, NwfilterError for anything else."""
    where = f"binding {binding.portdev!r}"
    plan = _plan(filters, binding.filterref.filter, where)
    variables = effective_variables(binding, extra)
    derived = derived_defaults(binding)
    missing = plan.unset - set(variables) - set(derived)
    if missing:
        raise MissingVariables(sorted(missing), where)
    values = [_values(inst, variables, derived) for inst in plan.ordered]
    sizes = [(_count_rule(inst.rule, value, inst.origin), inst.origin) for inst, value in zip(plan.ordered, values)]
    total = sum(size for size, _origin in sizes)
    if total > bounds.MAX_BINDING_RULES:  # refused before anything is expanded
        size, origin = max(sizes)
        raise NwfilterError(f"the filter tree expands to {total} rules, more than {bounds.MAX_BINDING_RULES} "
                            f"(filter {origin!r} alone to {size})", where)
    expanded = [_expand_rule(inst.rule, inst.origin, value) for inst, value in zip(plan.ordered, values)]
    chains = tuple(Chain(name, priority, tuple(r for entry in entries for r in (
        (entry,) if isinstance(entry, Jump) else expanded[entry]))) for name, priority, entries in plan.layout)
    ip_rules = tuple(r for inst, rules in zip(plan.ordered, expanded) if inst.layer == "l3" for r in rules)
    return Ruleset(chains, ip_rules, variables)


def shape_key(filters: Mapping[str, Filter], binding: Binding, extra: Optional[Mapping[str, Sequence[str]]] = None,
              plans: Optional[Dict[str, _Plan]] = None) -> Optional[Tuple[Tuple[Any, ...], Variables, Variables]]:
    """What the binding's resolved rules are made of apart from its values:
    its tree's plan and the names of the variables it gives, when each that
    the tree uses has one value (each rule instance then expands to one rule,
    whatever the values); else None. Bindings of one key resolve to the same
    rules but for the values of their ``sources``. With the binding's variables
    and derived defaults, where those values come from. ``plans``: the
    plans of these ``filters`` found so far, by root, for a caller that asks
    for many bindings (finding a tree's plan walks the tree)."""
    root = binding.filterref.filter
    plan = plans.get(root) if plans is not None else None
    if plan is None:
        plan = _plan(filters, root, f"binding {binding.portdev!r}")
        if plans is not None:
            plans[root] = plan
    variables = effective_variables(binding, extra)
    if any(len(variables[name]) != 1 for name in plan.uses if name in variables):
        return None
    derived = derived_defaults(binding) if plan.uses.difference(variables) else {}  # an EUI-64 address costs
    return (plan, tuple(sorted(name for name in variables if name in plan.uses))), variables, derived
