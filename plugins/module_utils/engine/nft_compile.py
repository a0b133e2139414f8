# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nftables compiler: a binding's resolved rules become per-port chains in
our own two tables (their layout: nft_layout), reached through verdict maps
keyed by interface name, and one transaction script installs them."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from .errors import NwfilterError
from .model import Binding
from . import nft_layout as layout  # the mark's layout by attribute: a test installs the previous one
from .nft_layout import (DISPATCH, MAP_KEYS, PORT_SETS, TABLE, LiveState, PortLive, chain_name, digest,
                         dispatch_rule, id_targets, key_expression, owner_of, port_key, shape_parts)
from .nft_matches import RECIPES, NotShared, Recipe, bridge_matches, ct_states, ip_matches, set_kind
from .ruleset import Chain, Jump, ResolvedRule, Ruleset
from .values import parse_typed

BRIDGE_VERDICT = {"accept": "accept", "drop": "drop", "reject": "drop", "return": "return", "continue": ""}
BROADCAST = "ff:ff:ff:ff:ff:ff"


Chains = Tuple[Tuple[str, str, Tuple[str, ...]], ...]  # (family, name, rules)
Sets = Tuple[Tuple[str, str, str], ...]  # (family, name, spec)


@dataclass(frozen=True)
class Shape:
    """Chains that every port of one shape shares, named ``s/<digest of
    them>/...``, and its sets: the ports (PORT_SETS) and, per comparison with
    a variable's value, the ports' values keyed by port."""

    name: str
    chains: Chains
    sets: Sets

    @property
    def parts(self) -> Tuple[str, ...]:
        """The parts (DISPATCH) it has chains for."""
        return shape_parts(self.name, (name for _family, name, _rules in self.chains))


@dataclass(frozen=True)
class PortProgram:
    """One port's chains (family, name, rules) and verdict-map elements
    (family, map, key, chain); a port of a ``shape`` has its set elements
    (``members``: family, set, element) and no chains."""

    portdev: str
    port_id: int
    learning: bool
    chains: Chains
    elements: Tuple[Tuple[str, str, str, str], ...]
    sets: Sets = ()  # a learning port's address locks
    shape: Optional[Shape] = None
    members: Tuple[Tuple[str, str, str], ...] = ()

    @property
    def all_chains(self) -> Chains:
        """Its own chains and its shape's."""
        return self.chains + (self.shape.chains if self.shape else ())

    @property
    def rule_count(self) -> int:
        return sum(len(rules) for _family, _name, rules in self.all_chains)

    @property
    def text(self) -> str:
        """The port's rules as nft statements, for people (nwfilter_info)."""
        return "\n".join(f"{family} {name}: {rule}" for family, name, rules in self.all_chains for rule in rules)


def _rule_text(matches: Sequence[str], verdict: str) -> str:
    # a comment has to come last in an nft rule
    comments = [m for m in matches if m.startswith("comment ")]
    body = [m for m in matches if not m.startswith("comment ")] + ([verdict] if verdict else []) + comments
    return " ".join(body) if body else "counter"


SHAPE = "$C"  # the shape's name in its chains' and sets' names until its digest is known
_SHAPES: Dict[str, "Shape"] = {}
MAX_SHAPES = 256  # distinct shapes kept; a host has a handful
_LOOKUP = re.compile(r"\$K \. (?P<expr>[^$]*?) (?P<negate>!= )?@\$(?P<kind>[SI])(?P<value>[^$#]*)#(?P<recipe>\d+)\$")


