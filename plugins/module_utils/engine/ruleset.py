# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the resolver hands to the compilers: a binding's filter tree, flat,
ordered and with every variable replaced by a checked, typed value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

from . import schema


@dataclass(frozen=True)
class ResolvedRule:
    """One rule instance. ``matches`` holds (attribute, typed value, negate)
    in the element's attribute order; values come from values.parse_typed."""

    action: str
    direction: str  # "in" (to the VM), "out" (from the VM) or "inout"
    priority: int
    protocol: Optional[str]
    matches: Tuple[Tuple[str, Any, bool], ...] = ()
    statematch: bool = True
    origin: str = ""  # the filter the rule comes from
    # per attribute a variable gave (a shared chain looks it up): (attribute, variable, where its value comes
    # from: "binding", "default" or "derived", its type for values.parse_typed), so nft_compile can put
    # another port's values into a shape compiled once (nft_compile.Template)
    sources: Tuple[Tuple[str, str, str, Optional[str]], ...] = ()

    def get(self, attribute: str) -> Optional[Tuple[Any, bool]]:
        """(value, negate) of an attribute, or None when the rule does not match on it."""
        for name, value, negate in self.matches:
            if name == attribute:
                return value, negate
        return None

    @property
    def layer(self) -> str:
        """"l2" rules go to the bridge-level chains, "l3" rules to the IP level."""
        if self.protocol is None:
            return "l2"
        return schema.ELEMENTS[self.protocol].layer

    def applies_to(self, direction: str) -> bool:
        return self.direction in (direction, "inout")


@dataclass(frozen=True)
class Jump:
    """Root chain entry: send the frames a sub-chain is for into it."""

    chain: str
    priority: int

    @property
    def ethertype(self) -> Optional[int]:
        return schema.CHAIN_ETHERTYPE[schema.chain_prefix(self.chain) or "mac"]


ChainEntry = Union[ResolvedRule, Jump]


@dataclass(frozen=True)
class Chain:
    """A bridge-level chain: root (rules and jumps, interleaved by priority)
    or a sub-chain (its rules by priority); frames that end a sub-chain
    without a verdict are accepted, as with libvirt."""

    name: str
    priority: int
    entries: Tuple[ChainEntry, ...]


@dataclass(frozen=True)
class Ruleset:
    """A binding's whole tree, ready to compile."""

    chains: Tuple[Chain, ...]  # root first, then sub-chains by priority
    ip_rules: Tuple[ResolvedRule, ...]  # l3 rules (tcp, udp, icmp, all, ...) by priority
    variables: Dict[str, Tuple[str, ...]]  # the effective parameters, MAC included

    def for_direction(self, direction: str) -> Tuple[Chain, ...]:
        """The chains as they stand for one direction ("in" or "out"): only the
        rules that apply to it, and a sub-chain (with its jump) only if it has
        such a rule, as libvirt creates them."""
        subs = []
        for chain in self.chains[1:]:
            rules = tuple(r for r in chain.entries if isinstance(r, ResolvedRule) and r.applies_to(direction))
            if rules:
                subs.append(Chain(chain.name, chain.priority, rules))
        present = {chain.name for chain in subs}
        root = tuple(e for e in self.chains[0].entries
                     if (e.chain in present if isinstance(e, Jump) else e.applies_to(direction)))
        return (Chain("root", 0, root),) + tuple(subs)

    def chain(self, name: str) -> Optional[Chain]:
        for chain in self.chains:
            if chain.name == name:
                return chain
        return None
