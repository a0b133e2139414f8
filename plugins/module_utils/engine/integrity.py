# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Does the kernel hold what the store says we installed? What our two
tables hold, compared with the store's port records: our tables, maps and
base chains, every port's chains and its verdict-map elements (present,
leading to the port's own chain). A chain holds what we put there when its
rules' content (``rule_content``) is the one read back after our commit.
Ports of ours the store does not know are stale. Pure logic: the kernel is
read by ``Nft``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from .nft_layout import BASE, TABLE, Chain, Kernel, PortLive, map_target, owner_of
from .set_members import decode, encode, keyed_port

NO_RECORD = "the store has no record of what it installed"
NOT_READ_BACK = "was not read back after it was installed"
NO_PORT_USES = "which no port uses"


def _base_layout() -> Tuple[Set[str], Set[Tuple[str, str]], Dict[Chain, int]]:
    """Our tables, maps and base chains with their rule counts, as BASE creates them."""
    tables, maps, rules = set(), set(), {}
    for line in BASE.splitlines():
        words = line.split()
        if words[:2] == ["add", "table"]:
            tables.add(words[2])
        elif words[:2] == ["add", "map"]:
            maps.add((words[2], words[4]))
        elif words[:2] == ["add", "chain"] and "hook" in words:
            rules[(words[2], words[4])] = 0
        elif words[:2] == ["add", "rule"]:
            rules[(words[2], words[4])] += 1
    return tables, maps, rules


BASE_TABLES, BASE_MAPS, BASE_CHAINS = _base_layout()
# chains of BASE without a hook: the id chains and the dispatch chains (whose rules follow the shapes)
FIXED_CHAINS = tuple(sorted({(line.split()[2], line.split()[4]) for line in BASE.splitlines()
                             if line.startswith("add chain ") and "hook" not in line} - set(BASE_CHAINS)))


def base_contents(contents: Mapping[Chain, str]) -> Dict[str, str]:
    """Our base, id and dispatch chains' content, as the store keeps it (keyed "family name")."""
    return {f"{family} {name}": contents[(family, name)] for family, name in list(BASE_CHAINS) + list(FIXED_CHAINS)
            if (family, name) in contents}


@dataclass
class Findings:
    problems: List[str] = field(default_factory=list)  # one readable line each
    base: bool = False  # a table, map or base chain is missing or altered
    damaged: Set[str] = field(default_factory=set)  # ports to put back
    stale: Set[str] = field(default_factory=set)  # ports of ours the store does not know
    foreign: List["Foreign"] = field(default_factory=list)  # elements of no port in our sets
    stale_shapes: Dict[str, Tuple[Tuple[Chain, ...], Tuple[Tuple[str, str, str], ...]]] = \
        field(default_factory=dict)  # shapes no port uses: their chains and sets

    def __bool__(self) -> bool:
        return bool(self.problems)


def compare(records: Mapping[str, Optional[dict]], kernel: Kernel, base: Optional[Mapping[str, str]]) -> Findings:
    """``records``: per bound port, what the store says it installed (None:
    no record, so it has to be (re)installed); ``base``: our base chains'
    content read back when they were installed (``base_contents``)."""
    found = Findings()
    for family in sorted(BASE_TABLES - kernel.tables) if records else ():  # no binding, no tables
        found.problems.append(f"table {family} {TABLE} is missing")
    if records and BASE_TABLES <= kernel.tables:
        for family in sorted(kernel.dormant):
            found.problems.append(f"table {family} {TABLE} is dormant: none of its chains sees a packet")
        for family, name in sorted(BASE_MAPS - kernel.maps):
            found.problems.append(f"map {family} {TABLE} {name} is missing")
        for chain, count in sorted(BASE_CHAINS.items()):
            if chain not in kernel.hooked or kernel.rules.get(chain) != count:
                found.problems.append(f"base chain {chain[0]} {TABLE} {chain[1]} is missing or altered")
            elif chain in kernel.dropping:
                found.problems.append(f"base chain {chain[0]} {TABLE} {chain[1]} drops what no rule of ours does "
                                      "(its policy is not accept)")
            elif base is None or base.get(" ".join(chain)) != kernel.contents.get(chain):
                found.problems.append(f"base chain {chain[0]} {TABLE} {chain[1]} has other rules than we put there"
                                      if base else f"what base chain {chain[0]} {TABLE} {chain[1]} holds "
                                      f"{NOT_READ_BACK}")
        for chain in FIXED_CHAINS:  # one line for all: the id chains are 512
            if chain not in kernel.rules:
                found.problems.append(f"chain {chain[0]} {TABLE} {chain[1]} is missing")
                break
            if base is None or base.get(" ".join(chain)) != kernel.contents.get(chain):
                found.problems.append(f"chain {chain[0]} {TABLE} {chain[1]} has other rules than we put there"
                                      if base and " ".join(chain) in base
                                      else f"what chain {chain[0]} {TABLE} {chain[1]} holds {NOT_READ_BACK}")
                break
    found.base = bool(found.problems)
    live = kernel.live()
    for portdev in sorted(records):
        problem = _port_problem(portdev, records[portdev], kernel, live.get(portdev, PortLive(set(), set())))
        if problem:
            found.damaged.add(portdev)
            found.problems.append(f"{portdev}: {problem}")
    for portdev in sorted(set(live) - set(records)):
        found.stale.add(portdev)
        found.problems.append(f"{portdev}: chains of a port that has no binding")
    _compare_shapes(records, kernel, found)
    return found


Foreign = Tuple[str, str, bytes, bytes, Optional[str]]  # (family, set, key, key end, as nft syntax or None)