@dataclass(frozen=True)
class Template:
    """A shape as the ports of one resolver.shape_key get it: their
    programs differ only in their keys and values, and each value is its
    recipe (nft_matches.RECIPES) applied to the port's variables. Compiling
    one port of a key gives the template; the others are made from it."""

    shape: Shape
    parts: FrozenSet[str]
    values: Tuple[Tuple[str, str, str, str, Recipe], ...]  # per value set: family, name, part, kind, recipe

    def program(self, portdev: str, port_id: int, values: Sequence[str]) -> PortProgram:
        """The port's program: its values (one per value set) and its key in the port sets."""
        keys = {part: port_key(part, portdev, port_id) for part in self.parts}
        members = {(family, name, f"{keys[part]} . {value}")
                   for (family, name, part, _kind, _recipe), value in zip(self.values, values)}
        members.update(("bridge" if part in ("o", "i") else "inet", f"{self.shape.name}/{PORT_SETS[part]}", key)
                       for part, key in keys.items())
        elements = tuple(("bridge", vmap, f'"{portdev}"', target)
                         for vmap, target in id_targets(port_id).items()) if {"fi", "fo", "hi"} & self.parts else ()
        return PortProgram(portdev, port_id, False, (), elements, (), self.shape, tuple(sorted(members)))

    def apply(self, portdev: str, port_id: int, variables: Mapping[str, Tuple[str, ...]],
              derived: Mapping[str, Tuple[str, ...]]) -> Optional[PortProgram]:
        """The program of a port of this template's key, from its variables
        and derived defaults (resolver.shape_key); None where a value does
        not fit (not a valid value, or a range where the shape has a value
        set): the full compile then says why, or builds the port's own shape."""
        values = []
        typed: Dict[Tuple[str, str], object] = {}
        written: Dict[tuple, str] = {}  # a port's value is written into several of its rules
        for _family, _name, _part, kind, recipe in self.values:
            if recipe in written:
                values.append(written[recipe])
                continue
            fmt, sources = recipe
            args = []
            for source in sources:
                if source[0] == "const":
                    args.append(source[1])
                    continue
                _var, variable, where, parse = source
                text = (variables if where == "binding" else derived)[variable][0]
                if parse is None:
                    args.append(text)
                    continue
                if (parse, text) not in typed:
                    try:
                        typed[parse, text] = parse_typed(parse, text)
                    except NwfilterError:
                        return None
                args.append(typed[parse, text])
            value = written[recipe] = fmt(*args)
            if set_kind(value) != kind:
                return None
            values.append(value)
        return self.program(portdev, port_id, values)


_TEMPLATES: Dict[tuple, Template] = {}


class _Builder:
    """A port's chains; ``shared``: the chains of its shape, with each
    variable's value a lookup (nft_matches.LOOKUP), and its elements."""

    def __init__(self, binding: Binding, port_id: int, shared: bool = False) -> None:
        if not 1 <= port_id <= layout.MAX_PORT_ID:
            raise NwfilterError(f"port id {port_id} out of range 1-{layout.MAX_PORT_ID}", f"binding {binding.portdev!r}")
        self.binding = binding
        self.port_id = port_id
        self.shared = shared
        self.chains: Dict[Tuple[str, str], List[str]] = {}
        self.elements: List[Tuple[str, str, str, str]] = []
        self.template: Optional[Template] = None  # of a shared port, once compiled

    def chain(self, family: str, *parts: str) -> List[str]:
        if self.shared:
            name = "/".join((SHAPE,) + tuple(part.replace(":", "/") for part in parts))
            return self.chains.setdefault((family, name), [])
        return self.chains.setdefault((family, chain_name(self.binding.portdev, *parts)), [])

    def element(self, family: str, vmap: str, key: str, *parts: str) -> None:
        self.chain(family, *parts)
        if not self.shared:  # a shape's port is found by its sets
            self.elements.append((family, vmap, key, chain_name(self.binding.portdev, *parts)))

    def program(self, learning: bool, sets: Tuple[Tuple[str, str, str], ...] = ()) -> PortProgram:
        if self.shared:
            return self._shared()
        return PortProgram(self.binding.portdev, self.port_id, learning,
                           tuple((f, n, _reachable(r)) for (f, n), r in self.chains.items()), tuple(self.elements),
                           sets)

    def _shared(self) -> PortProgram:
        """The shape's chains with each lookup's set named, its sets, and
        this port's elements: its values, its place in the port sets and its id."""
        chains, sets, values = [], [], []
        parts = set()
        for (family, name), rules in self.chains.items():
            part = name.split("/")[1]
            parts.add(part)
            key = key_expression(part)
            typeof = "iifname" if family == "bridge" else "meta mark"

            def lookup(match: "re.Match[str]", family: str = family, key: str = key, part: str = part,
                       typeof: str = typeof) -> str:
                name = f"{SHAPE}/v{len(sets)}"
                flags = " flags interval;" if match["kind"] == "I" else ""
                sets.append((family, name, f"typeof {typeof} . {match['expr']};{flags}"))
                values.append((family, name, part, match["kind"], RECIPES[int(match["recipe"])], match["value"]))
                return f"{key} . {match['expr']} {match['negate'] or ''}@{name}"
            chains.append((family, name, tuple(_LOOKUP.sub(lookup, rule) if "$K" in rule else rule
                                               for rule in _reachable(rules))))
        for part in sorted(parts):
            family = "bridge" if part in ("o", "i") else "inet"
            name = f"{SHAPE}/{PORT_SETS[part]}"
            if (family, name) not in {(f, n) for f, n, _spec in sets}:
                sets.append((family, name, "typeof iifname;" if family == "bridge" else "type mark;"))
        shape = f"s/{digest([repr(chains), repr(sets)])}"
        named = _SHAPES.get(shape)
        if named is None:  # ports alike make the same one: named once
            if len(_SHAPES) > MAX_SHAPES:
                _SHAPES.clear()
            named = _SHAPES[shape] = Shape(
                shape, tuple((f, n.replace(SHAPE, shape), tuple(r.replace(SHAPE, shape) for r in rules))
                             for f, n, rules in chains), tuple((f, n.replace(SHAPE, shape), spec) for f, n, spec in sets))
        self.template = Template(named, frozenset(parts), tuple((f, n.replace(SHAPE, shape), part, kind, recipe)
                                                                for f, n, part, kind, recipe, _value in values))
        return self.template.program(self.binding.portdev, self.port_id, [value for *_rest, value in values])


