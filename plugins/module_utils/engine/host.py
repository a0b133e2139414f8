# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``Host``: the one facade the modules, the learner and the tests use.

Every change runs the same cycle under the store's lock: load the stored
state, compute the new one, compile every port it touches (any error: nothing
changes), apply one nft transaction, then write the store.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Collection, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, cast

from .bounds import check_definition, check_host_rules
from .errors import NwfilterError
from .model import Binding, Filter
from .nft_layout import DISPATCH, ID_MAPS, MAX_PORT_ID, REMOVE_ALL, Kernel, PortLive, digest, listed_keys, shape_parts
from .nft_generation import Generation, Marker, next_to
from .nft_run import Nft
from .overlaps import address_kinds
from .parallel import map_on_cores
from .set_members import port_prefixes
from .lazy_map import LazyMap
from .port_index import ADDRESSES, DIGEST, ID, LAYER3, OWNER, ROOT, RULES, SHAPE, PortIndex, new_entry, owner_key
from .store import DEFAULT_ROOT, REINSTALLED_FOR, STORE_VERSION, Store, binding_digest, index_entry
from .xml_form import binding_to_xml, filter_to_xml

FEW_PORTS = 16  # a report of up to this many reads their elements by key, not the table's listing

if TYPE_CHECKING:
    from types import ModuleType

    from .integrity import Findings, Foreign
    from .networks import Networks
    from .nft_compile import PortProgram, Shape, ShapeChange
    from .ruleset import ResolvedRule, Ruleset


# The resolver and the compiler are imported when something is compiled, the
# comparison with the kernel when our tables are listed, the netlink removals
# when something is removed and the built-in filters when a tree is walked: a
# change that compiles nothing (the fleet's unchanged rerun) loads none of
# them, which spares a module run about 40 ms of compiling their source from
# Ansible's payload. Each is asked for per port: the import is looked up once.
# One function each, not importlib: Ansible puts in a module's payload only
# what its import statements name.
@functools.lru_cache(maxsize=None)
def _resolver() -> "ModuleType":
    from . import resolver  # pylint: disable=import-outside-toplevel
    return resolver


@functools.lru_cache(maxsize=None)
def _compiler() -> "ModuleType":
    from . import nft_compile  # pylint: disable=import-outside-toplevel
    return nft_compile


@functools.lru_cache(maxsize=None)
def _integrity() -> "ModuleType":
    from . import integrity  # pylint: disable=import-outside-toplevel
    return integrity


@functools.lru_cache(maxsize=None)
def _nft_delete() -> "ModuleType":
    from . import nft_delete  # pylint: disable=import-outside-toplevel
    return nft_delete


@functools.lru_cache(maxsize=None)
def _builtin_filters() -> Mapping[str, Filter]:
    from .builtin_filters import BUILTIN_FILTERS  # pylint: disable=import-outside-toplevel
    return BUILTIN_FILTERS


@dataclass
class ChangeResult:
    changed: bool
    rebuilt: List[str] = field(default_factory=list)
    learning: List[str] = field(default_factory=list)
    before: Optional[str] = None
    after: Optional[str] = None
    # check mode only: ports not compiled because their tree names filters not defined yet
    # (portdev -> those filters); an earlier task of the same run may define them
    unchecked: Dict[str, List[str]] = field(default_factory=dict)
    # a user filter overriding a built-in: per port, the resolved rules it takes away
    lost: Dict[str, List[str]] = field(default_factory=dict)
    repaired: List[str] = field(default_factory=list)  # what the kernel lacked and got back (or would)
    skipped: List[str] = field(default_factory=list)  # restore(): bindings it could not read or compile
    removed: List[str] = field(default_factory=list)  # set_bindings(): the ports it unbound