def foreign_members(kernel: Kernel, members: Iterable[Tuple[str, str, str]], specs: Mapping[Chain, str],
                    keep: Collection[bytes] = ()) -> Dict[Chain, List[Foreign]]:
    """Per set of a shape that ``members`` (family, set, element) use, the
    elements the kernel holds beyond them, except those keyed by ``keep``
    (ports left as they are); with their nft syntax where it is safe."""
    expected: Dict[Chain, Set[Tuple[bytes, bytes]]] = {}
    for family, name, element in members:
        expected.setdefault((family, name), set()).add(encode(specs[family, name], element))
    shapes = {owner_of(name) for _family, name in expected}
    kept, lengths = set(keep), {len(prefix) for prefix in keep}  # a set: a repair keeps every port but a few
    found: Dict[Chain, List[Foreign]] = {}
    for (family, name), held in sorted(kernel.members.items()):
        if owner_of(name) in shapes:
            extra = [(key, end) for key, end in sorted(held - expected.get((family, name), set()))
                     if not any(key[:length] in kept for length in lengths)]
            if extra:
                found[(family, name)] = [(family, name, key, end, decode(specs[family, name], key, end))
                                         for key, end in extra]
    return found


def _compare_shapes(records: Mapping[str, Optional[dict]], kernel: Kernel, found: Findings) -> None:
    """The shapes' sets hold exactly the elements of the ports that use
    them (a port's own are compared in _port_problem); our chains and sets
    of a shape no port uses are stale."""
    specs: Dict[Chain, str] = {}
    members: List[Tuple[str, str, str]] = []
    for record in records.values():
        shape = record.get("shape") if record else None
        if shape is not None:
            specs.update(((family, name), spec) for family, name, spec in shape["sets"])
            members += [tuple(member) for member in record["members"]]
    used = {owner_of(name) for _family, name in specs}
    by_id = {port_id: port for port, port_id in kernel.port_ids().items()}
    for (family, name), extra in foreign_members(kernel, members, specs).items():
        found.foreign += extra
        keyed = {keyed_port(family, key, end, by_id) for _family, _name, key, end, _text in extra}
        ports = keyed & set(records)
        found.damaged |= ports  # an element keyed by a port of ours changes what its rules let through
        found.problems += [f"{port}: set {family} {name} holds an element we did not put there" for port in sorted(ports)]
        if keyed - ports:
            found.problems.append(f"set {family} {name} holds elements we did not put there")
    if any(record is None for record in records.values()):
        return  # a shape no record names may be a port's without one
    found.stale_shapes.update(unused_shapes(kernel, used))
    for shape in sorted(found.stale_shapes):
        found.problems.append(f"chains and sets of {shape}, {NO_PORT_USES}")


def unused_shapes(kernel: Kernel, used: Collection[str]) -> Dict[str, Tuple[tuple, tuple]]:
    """The chains and sets of the shapes in ``kernel`` that are not ``used``."""
    found: Dict[str, Tuple[tuple, tuple]] = {}
    for family, name in sorted(kernel.members):
        shape = owner_of(name)
        if shape not in used:
            chains = tuple(sorted(chain for chain in kernel.rules if chain[1].startswith(f"{shape}/")))
            sets = found.setdefault(shape, (chains, ()))[1]
            found[shape] = (chains, sets + ((family, name, ""),))
    return found


def _chain_problem(chain: list, kernel: Kernel) -> Optional[str]:
    family, name = chain[0], chain[1]
    if (family, name) not in kernel.rules:
        return f"chain {family} {name} is missing"
    if len(chain) > 3 and kernel.rules[(family, name)] != chain[3]:
        return f"chain {family} {name} has {kernel.rules[(family, name)]} rules, not {chain[3]}"
    if len(chain) < 5:
        return f"what chain {family} {name} holds {NOT_READ_BACK}"
    if kernel.contents.get((family, name)) != chain[4]:
        return f"chain {family} {name} has other rules than we put there"
    return None


def _shape_problem(record: dict, kernel: Kernel) -> Optional[str]:
    """What of the port's shape (its chains, its elements) the kernel lacks."""
    shape = record["shape"]
    for chain in shape["chains"]:
        problem = _chain_problem(chain, kernel)
        if problem:
            return problem
    specs = {(family, name): spec for family, name, spec in shape["sets"]}
    for family, name, element in record["members"]:
        if encode(specs[family, name], element) not in kernel.members.get((family, name), ()):
            return f"element {element} of set {family} {name} is missing"
    return None


def _port_problem(portdev: str, record: Optional[dict], kernel: Kernel, now: PortLive) -> Optional[str]:
    if record is None:
        return NO_RECORD
    for chain in record["chains"]:
        problem = _chain_problem(chain, kernel)
        if problem:
            return problem
    problem = _shape_problem(record, kernel) if record.get("shape") else None
    if problem:
        return problem
    for element in record["elements"]:
        family, vmap, key = element[:3]
        target = kernel.elements.get((family, vmap, key))
        if target is None:
            return f"element {key} of map {family} {vmap} is missing"
        if target != (element[3] if len(element) > 3 else map_target(portdev, vmap)):
            return f"element {key} of map {family} {vmap} leads to {target}"
    extra = sorted(now.chains - {(c[0], c[1]) for c in record["chains"]})
    if extra:
        return f"chain {' '.join(extra[0])} was not installed by us"
    elements = sorted(now.elements - {(e[0], e[1], e[2]) for e in record["elements"]})
    if elements:
        return f"element {elements[0][2]} of map {elements[0][0]} {elements[0][1]} was not installed by us"
    return None