def _reachable(rules: List[str]) -> Tuple[str, ...]:
    """The rules up to the first that ends the chain for every packet."""
    for index, rule in enumerate(rules):
        if _final(rule, ""):
            return tuple(rules[:index + 1])
    return tuple(rules)


def _bridge_direction(builder: _Builder, ruleset: Ruleset, direction: str, vmap: str, key: str) -> None:
    side = "o" if direction == "out" else "i"
    builder.element("bridge", vmap, key, side)
    reverse = direction == "out"  # an inout rule is written for frames to the VM (libvirt)
    chains = ruleset.for_direction(direction)
    guards = {entry.chain: f"ether type 0x{entry.ethertype:04x}" if entry.ethertype else ""
              for entry in chains[0].entries if isinstance(entry, Jump)}
    shared = builder.shared
    subs = {chain.name: _sub_chain(chain, reverse, guards[chain.name], shared) for chain in chains[1:]}
    root = builder.chain("bridge", side)
    for entry in chains[0].entries:
        if not isinstance(entry, Jump):
            root.append(_bridge_rule(entry, reverse and entry.direction == "inout", shared))
            continue
        guard = guards[entry.chain]
        folded = _folded(guard, subs[entry.chain], shared)
        if folded is not None:
            root += folded
            continue
        target = f"{SHAPE}/{side}/{entry.chain.replace(':', '/')}" if shared else \
            chain_name(builder.binding.portdev, side, entry.chain)
        root.append(f"{guard} jump {target}" if guard else f"jump {target}")
        builder.chain("bridge", side, entry.chain)[:] = [text for text, _rule, _swap in subs[entry.chain]]


# A sub-chain's rules as (text, rule, swap), up to the first that ends it for
# every frame; libvirt's sub-chains end without a policy: ebtables accepts.
SubChain = List[Tuple[str, Optional[ResolvedRule], bool]]


def _final(text: str, guard: str) -> Optional[str]:
    """The verdict of a rule that ends a chain entered behind ``guard`` (""
    for none) for every frame: no match, or only the guard's; else None."""
    for verdict in ("accept", "drop"):
        if text == verdict or (guard and text == f"{guard} {verdict}"):
            return verdict
    return None


def _sub_chain(chain: Chain, reverse: bool, guard: str, shared: bool) -> SubChain:
    entries: SubChain = []
    for rule in chain.entries:
        swap = reverse and rule.direction == "inout"
        entries.append((_bridge_rule(rule, swap, shared), rule, swap))
        if _final(entries[-1][0], guard):
            return entries
    return entries + [("accept", None, False)]


# Attributes whose one comparison _is renders negated when asked (a masked
# or two-part match is not one comparison)
NEGATABLE = frozenset({"srcmacaddr", "dstmacaddr", "protocolid", "srcipaddr", "dstipaddr", "hwtype", "protocoltype",
                       "opcode", "arpsrcmacaddr", "arpsrcipaddr", "arpdstmacaddr", "arpdstipaddr"})


def _folded(guard: str, entries: SubChain, shared: bool) -> Optional[List[str]]:
    """A sub-chain's rules written into the chain that jumps to it (behind
    the jump's ethertype ``guard``), where that gives every frame the same
    verdict: a chain without ``return`` rules, or one whose only ``return``
    is a single comparison followed by its last rule (anti-spoofing's "M
    return; drop" becomes "not M drop"). Each fold spares the kernel a
    chain, a jump and a rule per port, on every change and every frame."""
    returns = [index for index, (_text, rule, _swap) in enumerate(entries) if rule and rule.action == "return"]
    texts = [text for text, _rule, _swap in entries]
    if returns:
        verdict = _final(texts[-1], guard)
        if returns != [len(entries) - 2] or verdict is None:
            return None
        _text, rule, swap = entries[-2]
        negated = _negated(guard, rule, swap, verdict, shared)
        if negated is None:
            return None
        texts[-2:] = [negated]
    return [text if not guard or f" {guard} " in f" {text} " else f"{guard} {text}" for text in texts]