@dataclass
class _State:
    """The stored state. Bindings, learned addresses, port records and the
    index's shards are read on first use; the index (``port_index``) has what
    a change needs of each port without reading it, and totals over all."""
    filters: Dict[str, Filter]  # the user's own (built-ins are overlaid, not stored)
    bindings: LazyMap  # of Binding
    learned: LazyMap  # of {"IP": [...], "IPV6": [...]}
    index: PortIndex  # per port with an id: its index entry (store.index_entry)
    installed: LazyMap  # per port, what it has in our tables as last applied ({"chains", "elements", "rules", "sets"})

    def copy(self) -> "_State":
        """A state to change; model objects are immutable, and the lazy maps
        and the index record what is set in them, so that only that is written."""
        return _State(dict(self.filters), self.bindings.copy(), self.learned.copy(), self.index.copy(),
                      self.installed.copy())

    def live(self, ports: Set[str]) -> Dict[str, PortLive]:
        records = {p: self.installed.get(p) for p in ports}
        return {p: PortLive({(c[0], c[1]) for c in record["chains"]},
                            {(e[0], e[1], e[2]) for e in record["elements"]},
                            {(c[0], c[1]): c[2] for c in record["chains"] if len(c) > 2},
                            {(s[0], s[1]) for s in record.get("sets", [])},
                            {(c[0], c[1]): c[4] for c in record["chains"] if len(c) > 4},
                            {(m[0], m[1], m[2]) for m in record.get("members", [])},
                            {(e[0], e[1], e[2]): e[3] for e in record["elements"] if len(e) > 3},
                            {(x[0], x[1]): x[2] for x in record["shape"]["sets"]} if "shape" in record else {})
                for p, record in records.items() if record is not None}

    def shapes(self) -> Dict[str, str]:
        """Per shape in use, one of its ports."""
        return self.index.shapes()

    def shape_change(self, kernel: Mapping[str, str], used: Mapping[str, str], install: Collection["Shape"],
                     base: bool, before: "_State", stale: Optional[Mapping[str, Tuple[tuple, tuple]]] = None,
                     foreign: Sequence[Tuple[str, str, str]] = ()) -> "ShapeChange":
        """The shapes around a change from ``before`` to this state: ``kernel``
        and ``used`` name a port of each shape in our tables before it (in
        ``before``'s records) and after it (in this state's); ``stale``, the
        chains and sets of shapes only the kernel has; ``foreign``, elements
        in their sets that no port of ours has."""
        records = {name: before.installed.get(port) for name, port in kernel.items()}
        used_records = {name: self.installed.get(port) for name, port in used.items()}
        return _compiler().ShapeChange(
            {**(stale or {}),
             **{name: (tuple((c[0], c[1]) for c in r["shape"]["chains"]), tuple(tuple(x) for x in r["shape"]["sets"]))
                for name, r in records.items() if r is not None}},
            {name: shape_parts(name, (c[1] for c in r["shape"]["chains"])) for name, r in used_records.items()
             if r is not None},
            tuple(shape for shape in {s.name: s for s in install}.values() if base or shape.name not in kernel),
            tuple(foreign))

    def as_files(self) -> tuple:
        return self.filters, self.bindings, self.learned, self.installed, self.index

    def _indexed(self, portdev: str) -> Optional[list]:
        """The port's index entry, when it tells of the binding (not when the
        binding was read anyway: it may have changed since)."""
        if self.bindings.loaded(portdev) is not None:
            return None
        entry = self.index.get(portdev)
        return entry if entry is not None and entry[ROOT] is not None else None

    def root(self, portdev: str) -> str:
        """The root filter of a binding."""
        entry = self._indexed(portdev)
        return entry[ROOT] if entry else self.bindings[portdev].filterref.filter

    def holds(self, binding: Binding) -> bool:
        """Whether this very binding is stored."""
        if binding.portdev not in self.bindings:
            return False
        entry = self._indexed(binding.portdev)
        return entry[DIGEST] == binding_digest(binding) if entry else self.bindings[binding.portdev] == binding

    def owner(self, portdev: str) -> Optional[str]:
        entry = self._indexed(portdev)
        return entry[OWNER] if entry else self.bindings[portdev].owner_uuid

    def installing(self, program: "PortProgram") -> None:
        """Record what this port's program puts in the kernel."""
        record = {"chains": sorted([f, n, digest(rules), len(rules)] for f, n, rules in program.chains),
                  # an id map's element leads to a chain of the port's id (nft_layout.ID_MAPS)
                  "elements": sorted([f, m, k] + ([target] if m in ID_MAPS else [])
                                     for f, m, k, target in program.elements),
                  "rules": program.rule_count}
        if program.sets:
            record["sets"] = sorted([f, n] for f, n, _spec in program.sets)
        if program.shape is not None:
            record["shape"] = _shape_record(program.shape)
            record["members"] = sorted(list(m) for m in program.members)
        self.installed[program.portdev] = record
        self.index.set(program.portdev, index_entry(self.index.id(program.portdev), record,
                                                    self.bindings[program.portdev]))

    def all_filters(self) -> Dict[str, Filter]:
        return {**_builtin_filters(), **self.filters}


# a shape's part of its ports' records by its name (a digest of its content), computed once:
# the ports of a bulk change mostly share a shape, and its digests cost half of each record
_SHAPE_RECORDS: Dict[str, Tuple[list, list]] = {}


def _shape_record(shape: "Shape") -> dict:
    found = _SHAPE_RECORDS.get(shape.name)
    if found is None:
        if len(_SHAPE_RECORDS) > 256:
            _SHAPE_RECORDS.clear()
        found = _SHAPE_RECORDS[shape.name] = (
            sorted([f, n, digest(rules), len(rules)] for f, n, rules in shape.chains), sorted(list(s) for s in shape.sets))
    return {"name": shape.name, "chains": [list(c) for c in found[0]], "sets": [list(s) for s in found[1]]}


def _tree(filters: Mapping[str, Filter], name: str) -> Set[str]:
    """Names of the filters reachable from ``name`` (missing ones included)."""
    seen: Set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            if current in filters:
                todo.extend(filters[current].references())
    return seen


def _learning_mode(binding: Binding) -> str:
    return (binding.parameters.get("CTRL_IP_LEARNING") or ("any",))[0].lower()


def _bindings_xml(bindings: Mapping[str, Binding]) -> str:
    return "".join(binding_to_xml(bindings[p]) for p in sorted(bindings))


def describe(ruleset: "Ruleset") -> List[str]:
    """The resolved rules, one readable line each (nwfilter_info)."""
    from .ruleset import Jump  # pylint: disable=import-outside-toplevel  # loaded with the resolver
    lines = []
    for direction in ("out", "in"):
        for chain in ruleset.for_direction(direction):
            for entry in chain.entries:
                if isinstance(entry, Jump):
                    lines.append(f"{direction} {chain.name}: jump {entry.chain} (priority {entry.priority})")
                else:
                    lines.append(f"{direction} {chain.name}: {_rule_line(entry)}")
    lines += [f"{rule.direction} ip: {_rule_line(rule)}" for rule in ruleset.ip_rules]
    return lines


def _rule_line(rule: "ResolvedRule") -> str:
    matches = " ".join(f"{name}{'!=' if negate else '='}{value}" for name, value, negate in rule.matches)
    return f"{rule.priority} {rule.action} {rule.protocol or 'all-frames'} {matches}".rstrip()


def _extra(state: _State, binding: Binding) -> Dict[str, List[str]]:
    learned = state.learned.get(binding.portdev, {})
    return {name: values for name, values in learned.items() if values and name not in binding.parameters}


def _undefined(state: _State, ports: Set[str]) -> Dict[str, List[str]]:
    """Per port, the filters its tree references that are not defined."""
    filters = state.all_filters()
    found = {p: sorted(_tree(filters, state.bindings[p].filterref.filter) - set(filters)) for p in ports}
    return {p: names for p, names in found.items() if names}


def _lost_rules(old: _State, new: _State, ports: Set[str]) -> Dict[str, List[str]]:
    """Per port, the resolved rules in force before and not after (ports still
    learning their address have none to lose)."""
    lost = {}
    for portdev in sorted(ports):
        binding = old.bindings[portdev]
        try:
            before = describe(_resolver().resolve(old.all_filters(), binding, _extra(old, binding)))
            after = set(describe(_resolver().resolve(new.all_filters(), binding, _extra(new, binding))))
        except _resolver().MissingVariables:
            continue
        gone = [line for line in before if line not in after]
        if gone:
            lost[portdev] = gone
    return lost