@functools.lru_cache(maxsize=None)
def _protocol_guard(protocol: Optional[str]) -> Tuple[str, ...]:
    """What a rule of this protocol matches with no attribute (its ethertype)."""
    return tuple(bridge_matches(ResolvedRule("drop", "inout", 0, protocol), False))


def _negated(guard: str, rule: ResolvedRule, swap: bool, verdict: str, shared: bool) -> Optional[str]:
    """``rule``'s one comparison negated, with ``verdict``; None unless the
    rule is one comparison beside its protocol's ethertype, which the
    jump's guard already holds."""
    compared = [name for name, _value, _negate in rule.matches if name != "comment"]
    if len(compared) != 1 or compared[0] not in NEGATABLE or _protocol_guard(rule.protocol) not in ((), (guard,)):
        return None
    matches = tuple((name, value, negate != (name == compared[0])) for name, value, negate in rule.matches)
    return _bridge_rule(replace(rule, action=verdict, matches=matches), swap, shared)


# Rule texts are cached: most rules of a tree are the same for every port
# (no variables, or values shared), and a redefine recompiles every user.
@functools.lru_cache(maxsize=1 << 16)
def _bridge_rule(entry: ResolvedRule, swap: bool, shared: bool = False) -> str:
    return _rule_text(bridge_matches(entry, swap, shared), BRIDGE_VERDICT[entry.action])


# libvirt's three halves of a layer-3/4 rule: (chain, swap, state, accept verdict, may skip icmp)
@functools.lru_cache(maxsize=1 << 16)
def _halves(rule: ResolvedRule) -> Tuple[Tuple[str, bool, Optional[str], str, bool], ...]:
    d_in = rule.direction in ("in", "inout")
    inout = rule.direction == "inout"
    state = rule.get("state")
    if state is not None and rule.statematch:
        # match='no': none of the states (a bitmask test, "ct state & (a|b) == 0")
        states = ("!= " if state[1] else "") + ct_states(state[0])
        halves = []
        if not (d_in and not inout):
            halves.append(("fi", d_in, states, "return", d_in or inout))
        if d_in:
            halves.append(("fo", False, states, "accept", inout))
        if not (d_in and not inout):
            halves.append(("hi", d_in, states, "return", d_in))
        return tuple(halves)
    need = rule.statematch and not inout
    return (
        ("fi", d_in, ("established" if d_in else "new,established") if need else None, "return", d_in or inout),
        ("fo", not d_in, ("new,established" if d_in else "established") if need else None, "accept",
         not d_in or inout),
        ("hi", d_in, ("established" if d_in else "new,established") if need else None, "return", d_in),
    )


@functools.lru_cache(maxsize=1 << 16)
def _ip_rule(rule: ResolvedRule, swap: bool, state: Optional[str], accept: str, may_skip: bool,
             default_state: bool, shared: bool = False) -> Optional[str]:
    matches = ip_matches(rule, swap, may_skip, shared)
    connlimit = rule.get("connlimit-above")
    if matches is None or (connlimit is not None and swap):
        return None  # libvirt limits connections only on the VM's own side
    verdict = {"accept": accept, "drop": "drop", "reject": "reject", "return": "return", "continue": ""}[rule.action]
    # libvirt's default state matching applies only to accept rules, and not next to connlimit
    if state and not (default_state and (rule.action != "accept" or connlimit is not None)):
        # a bitmask match (a,b), not an anonymous set: no set object per rule to create and look up
        matches.append(f"ct state {state}")
        if default_state and rule.direction != "inout" and rule.get("type") is None:
            matches.append(f"ct direction {'reply' if swap else 'original'}")
    if connlimit is not None:
        # per rule and port: every packet of the VM's own side has the VM's source address
        matches.append(f"ct count {connlimit[0]}" if connlimit[1] else f"ct count over {connlimit[0]}")
    comment = rule.get("comment")
    if comment:
        matches.append(f'comment "{comment[0]}"')
    return _rule_text(matches, verdict)


def _ip_layer(builder: _Builder, ruleset: Ruleset) -> None:
    if not ruleset.ip_rules:
        return
    pid = builder.port_id
    builder.element("inet", "fi", f"0x{pid:x}", "fi")
    builder.element("inet", "fo", f"0x{pid << layout.TO_SHIFT:x}", "fo")
    builder.element("inet", "hi", f"0x{pid:x}", "hi")
    if not builder.shared:  # a shape's port has its id set by the id maps (nft_layout)
        builder.element("bridge", "mark_to", f'"{builder.binding.portdev}"', "mark")
        builder.chain("bridge", "mark").append(
            f"meta mark set meta mark & 0x{(layout.OTHERS_MASK | layout.FROM_MASK):08x} | 0x{pid << layout.TO_SHIFT:08x}")
        # tag frames from the VM before any of its bridge rules can end the chain
        builder.chain("bridge", "o").insert(0, f"meta mark set meta mark & "
                                            f"0x{(layout.OTHERS_MASK | layout.FROM_MASK << layout.TO_SHIFT):08x} | 0x{pid:08x}")
    for rule in ruleset.ip_rules:
        default_state = rule.get("state") is None or not rule.statematch
        for side, swap, state, accept, may_skip in _halves(rule):
            text = _ip_rule(rule, swap, state, accept, may_skip, default_state, builder.shared)
            if text is not None:
                builder.chain("inet", side).append(text)


def compile_port(binding: Binding, ruleset: Ruleset, port_id: int, share: bool = True,
                 key: Optional[tuple] = None) -> PortProgram:
    """The port's program: of its shape, unless a variable's value goes
    where no lookup can stand (nft_matches.NotShared), or not ``share``;
    then chains of its own. ``key``: the binding's resolver.shape_key,
    under which its shape's template is kept (from_template)."""
    if share:
        try:
            return _compiled(binding, ruleset, port_id, True, key)
        except NotShared:
            pass
    return _compiled(binding, ruleset, port_id, False)


def from_template(key: tuple, portdev: str, port_id: int, variables: Mapping[str, Tuple[str, ...]],
                  derived: Mapping[str, Tuple[str, ...]]) -> Optional[PortProgram]:
    """The program of a port whose shape_key a port compiled before had, in
    this process; None when there is no such template or it does not fit."""
    template = _TEMPLATES.get(_template_key(key))
    return template.apply(portdev, port_id, variables, derived) if template is not None else None


def _template_key(key: tuple) -> tuple:
    """A template's key: the layout's constants are in the shape's chains and the ports' keys too (a test
    installs the previous layout)."""
    return key, layout.FROM_MASK, layout.TO_SHIFT


def _compiled(binding: Binding, ruleset: Ruleset, port_id: int, shared: bool, key: Optional[tuple] = None) -> PortProgram:
    builder = _Builder(binding, port_id, shared)
    try:
        _bridge_direction(builder, ruleset, "out", "from_vm", f'"{binding.portdev}"')
        _bridge_direction(builder, ruleset, "in", "to_vm", f'"{binding.portdev}"')
        _ip_layer(builder, ruleset)
    except NwfilterError as exc:
        raise exc.within(f"binding {binding.portdev!r}") from None
    program = builder.program(learning=False)
    if key is not None and builder.template is not None:
        if len(_TEMPLATES) >= MAX_SHAPES:
            _TEMPLATES.clear()
        _TEMPLATES[_template_key(key)] = builder.template
    return program


def _servers(variables: Mapping[str, Tuple[str, ...]], name: str, version: int) -> str:
    """``ip saddr { ... } `` (or ip6) for the trusted DHCP servers; empty when any server is trusted."""
    servers = variables.get(name) or ()
    try:
        checked = [str(ipaddress.ip_address(server)) for server in servers]
    except ValueError:
        checked = []
    if len(checked) != len(servers) or any(ipaddress.ip_address(s).version != version for s in checked):
        raise NwfilterError(f"{name} must be a list of IPv{version} addresses")
    family = "ip" if version == 4 else "ip6"
    return f"{family} saddr {{ {', '.join(checked)} }} " if checked else ""


LOCK_SPEC = {"IP": "type ipv4_addr; size 1; flags dynamic;", "IPV6": "type ipv6_addr; size 1; flags dynamic;"}
# What a VM may not own (as the learner: 0.0.0.0, multicast, class E, broadcast; IPv6: loopback, multicast)
NOT_OWNED4 = "{ 0.0.0.0, 224.0.0.0-255.255.255.255 }"
NOT_OWNED6 = "{ ::1, ff00::/8 }"
# A DHCP ACK in a UDP datagram, by offsets from the UDP header (@th: IP options
# are skipped by the kernel): BOOTREPLY (op 2 at 8), chaddr at 36, yiaddr at 24,
# option 53 (message type) = 5 as the first option, after the magic cookie at 244
DHCP_ACK = "@th,64,8 2 @th,1952,32 0x63825363 @th,1984,24 0x350105"
DHCP_YIADDR = "@th,192,32"