def _check_learning_trees(old: _State, new: _State, ports: Set[str]) -> None:
    """While a binding learns its address, its tree may not gain variables
    without a value: the learner looks only for IP and IPV6 as they were
    missing when it started, and anything else could never be filled in."""
    memo: Dict[tuple, Set[str]] = {}

    def missing(state: _State, binding: Binding) -> Set[str]:
        # only the variables' names matter: ports with the same tree and names share one walk
        extra = _extra(state, binding)
        key = (state is new, binding.filterref.filter, frozenset(binding.parameters), frozenset(extra))
        if key not in memo:
            memo[key] = _resolver().missing_variables(state.all_filters(), binding, extra)
        return memo[key]

    for portdev in sorted(ports):
        binding = old.bindings[portdev]
        before = missing(old, binding)
        if not before or _learning_mode(binding) == "none":
            continue
        added = missing(new, binding) - before
        if added:
            raise NwfilterError(f"the new tree would add {', '.join(sorted(added))} while its address is "
                                "being learned", f"binding {portdev!r}")


def _adopt_port_ids(state: _State, kernel: Kernel, ports: Set[str]) -> None:
    """Ports the store lost the record of keep the id the kernel holds for
    them, where no other port has it: an id is never handed to another port
    while the kernel still uses it."""
    for portdev, port_id in sorted(kernel.port_ids().items()):
        if portdev in ports and portdev not in state.index and not state.index.used_ids() >> port_id & 1:
            state.index.set(portdev, new_entry(port_id))


def _resolved(state: _State, portdev: str) -> Tuple[Optional["Ruleset"], Optional["PortProgram"]]:
    """The port's resolved rules, or, while its address is being learned,
    the program that learns it (a report needs no more than this)."""
    binding = state.bindings[portdev]
    resolver = _resolver()
    try:
        return resolver.resolve(state.all_filters(), binding, _extra(state, binding)), None
    except resolver.MissingVariables as exc:
        if exc.learnable and _learning_mode(binding) != "none":
            port_id = state.index.id(portdev)
            return None, _compiler().compile_learning(binding, binding.parameters, port_id, "IPV6" in exc.names)
        raise


def _beyond(kernel: Kernel, programs: Sequence["PortProgram"], kept: Collection[str]) -> List["Foreign"]:
    """What the shapes' sets in ``kernel`` hold beyond the ``programs``'
    elements and the elements of the ports ``kept`` as they are."""
    ids = kernel.port_ids()
    keep = [prefix for port in kept for prefix in port_prefixes(port, ids.get(port))]
    specs = {(f, n): spec for p in programs if p.shape is not None for f, n, spec in p.shape.sets}
    found = _integrity().foreign_members(kernel, [m for p in programs for m in p.members], specs, keep)
    return [element for elements in found.values() for element in elements]


def _program(state: _State, portdev: str, key: Optional[tuple] = None) -> "PortProgram":
    ruleset, learning = _resolved(state, portdev)
    if ruleset is None:
        return cast("PortProgram", learning)  # _resolved gives one of the two
    return _compiler().compile_port(state.bindings[portdev], ruleset, state.index.id(portdev), key=key)


def _programs(state: _State, ports: Sequence[str]) -> List["PortProgram"]:
    """The ports' programs, in their order. A port whose resolver.shape_key
    a port compiled before had is made from that port's template (about
    0.05 ms against 0.4 ms: a bulk change mostly repeats one tree); of a key
    that several ports share the first is compiled here; the rest, ports
    alone in their key included, on every core (parallel)."""
    if not ports:  # a change that compiles nothing imports no compiler
        return []
    # loaded before the work is shared: the forked workers inherit the modules and the builtin filters
    resolver, compiler = _resolver(), _compiler()
    filters = state.all_filters()
    made: Dict[str, "PortProgram"] = {}
    waiting: Dict[tuple, List[Tuple[str, Mapping, Mapping]]] = {}  # by key: ports no template made yet
    plans: dict = {}  # the resolver's plans of these filters, by root
    try:
        for portdev in ports:
            binding = state.bindings[portdev]
            found = resolver.shape_key(filters, binding, _extra(state, binding), plans)
            if found is not None:
                waiting.setdefault(found[0], []).append((portdev, found[1], found[2]))
        for key, group in waiting.items():
            if len(group) < 2:  # compiled with the rest
                continue
            for number, (portdev, variables, derived) in enumerate(group):
                program = compiler.from_template(key, portdev, state.index.id(portdev), variables, derived)
                if program is None and not number:  # its template, if it has a shape
                    program = _program(state, portdev, key)
                if program is not None:
                    made[portdev] = program
    except NwfilterError:  # the error a port-by-port compile raises first, naming the same port
        made = {}
    rest = map_on_cores(functools.partial(_program, state), [p for p in ports if p not in made])
    made.update((program.portdev, program) for program in rest)
    return [made[portdev] for portdev in ports]