def lock_sets(binding: Binding, variables: Mapping[str, Tuple[str, ...]], ipv6: bool) -> Dict[str, str]:
    """{variable: set name}: the sets of size 1 in which the kernel locks a
    learning port's first address. The name carries a digest of what decides
    the lock (MAC, mode, trusted servers): re-applying the same learning rules
    keeps a lock, a changed binding starts with an empty set."""
    key = " ".join([binding.mac] + [f"{name}={','.join(variables.get(name) or ())}"
                                    for name in ("CTRL_IP_LEARNING", "DHCPSERVER", "DHCPSERVERV6")])
    tag = digest([key])[:8]
    return {name: chain_name(binding.portdev, f"lock{suffix}-{tag}")
            for name, suffix in (("IP", "4"), ("IPV6", "6")) if name == "IP" or ipv6}


def lock_variable(set_name: str) -> str:
    """IP or IPV6: what a lock set (named by lock_sets) holds."""
    return "IPV6" if "/lock6-" in set_name else "IP"


def compile_learning(binding: Binding, variables: Mapping[str, Tuple[str, ...]], port_id: int,
                     ipv6: bool = False) -> PortProgram:
    """libvirt's rules while the VM's IP address is being learned: only its own
    MAC may send; mode any: the first IPv4 source or ARP sender address (and
    IPv6 global source while ``ipv6``) is locked in a set of size 1 by the
    kernel itself, and only it passes from then on; mode dhcp only DHCP (and
    DHCPv6 with neighbour discovery from link-local addresses, which DHCPv6
    needs, while ``ipv6``). In both modes a DHCP ACK to the VM from a trusted
    server locks its yiaddr first (docs/learner.md)."""
    builder = _Builder(binding, port_id)
    key = f'"{binding.portdev}"'
    builder.element("bridge", "from_vm", key, "o")
    builder.element("bridge", "to_vm", key, "i")
    out, into = builder.chain("bridge", "o"), builder.chain("bridge", "i")
    mac = binding.mac
    mode = (variables.get("CTRL_IP_LEARNING") or ("any",))[0].lower()
    locks = lock_sets(binding, variables, ipv6 and mode != "dhcp")
    servers4 = _servers(variables, "DHCPSERVER", 4)
    # no verdict: the reply goes on to the rules below (a full set: nothing happens)
    into.append(f"ether type 0x0800 {servers4}udp sport 67 udp dport 68 {DHCP_ACK} @th,288,48 0x{mac.replace(':', '')} "
                f"{DHCP_YIADDR} != 0 @th,192,8 < 224 add @{locks['IP']} {{ {DHCP_YIADDR} }}")
    out.append(f"ether saddr != {mac} drop")
    if mode == "dhcp":
        out.append("ether type 0x0800 udp sport 68 udp dport 67 accept")
        into.append(f"ether daddr {{ {mac}, {BROADCAST} }} ether type 0x0800 {servers4}"
                    "udp sport 67 udp dport 68 accept")
        if ipv6:
            link_local = "ether type 0x86dd ip6 saddr fe80::/10"
            out.append(f"{link_local} udp sport 546 udp dport 547 accept")
            out.append("ether type 0x86dd ip6 saddr { ::, fe80::/10 } icmpv6 type "
                       "{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept")
            into.append(f"ether daddr {mac} {link_local} {_servers(variables, 'DHCPSERVERV6', 6)}"
                        "udp sport 547 udp dport 546 accept")
            into.append(f"{link_local} icmpv6 type {{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept")
        into.append("drop")
    else:
        # a full set makes "add" fail for any other address: the frame falls through to the drop
        out.append("ether type 0x0800 ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept")  # DHCP before any address
        out.append(f"ether type 0x0800 ip saddr != {NOT_OWNED4} add @{locks['IP']} {{ ip saddr }} accept")
        out.append(f"ether type 0x0806 arp htype 1 arp ptype 0x0800 arp hlen 6 arp plen 4 arp saddr ether {mac} "
                   "arp saddr ip 0.0.0.0 accept")  # an address probe (RFC 5227) claims nothing
        out.append(f"ether type 0x0806 arp htype 1 arp ptype 0x0800 arp hlen 6 arp plen 4 arp saddr ether {mac} "
                   f"arp saddr ip != {NOT_OWNED4} add @{locks['IP']} {{ arp saddr ip }} accept")
        if ipv6:
            # what only routers and DHCPv6 servers send, never a VM still learning its address
            out.append("ether type 0x86dd icmpv6 type { nd-router-advert, nd-redirect } drop")
            out.append("ether type 0x86dd udp sport 547 drop")
            out.append("ether type 0x86dd ip6 saddr { ::, fe80::/10 } accept")  # DAD and neighbour discovery
            out.append(f"ether type 0x86dd ip6 saddr != {NOT_OWNED6} add @{locks['IPV6']} {{ ip6 saddr }} accept")
    out.append("drop")
    sets = tuple(("bridge", name, LOCK_SPEC[variable]) for variable, name in sorted(locks.items()))
    return builder.program(learning=True, sets=sets)


@dataclass(frozen=True)
class ShapeChange:
    """The shapes around a change: ``kernel``, those in our tables before it
    (name -> their chains and sets, as the store records them); ``used``,
    those that ports use after it (name -> parts, for the dispatch chains);
    ``install``, those whose chains and sets are to be (re)written."""

    kernel: Mapping[str, Tuple[Tuple[Tuple[str, str], ...], Sets]] = field(default_factory=dict)
    used: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    install: Tuple[Shape, ...] = ()
    foreign: Tuple[Tuple[str, str, str], ...] = ()  # elements of their sets (family, set, element) that go

    @property
    def dispatch_changes(self) -> bool:
        """Whether shapes come or go, and with them the dispatch chains' rules."""
        return set(self.kernel) != set(self.used)

    @classmethod
    def fresh(cls, programs: Sequence[PortProgram]) -> "ShapeChange":
        """Into tables without shapes: those of ``programs`` are installed."""
        shapes = {p.shape.name: p.shape for p in programs if p.shape is not None}
        return cls({}, {name: shape.parts for name, shape in shapes.items()}, tuple(shapes.values()))


def _shape_lines(shapes: ShapeChange, base: bool) -> Tuple[List[str], List[str], List[str]]:
    """Of the shapes: what must exist first (with ``base``: whatever the store
    says is in our tables, ``add``ed so that no delete fails), what goes
    (dispatch rules, shapes no port uses) and what comes (new shapes, dispatch rules)."""
    first, going, coming = [], [], []
    gone = sorted(set(shapes.kernel) - set(shapes.used))
    if base:
        for name in sorted(shapes.kernel):
            chains, sets = shapes.kernel[name]
            first += [f"add set {family} {TABLE} {set_name} {{ {spec} }}" for family, set_name, spec in sets if spec]
            first += [f"add chain {family} {TABLE} {chain}" for family, chain in chains]
    going += [f"delete element {family} {TABLE} {name} {{ {element} }}" for family, name, element in shapes.foreign]
    rewrite = base or shapes.dispatch_changes
    if rewrite:
        going += [f"flush chain {family} {TABLE} {chain}" for family, chain in sorted(DISPATCH)]
    for name in gone:
        chains, sets = shapes.kernel[name]
        going += [f"flush chain {family} {TABLE} {chain}" for family, chain in chains]
        going += [f"delete chain {family} {TABLE} {chain}" for family, chain in chains]
        going += [f"delete set {family} {TABLE} {set_name}" for family, set_name, _spec in sets]
    for shape in shapes.install:
        coming += [f"add set {family} {TABLE} {name} {{ {spec} }}" for family, name, spec in shape.sets]
        for family, name, _rules in shape.chains:
            coming += [f"add chain {family} {TABLE} {name}", f"flush chain {family} {TABLE} {name}"]
        coming += [f"add chain {family} {TABLE} {name} {{\n" + "\n".join(rules) + "\n}"
                   for family, name, rules in shape.chains if rules]
    if rewrite:
        for (family, chain), part in sorted(DISPATCH.items()):
            rules = [dispatch_rule(name, part) for name, parts in sorted(shapes.used.items()) if part in parts]
            if rules:
                coming.append(f"add chain {family} {TABLE} {chain} {{\n" + "\n".join(rules) + "\n}")
    return first, going, coming