class Host:
    def __init__(self, root: str = DEFAULT_ROOT, nft_argv: Optional[Sequence[str]] = None,
                 netns: Optional[str] = None) -> None:
        """``nft_argv``: run this nft command instead of libnftables in-process;
        ``netns``: work in that named network namespace (tests, labs)."""
        self.store = Store(root)
        self.netns = netns
        self.nft = Nft(nft_argv, netns)
        self._networks: Optional["Networks"] = None
        self.generation = Generation(netlink=self.nft.netlink)
        self._checked: Optional[Marker] = None  # the ruleset generation our tables were last seen right at

    @property
    def networks(self) -> "Networks":
        """The virtual networks' firewall, on the same store, lock and nft;
        imported on first use, since a binding's change never needs it (the
        libvirt hook and the modules start a process for each call)."""
        if self._networks is None:
            from .networks import Networks  # pylint: disable=import-outside-toplevel
            self._networks = Networks(self.store, self.nft, self.netns)
        return self._networks

    # ---- reading -------------------------------------------------------
    def _load(self, unreadable: Optional[Dict[str, str]] = None) -> _State:
        """The stored state; with ``unreadable``, bindings that cannot be read
        are left out and named there (with an index that cannot be read, every
        binding is without a port record, and a record that cannot be read is none)."""
        index = self.store.index()
        if unreadable is not None:
            try:
                index.all()
            except NwfilterError as exc:
                unreadable["index"] = str(exc)
                index = PortIndex.blank(self.store.index_dir)
        filters = self.store.filters({} if unreadable is not None else None)  # a binding using it fails to compile
        return _State(filters, self.store.bindings(unreadable), self.store.learned({} if unreadable is not None else None),
                      index, self.store.records(index.ports, index.__contains__))

    def filters(self) -> Dict[str, Filter]:
        return {**_builtin_filters(), **self.store.filters()}

    def user_filters(self) -> Dict[str, Filter]:
        return self.store.filters()

    def bindings(self, ports: Optional[Sequence[str]] = None) -> Dict[str, Binding]:
        """The stored bindings (of ``ports``, when given: only those are read)."""
        stored = self.store.bindings()
        return dict(stored) if ports is None else {p: stored[p] for p in ports if p in stored}

    def holding(self, addresses: Sequence[str]) -> Dict[str, List[str]]:
        """Per binding bound to any of these addresses (``binding_addresses``),
        those it is bound to, from the store's index: no binding is read."""
        found: Dict[str, List[str]] = {}
        for address, ports in self.store.index().holding(addresses).items():
            for portdev in ports:
                found.setdefault(portdev, []).append(address)
        return found

    def _apply(self, programs: List["PortProgram"], remove: List[str], before: Mapping[str, PortLive],
               base: bool, shapes: Callable[[bool], "ShapeChange"], generation: Optional[int] = None,
               ids: bool = True) -> bool:
        """One transaction. Our base chains are rewritten only when our tables
        are missing (rewriting them makes the kernel re-validate every port):
        a script without them fails then, and the retry puts them back. Not
        asking first matters to short-lived processes (a module run, the
        libvirt hook): listing the tables costs nft a full ruleset read, a
        second with 1000 bindings.

        A change that only removes ports goes over netlink (``nft_delete``),
        bound to ``generation``: the kernel refuses it if anyone committed
        since the kernel was checked; then nft's script, which copes with
        anything, does it (and a port's set elements: ``shapes(base)`` are
        the shapes around the change). Without ``ids``, rewriting our base
        chains leaves the id chains as they are. Returns whether our base chains were rewritten."""
        change = shapes(base)
        if not programs and not base and generation is not None and not change.dispatch_changes:
            try:
                _nft_delete().remove_ports(self.nft.netlink, [before[p] for p in remove if p in before], generation)
                return False
            except OSError:
                pass
        try:
            self.nft.apply(_compiler().transaction(programs, remove, before, base, change, ids))
            return base
        except NwfilterError:
            if base:
                raise
            self.nft.apply(_compiler().transaction(programs, remove, before, True, shapes(True)))
            return True

    def _check_kernel(self, state: _State, interrupted: Optional[List[str]]) -> Optional[Tuple[Findings, Kernel]]:
        """None when the kernel's ruleset generation is the one after our last
        commit (nothing anyone did can have changed our rules) and the store
        is whole; otherwise one listing of our tables compared with the store.
        The generation is read first and kept (``_checked``): a commit made
        while our tables are read may be missed by the listing, so the store
        never vouches for a later generation than that one."""
        self._checked = self.generation.marker()
        if interrupted is None and self.store.marker() == list(self._checked):
            return None
        kernel = self.nft.kernel()
        state.index.recount()  # every binding and shard is read here anyway
        # an interrupted change wrote its port records before its renames, and the journal does not
        # hold them: they may tell of the undone change, so its ports count as having none (reinstalled)
        untrusted = set(interrupted or ())
        records = {p: None if p in untrusted else state.installed.get(p) for p in state.bindings}
        return _integrity().compare(records, kernel, self.store.kernel_contents("base")), kernel

    def _not_in_force(self, state: _State, ports: Sequence[str]) -> Dict[str, Optional[str]]:
        """Per binding of ``ports``, None when the kernel holds its rules as stored, else
        why not (the caller holds the store's lock: a change half done is no finding)."""
        interrupted = self.store.journal()
        checked = self._check_kernel(state, interrupted)
        if checked is None:
            return {p: None for p in ports}
        found = checked[0]
        reasons = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in found.problems if ": " in line}
        reasons.update({p: "a change of it was interrupted" for p in interrupted or ()})
        base = "; ".join(line for line in found.problems if ": " not in line) if found.base else None
        return {p: base or reasons.get(p) for p in ports}

    def status(self, portdev: str) -> Dict[str, object]:
        return self.report([portdev])[portdev]

    def report(self, portdevs: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, object]]:
        """Per binding (every one, or those named): ``learning``, ``learned``,
        ``locked`` (while learning, what the kernel locked), ``resolved_rules``,
        ``nft`` (in force), ``port_id``, ``tree`` (the filters it uses) and
        ``in_force`` (with ``not_in_force_because`` when false). One store load,
        one kernel check and one listing of our tables for all, under the lock."""
        with self.store.locked(create=False):
            state = self._load()
            ports = sorted(state.bindings) if portdevs is None else list(portdevs)
            for portdev in ports:
                if portdev not in state.bindings:
                    raise NwfilterError(f"no binding for {portdev!r}")
            not_in_force = self._not_in_force(state, ports)
            entries = {portdev: state.index.get(portdev) for portdev in ports}
            shapes = {portdev: (entry[SHAPE], listed_keys(portdev, entry[ID]))
                      for portdev, entry in entries.items() if entry is not None and entry[SHAPE]}
            # a few ports are read by their elements' keys, many in one listing (Nft.ports_rules)
            in_force = self.nft.ports_rules(ports, shapes, state.live(set(ports)) if len(ports) <= FEW_PORTS else None)
        filters = state.all_filters()
        found: Dict[str, Dict[str, object]] = {}
        for portdev in ports:
            binding = state.bindings[portdev]
            ruleset, learning = _resolved(state, portdev)  # nothing compiled: a report shows what nft holds
            found[portdev] = {"learning": learning is not None, "learned": state.learned.get(portdev, {}),
                              "locked": self._locked(learning) if learning else {},
                              "resolved_rules": describe(ruleset) if ruleset is not None else [],
                              "nft": in_force[portdev], "port_id": state.index.id(portdev),
                              "tree": sorted(_tree(filters, binding.filterref.filter)),
                              "in_force": not_in_force[portdev] is None}
            if not_in_force[portdev]:
                found[portdev]["not_in_force_because"] = not_in_force[portdev]
        return found

    def _locked(self, program: "PortProgram") -> Dict[str, List[str]]:
        return {_compiler().lock_variable(name): self.nft.set_elements(family, name)
                for family, name, _spec in program.sets}

    def locked(self, portdev: str) -> Dict[str, List[str]]:
        """What the kernel has locked for a learning port: {IP: [address] or [],
        IPV6: ...} for each address it learns ({} once the full rules are in force)."""
        state = self._load()
        return self._locked(_program(state, portdev)) if portdev in state.bindings else {}

    def locks(self, binding: Binding, names: Sequence[str]) -> Dict[str, List[str]]:
        """The same for a binding learning in mode any, read from the kernel only
        (the learner's fast path: no store to load, nothing to compile)."""
        sets = _compiler().lock_sets(binding, binding.parameters, "IPV6" in names)
        return {name: self.nft.set_elements("bridge", sets[name]) for name in names if name in sets}

    def learnable(self) -> Dict[str, Tuple[Binding, str, Dict[str, List[str]]]]:
        """Bindings with addresses for the learner to find: (binding, mode any
        or dhcp, {variable: addresses learned so far} for each of IP and IPV6
        the tree needs and nobody gave)."""
        state = self._load()
        found = {}
        filters = state.all_filters()
        memo: Dict[tuple, Set[str]] = {}  # only the variables' names matter: ports alike share one walk
        for portdev in self._may_learn(state, filters):
            binding = state.bindings[portdev]
            mode = _learning_mode(binding)
            if mode == "none":
                continue
            key = (binding.filterref.filter, frozenset(binding.parameters))
            if key not in memo:
                memo[key] = _resolver().missing_variables(filters, binding) & {"IP", "IPV6"}
            needed = memo[key]
            if needed:
                learned = state.learned.get(portdev, {})
                found[portdev] = (binding, mode, {name: learned.get(name, []) for name in sorted(needed)})
        return found

    @staticmethod
    def _may_learn(state: _State, filters: Mapping[str, Filter]) -> List[str]:
        """The bindings that may have an address to learn, found in the index
        (10,000 bindings are not read on every store change): those whose
        tree uses IP or IPV6 without their giving it, and those the index
        does not know."""
        uses: Dict[str, Set[str]] = {}  # per root filter, which of IP and IPV6 its tree leaves unset
        entries = state.index.all()
        found = []
        for portdev in state.bindings:
            entry = entries.get(portdev)
            root = entry[ROOT] if entry is not None else None
            if root is not None and root not in uses:
                try:
                    uses[root] = set(_resolver().unset_variables(filters, root)) & {"IP", "IPV6"}
                except NwfilterError:  # the binding's own walk says why
                    uses[root] = {"IP", "IPV6"}
            if root is None or uses[root] - address_kinds(entry[ADDRESSES] or ()):
                found.append(portdev)
        return found

    def waiting(self, ports: Optional[Sequence[str]] = None) -> Dict[str, Binding]:
        """Bindings (of ``ports``, or all) whose IP address is being learned."""
        state = self._load()
        wanted = state.bindings if ports is None else [p for p in ports if p in state.bindings]
        return {p: state.bindings[p] for p in wanted if _resolved(state, p)[1] is not None}

    def layer3_warning(self) -> Optional[str]:
        """Why the stored bindings' layer-3/4 rules see no bridged traffic, if they do not."""
        index = self.store.index()
        if not index.totals["layer3"]:
            return None
        from . import bridge_netfilter  # pylint: disable=import-outside-toplevel
        off = bridge_netfilter.disabled(self.netns)
        if not off:
            return None
        ports = list(index.find(lambda entry: entry[LAYER3]))  # those with layer-3 chains
        shown = ", ".join(ports[:3]) + (f" and {len(ports) - 3} more" if len(ports) > 3 else "")
        return (f"the layer-3/4 rules of {shown} see no bridged traffic: {' and '.join(off)} must be 1 "
                "(load the br_netfilter module and set them, as libvirt also requires)")

    # ---- changing --------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self, check: bool = False) -> Iterator[None]:
        """The store's lock, with the cyclic garbage collector paused: a change
        builds and drops many small acyclic objects, and the collector would
        walk the whole heap over and over for nothing (a tenth of a redefine
        of 1000 ports)."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            with self.store.locked(create=not check):
                yield
        finally:
            if enabled:
                gc.enable()

    def _verified(self, check: bool) -> Tuple[_State, List[str]]:
        """The stored state, with the kernel made to hold it first (or, in
        check mode, what would be done): an interrupted change is undone, and
        whatever of ours the kernel lacks or holds beyond the store is put
        right in one transaction. Returns the state and what was repaired."""
        interrupted = self.store.journal()
        notes = []
        if interrupted is not None:
            notes.append("an interrupted change was undone" + (f" ({', '.join(interrupted)})" if interrupted else ""))
            if not check:
                self.store.undo()
        converted = self.store.converted_from  # under this call's lock
        state = self._load()
        version = self.store.check_version() if check else STORE_VERSION
        if version < max(REINSTALLED_FOR) and state.bindings:  # check mode: what the kernel lacks, the conversion puts back
            notes.append(f"the store would be converted from format {version} to {STORE_VERSION}: "
                         "every port's rules would be reinstalled")
            return state, notes
        checked = self._check_kernel(state, interrupted)
        if checked is None:
            return state, notes
        found, kernel = checked
        undone = set(interrupted or ())  # their ports are named once, above
        notes += [note for note in found.problems if note.split(": ", 1)[0] not in undone]
        if converted is not None and converted < max(REINSTALLED_FOR) and state.bindings:
            # every port is reinstalled because of the conversion: one note, not one per port
            integrity = _integrity()
            notes = [note for note in notes if not note.endswith((f": {integrity.NO_RECORD}", integrity.NOT_READ_BACK,
                                                                  integrity.NO_PORT_USES))]
            reasons = "; ".join(reason for version, reason in sorted(REINSTALLED_FOR.items()) if version > converted)
            notes.append(f"the store was converted from format {converted} to {STORE_VERSION}: every port's "
                         f"rules are reinstalled ({reasons})")
        damaged = found.damaged | (set(interrupted or ()) & set(state.bindings))
        if check:
            return state, notes
        if not damaged and not found.stale and not found.base and not found.foreign and not found.stale_shapes:
            self.store.set_marker(self._checked)
            if interrupted is not None:
                self.store.end()
            return state, notes
        new = state.copy()
        _adopt_port_ids(new, kernel, damaged)
        # the id chains were found whole unless something of our base was not: they stay as they are
        # the kernel's listing has no port's elements in its shape's sets: those beyond the rebuilt ports'
        # programs go (an interrupted change's records, not journaled, may claim the elements it added)
        self._commit(state, new, damaged, found.stale, False, kernel.live(), found.stale_shapes, found.foreign,
                     prune=(kernel, set(state.bindings) - damaged), ids=found.base)
        return new, notes

    def _commit(self, old: _State, new: _State, rebuild: Set[str], remove: Set[str], check: bool,
                live: Optional[Mapping[str, PortLive]] = None,
                stale_shapes: Optional[Mapping[str, Tuple[tuple, tuple]]] = None,
                foreign: Sequence["Foreign"] = (), prune: Optional[Tuple[Kernel, Collection[str]]] = None,
                ids: bool = True) -> List[str]:
        """Compile, apply as one transaction and store; returns the ports now
        learning. What a port has in the kernel is taken from the store
        (``installed``) unless ``live`` (read from nft) is given.

        Crash safety: the store's journal (the old text of every file this
        writes) is on disk before the kernel changes and removed once every
        file is in place; whoever finds it undoes the change (``_verified``)."""
        for portdev in remove:
            new.index.pop(portdev)
            new.learned.pop(portdev, None)
            new.installed.pop(portdev, None)
        for portdev in sorted(rebuild):
            if portdev not in new.index:
                port_id = new.index.free_id()
                if port_id > MAX_PORT_ID:
                    raise NwfilterError(f"more than {MAX_PORT_ID} bindings on one host")
                new.index.set(portdev, new_entry(port_id))
        programs = _programs(new, sorted(rebuild))
        growth = sum(p.rule_count - new.index[p.portdev][RULES] for p in programs)
        check_host_rules(new.index.totals["rules"] + growth, lambda: {
            **{p: entry[RULES] for p, entry in new.index.all().items()}, **{p.portdev: p.rule_count for p in programs}})
        if check:
            return [p.portdev for p in programs if p.learning]
        if prune is not None:  # every port is rebuilt but ``prune[1]``: what else the shapes' sets hold goes
            foreign = list(dict.fromkeys([*foreign, *_beyond(prune[0], programs, prune[1])]))
        unnamed = [element[:4] for element in foreign if element[4] is None]
        if unnamed:  # elements no nft syntax can name safely: first, over netlink
            _nft_delete().remove_members(self.nft.netlink, unnamed, self._checked[2] if self._checked else None)
            marker = self.generation.marker()  # still the state the check saw, less those elements
            self._checked = marker if next_to(self._checked, marker) else None
        named = [(family, name, text) for family, name, _key, _end, text in foreign if text is not None]
        touched = rebuild | remove
        before = live if live is not None else old.live(touched)
        kernel_shapes = old.shapes()
        installed_shapes = [p.shape for p in programs if p.shape is not None]
        for program in programs:
            new.installing(program)
        used_shapes = new.shapes()
        if prune is not None:  # and the shapes the kernel holds that no port uses after the change
            stale_shapes = {**_integrity().unused_shapes(prune[0], used_shapes), **(stale_shapes or {})}
        plan = self.store.plan(old.as_files(), new.as_files(), sorted(touched))
        marker, base, records, base_read, staged = None, False, None, None, None
        if touched or live is not None:
            try:
                self.store.begin(plan)
                staged = self.store.stage(plan)  # written and fsynced while the kernel takes the transaction
                if len(new.index):
                    # a removal may go over netlink, refused by the kernel if anyone committed since the check
                    checked = self._checked[2] if self._checked is not None else None
                    base = self._apply(programs, sorted(remove), before, live is not None or not len(old.index),
                                       lambda base: new.shape_change(kernel_shapes, used_shapes, installed_shapes, base,
                                                                     old, stale_shapes, named),
                                       generation=checked, ids=ids)
                else:  # nothing of ours left: no empty tables and hooks either
                    self.nft.apply(REMOVE_ALL)
            except OSError as exc:
                if staged is not None:
                    staged.discard()
                raise NwfilterError(f"cannot write the store {self.store.root}: {exc.strerror or exc}; "
                                    "nothing changed") from None
            except NwfilterError:
                if staged is not None:
                    staged.discard()
                self.store.end()
                raise
            try:
                change = new.shape_change(kernel_shapes, used_shapes, installed_shapes, base, old, stale_shapes, named)
                records, base_read = self._read_back(new, old, programs, before, base, ids, change, kernel_shapes)
                marker = self.generation.marker()
            except (NwfilterError, OSError):
                marker = None  # committed all the same: the next call compares our tables with the store
        # our commit is the only one since the kernel was seen to hold the store's state: the
        # marker names the state we are storing, and what we read back is what we installed
        # (else the next call compares our tables again, and reinstalls what it could not read back)
        vouched = next_to(self._checked, marker)
        if vouched and records is not None:
            new.installed.update(records)
        else:  # what was installed, without the kernel's content: the next call compares our tables
            records = {p.portdev: new.installed[p.portdev] for p in programs}
        plan = self.store.with_records(plan, records, old.installed)
        try:
            self.store.finish(plan, staged)
        except OSError as exc:
            # the kernel has the new rules but the store could not follow: put the old ones back
            old_programs = [_program(old, p) for p in sorted(touched) if p in old.bindings]
            back = old.shape_change(used_shapes, kernel_shapes, [p.shape for p in old_programs if p.shape is not None],
                                    True, new)
            self.nft.apply(_compiler().transaction(old_programs, sorted(touched - set(old.bindings)), new.live(touched),
                                                   True, back) if len(old.index) else REMOVE_ALL)
            self.store.undo()
            self.store.end()
            raise NwfilterError(f"cannot write the store {self.store.root}: {exc.strerror or exc}; "
                                "nothing changed") from None
        if (base and ids) or not len(new.index):
            self.store.set_kernel_contents("base", base_read if vouched else None)
        elif base_read:  # our base chains without the id chains, or the dispatch chains, were rewritten
            recorded = self.store.kernel_contents("base")
            self.store.set_kernel_contents("base", {**recorded, **base_read} if vouched and recorded else None)
        if touched or live is not None:
            self._checked = marker if vouched else None
            self.store.set_marker(self._checked)
        return [p.portdev for p in programs if p.learning]

    def _read_back(self, new: _State, old: _State, programs: List["PortProgram"], before: Mapping[str, PortLive],
                   base: bool, ids: bool, shapes: "ShapeChange", kernel_shapes: Mapping[str, str]
                   ) -> Tuple[Dict[str, dict], Optional[Dict[str, str]]]:
        """The programs' port records with what the kernel holds in each chain,
        and our base chains' content when they were rewritten (without
        ``ids``, not the id chains, which were left alone; the dispatch
        chains' when the shapes changed): read back right after our commit
        where it wrote a chain; a chain the transaction left alone (``before``
        has its rules, or the shape was there) keeps what its record said."""
        records, unread = {}, []
        installed = {shape.name for shape in shapes.install}
        for program in programs:
            records[program.portdev] = record = dict(new.installed[program.portdev])
            now = before.get(program.portdev, PortLive(set(), set()))
            record["chains"] = [chain[:4] for chain in record["chains"]]
            for chain in record["chains"]:
                name = (chain[0], chain[1])
                if now.holds(name, chain[2]) and name in now.contents:
                    chain.append(now.contents[name])
                else:
                    unread.append(name)
            if program.shape is not None:
                record["shape"] = shape = dict(record["shape"], chains=[c[:4] for c in record["shape"]["chains"]])
                known = old.installed.get(kernel_shapes[shape["name"]]) if shape["name"] in kernel_shapes else None
                if shape["name"] in installed or known is None:
                    unread += [(c[0], c[1]) for c in shape["chains"]]
                else:
                    shape["chains"] = [list(c) for c in known["shape"]["chains"]]
        if base:
            integrity = _integrity()
            rewritten = list(integrity.BASE_CHAINS) + (list(integrity.FIXED_CHAINS) if ids else sorted(DISPATCH))
        else:
            rewritten = sorted(DISPATCH) if shapes.dispatch_changes else []
        contents = self.nft.contents(sorted(set(unread)) + rewritten, new.index.totals["rules"])
        for record in records.values():
            for chain in record["chains"] + (record["shape"]["chains"] if "shape" in record else []):
                if len(chain) == 4:
                    chain.append(contents[(chain[0], chain[1])])
        return records, _integrity().base_contents(contents) if rewritten else None

    def _users(self, state: _State, name: str) -> List[str]:
        filters = state.all_filters()
        # one walk per distinct root filter, not per binding: bindings mostly share a few trees; no
        # binding is looked at when the index says none has a root whose tree holds the filter
        roots = state.index.roots()
        if None not in roots and not any(name in _tree(filters, root) for root in roots):
            return []
        by_port = {p: state.root(p) for p in state.bindings}
        using = {root for root in set(by_port.values()) if name in _tree(filters, root)}
        return sorted(p for p, root in by_port.items() if root in using)

    def define_filter(self, flt: Filter, check: bool = False) -> ChangeResult:
        with self._changing(check):
            old, repaired = self._verified(check)
            current = old.all_filters().get(flt.name)
            before = filter_to_xml(current) if current else None
            if current == flt:
                return ChangeResult(bool(repaired), before=before, after=before, repaired=repaired)
            new = old.copy()
            new.filters[flt.name] = flt
            try:
                check_definition(new.all_filters(), flt.name)
                rebuild = set(self._users(new, flt.name))
                unchecked = _undefined(new, rebuild) if check else {}
                _check_learning_trees(old, new, rebuild - set(unchecked))
                learning = self._commit(old, new, rebuild - set(unchecked), set(), check)
            except NwfilterError as exc:
                raise exc.within(f"filter {flt.name!r} not changed") from None
            overrides = flt.name in _builtin_filters() and flt.name not in old.filters
            lost = _lost_rules(old, new, rebuild - set(unchecked)) if overrides else {}
            return ChangeResult(True, sorted(rebuild), learning, before, filter_to_xml(flt), unchecked=unchecked,
                                lost=lost, repaired=repaired)

    def undefine_filter(self, name: str, check: bool = False) -> ChangeResult:
        with self._changing(check):
            old, repaired = self._verified(check)
            if name not in old.filters:
                if name in _builtin_filters():
                    raise NwfilterError(f"{name!r} is a built-in filter and cannot be undefined")
                return ChangeResult(bool(repaired), repaired=repaired)
            new = old.copy()
            del new.filters[name]
            before = filter_to_xml(old.filters[name])
            fallback = _builtin_filters().get(name)
            if fallback is None:
                users = [f for f, flt in new.filters.items() if name in flt.references()] + \
                    [f"binding {p}" for p in self._users(old, name)]
                if users:
                    raise NwfilterError(f"filter {name!r} is in use by {', '.join(users)}")
            rebuild = set(self._users(new, name)) if fallback else set()
            learning = self._commit(old, new, rebuild, set(), check)
            return ChangeResult(True, sorted(rebuild), learning, before,
                                filter_to_xml(fallback) if fallback else None, repaired=repaired)

    def set_bindings(self, bindings: Sequence[Binding], exclusive: bool = False, check: bool = False,
                     unbind: Collection[str] = (), unbind_owner: Optional[str] = None) -> ChangeResult:
        """Add or replace these bindings and remove those of the ports in
        ``unbind``, and those owned by the domain of UUID ``unbind_owner``
        (with ``exclusive``, all others) in one transaction."""
        wanted = {}
        for binding in bindings:
            if binding.portdev in wanted:
                raise NwfilterError(f"portdev {binding.portdev!r} given twice")
            wanted[binding.portdev] = binding
        with self._changing(check):
            old, repaired = self._verified(check)
            new = old.copy()
            remove = set(old.bindings) if exclusive else {p for p in unbind if p in old.bindings}
            if unbind_owner is not None:
                owned = old.index.holding([owner_key(unbind_owner)])[owner_key(unbind_owner)]
                remove |= {p for p in owned if p in old.bindings and old.owner(p) == unbind_owner}
            remove -= set(wanted)
            rebuild = {p for p, b in wanted.items() if not old.holds(b)}
            for portdev in remove:
                del new.bindings[portdev]
            new.bindings.update({p: wanted[p] for p in rebuild})  # the others are stored as they are
            if not rebuild and not remove:
                return ChangeResult(bool(repaired), repaired=repaired)
            for portdev in rebuild:
                new.learned.pop(portdev, None)  # a changed binding learns afresh
            unchecked = _undefined(new, rebuild) if check else {}
            changed = rebuild | remove
            before = _bindings_xml({p: old.bindings[p] for p in changed if p in old.bindings})  # before their files go
            learning = self._commit(old, new, rebuild - set(unchecked), remove, check)
            return ChangeResult(True, sorted(rebuild), learning, before,
                                _bindings_xml({p: new.bindings[p] for p in changed if p in new.bindings}),
                                unchecked=unchecked, repaired=repaired, removed=sorted(remove))

    def bind(self, binding: Binding, check: bool = False) -> ChangeResult:
        return self.set_bindings([binding], exclusive=False, check=check)

    def unbind(self, portdev: str, check: bool = False) -> ChangeResult:
        with self._changing(check):
            old, repaired = self._verified(check)
            if portdev not in old.bindings:
                return ChangeResult(bool(repaired), repaired=repaired)
            new = old.copy()
            del new.bindings[portdev]
            before = binding_to_xml(old.bindings[portdev])  # read before the commit removes its file
            self._commit(old, new, set(), {portdev}, check)
            return ChangeResult(True, [], [], before, None, repaired=repaired)

    def learned(self, portdev: str, ipv4: Sequence[str], ipv6: Sequence[str] = ()) -> ChangeResult:
        """Addresses the learner found: enforce the full rules (or, with none
        left, the learning rules again)."""
        with self._changing():
            old, repaired = self._verified(False)
            if portdev not in old.bindings:
                raise NwfilterError(f"no binding for {portdev!r}")
            new = old.copy()
            addresses = {name: list(values) for name, values in (("IP", ipv4), ("IPV6", ipv6)) if values}
            if new.learned.get(portdev, {}) == addresses:
                return ChangeResult(bool(repaired), repaired=repaired)
            if addresses:
                new.learned[portdev] = addresses
            else:
                new.learned.pop(portdev, None)
            learning = self._commit(old, new, {portdev}, set(), False)
            return ChangeResult(True, [portdev], learning, repaired=repaired)

    def converge(self, check: bool = False) -> ChangeResult:
        """Make the kernel hold what the store says (every change does this
        first): changed, with what was repaired, when it did not."""
        with self._changing():
            _state, repaired = self._verified(check)
            return ChangeResult(bool(repaired), repaired=repaired)

    def restore(self) -> ChangeResult:
        """Re-apply every stored binding (at boot) and drop ports of ours the
        store does not know. A binding that cannot be read or compiled is
        left as the kernel has it (its id stays reserved) and named in ``skipped``."""
        with self._changing():
            interrupted = self.store.journal()
            if interrupted is not None:
                self.store.undo()
            else:
                self.store.sweep()
            unreadable: Dict[str, str] = {}
            state = self._load(unreadable)
            state.index.recount()
            self._checked = self.generation.marker()  # before the listing: see _check_kernel
            kernel = self.nft.kernel()
            _adopt_port_ids(state, kernel, set(state.bindings))
            probe = state.copy()
            for portdev in state.bindings:
                if portdev not in probe.index:
                    probe.index.set(portdev, new_entry(1))  # any id: only whether it compiles is wanted
            for portdev in sorted(state.bindings):
                try:
                    _program(probe, portdev)
                except NwfilterError as exc:
                    unreadable[portdev] = str(exc.within(f"binding {portdev!r}"))
                    del state.bindings[portdev]
            live = kernel.live()
            stale = set(live) - set(state.bindings) - set(unreadable)
            learning = self._commit(state, state.copy(), set(state.bindings), stale, False, live,
                                    prune=(kernel, set(unreadable)))
            skipped = [unreadable[name] for name in sorted(unreadable)]
            return ChangeResult(True, sorted(state.bindings), learning,
                                repaired=["an interrupted change was undone"] if interrupted is not None else [],
                                skipped=skipped)