def transaction(install: Sequence[PortProgram], remove: Sequence[str], live: LiveState, base: bool = True,
                shapes: Optional[ShapeChange] = None, ids: bool = True) -> str:
    """One nft script: our tables and base chains (idempotent), then every
    installed port's chains refilled and map elements replaced where they
    change, and every removed port's deleted. Nothing outside our two tables
    is named. ``base`` (re)creates our tables and base chains: needed when
    they are missing; it costs a validation of every port's jumps.

    What is added is written as chain blocks (``add chain ... { rules }``)
    and map declarations with elements: nft then reads only the tables
    before it commits, where ``add rule`` and ``add element`` make it read
    every chain of the ruleset first (tens of ms with 1000 ports). Deleting
    still does (nft 1.0.6), so a change without deletions is the cheap one.

    Everything that goes comes before everything that comes: a port id (a
    mark map's key) freed by one port may be taken by another in the same
    transaction. Every chain filled is flushed first, even one ``live`` says
    is new: a chain the store does not know of (an interrupted change, someone
    else's) is replaced, never appended to. Without ``ids``, ``base`` leaves
    the id chains as they are (nft_layout.base_script)."""
    shapes = shapes or ShapeChange.fresh(install)
    first, going, adding = _shape_lines(shapes, base)
    gone_shapes = set(shapes.kernel) - set(shapes.used)  # their sets go whole, elements and all
    script = layout.BASE if ids else layout.base_script(layout.FROM_MASK, layout.TO_SHIFT, ids=False)
    lines = ([script.rstrip("\n")] if base else []) + first
    elements_by_map: Dict[Tuple[str, str], List[str]] = {}
    members_by_set: Dict[Tuple[str, str], List[str]] = {}
    specs: Dict[Tuple[str, str], str] = {}
    programs = {p.portdev: p for p in install}
    empty = PortLive(set(), set())
    for portdev in sorted(set(programs) | set(remove)):
        now = live.get(portdev, empty)
        program = programs.get(portdev)
        members = set(program.members) if program else set()
        for family, name, element in sorted(now.members - members):
            if owner_of(name) in gone_shapes:
                continue
            if base:  # may be gone from the kernel: ``add`` first
                lines.append(f"add element {family} {TABLE} {name} {{ {element} }}")
            lines.append(f"delete element {family} {TABLE} {name} {{ {element} }}")
        if program is not None and program.shape is not None:
            specs.update(((f, n), spec) for f, n, spec in program.shape.sets)
            # with ``base``, ``now`` may be the kernel's, which names no element: all are added (``add`` keeps any there)
            for family, name, element in sorted(members - (set() if base else now.members)):
                members_by_set.setdefault((family, name), []).append(element)
        chains = {(f, n) for f, n, _rules in program.chains} if program else set()
        elements = {(f, m, k) for f, m, k, _target in program.elements} if program else set()
        rules = {(f, n): r for f, n, r in program.chains} if program else {}
        sets = {(f, n): spec for f, n, spec in program.sets} if program else {}
        same = {c for c in chains if now.holds(c, digest(rules[c]))}
        # What a port had may be gone from the kernel (a reboot, a flush): with
        # ``base``, ``add`` it first (idempotent) so flush and delete never fail.
        if base:
            lines += [f"add chain {family} {TABLE} {name}" for family, name in sorted(now.chains - same)]
        for family, vmap, key in sorted(now.elements - elements):
            lines.append(f"add element {family} {TABLE} {vmap} {{ {key} : jump {now.target((family, vmap, key), portdev)} }}")
            lines.append(f"delete element {family} {TABLE} {vmap} {{ {key} }}")
        lines += [f"flush chain {family} {TABLE} {name}" for family, name in sorted(now.chains - same)]
        lines += [f"delete chain {family} {TABLE} {name}" for family, name in sorted(now.chains - chains)]
        # address locks: kept (with their element) while the port keeps them, deleted with the rules using them
        gone = sorted(now.sets - set(sets))
        if base:
            lines += [f"add set {family} {TABLE} {name} {{ {LOCK_SPEC[lock_variable(name)]} }}" for family, name in gone]
        lines += [f"delete set {family} {TABLE} {name}" for family, name in gone]
        if program is None:
            continue
        adding += [f"add set {family} {TABLE} {name} {{ {spec} }}" for (family, name), spec in sorted(sets.items())]
        for family, name, _rules in program.chains:
            if (family, name) not in now.chains:
                adding += [f"add chain {family} {TABLE} {name}", f"flush chain {family} {TABLE} {name}"]
        for family, name, chain_rules in program.chains:
            if (family, name) not in same and chain_rules:
                adding.append(f"add chain {family} {TABLE} {name} {{\n" + "\n".join(chain_rules) + "\n}")
        for family, vmap, key, target in program.elements:
            if (family, vmap, key) not in now.elements:
                elements_by_map.setdefault((family, vmap), []).append(f"{key} : jump {target}")
    adding += [f"add map {family} {TABLE} {vmap} {{ type {MAP_KEYS[family, vmap]} : verdict; elements = {{ "
               + ", ".join(found) + " } }" for (family, vmap), found in sorted(elements_by_map.items())]
    # a set's declaration with elements, as for maps: nft reads no chain for it
    adding += [f"add set {family} {TABLE} {name} {{ {specs[family, name]} elements = {{ " + ", ".join(found) + " } }"
               for (family, name), found in sorted(members_by_set.items())]
    return "\n".join(lines + going + adding) + "\n"
