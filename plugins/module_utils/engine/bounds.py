# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bounded work for any input: the limits, and one pass over a filter tree
that checks them before anything is walked path by path or expanded.

A tree is a graph of filters, but the resolver walks it as a tree: a filter
referenced twice is instantiated twice, so a few kilobytes of XML can
describe 2**21 paths. ``check_tree`` visits each filter and each reference
once (memoised, iterative: no recursion limit) and counts what the walk
would visit. The limits come from measurements (docs/performance.md).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

from .errors import NwfilterError
from .model import Filter, Rule

MAX_DEPTH = 64  # filters on one reference path; real trees have 2 to 4
MAX_TREE_FILTERS = 10000  # filter instances the walk of one tree visits, over every path
MAX_BINDING_RULES = 5000  # rule instances of one binding: at most 3 nft rules each, under 1 s to apply
MAX_HOST_RULES = 250000  # nft rules of every port of a host: ~190 MB of kernel memory, ~12 s to restore


def check_definition(filters: Mapping[str, Filter], name: str) -> None:
    """``check_tree`` for a filter just (re)defined and for every filter
    whose tree holds it, so that a filter that grows refuses at once rather
    than at the next bind of an ancestor."""
    referrers: Dict[str, List[str]] = {}
    for flt in filters.values():
        for ref in flt.references():
            referrers.setdefault(ref, []).append(flt.name)
    reached, todo = {name}, [name]
    while todo:
        for parent in referrers.get(todo.pop(), ()):
            if parent not in reached:
                reached.add(parent)
                todo.append(parent)
    sizes: Dict[str, Tuple[int, int, int]] = {}
    for root in [name] + sorted(reached - {name}):  # a loop is shown from the filter defined
        check_tree(filters, root, sizes)


def check_tree(filters: Mapping[str, Filter], root: str, sizes: Optional[Dict[str, Tuple[int, int, int]]] = None) -> None:
    """Refuse a reference loop, or a tree deeper, wider or with more rule
    occurrences than the limits, naming the first (innermost) filter over a
    limit. A missing filter counts as an empty leaf: whether it must exist
    is the resolver's call. Linear in the filters and references reachable
    from ``root``; ``sizes`` carries what is known over from other roots."""
    # per filter: (depth, filter instances, rule occurrences) of its subtree
    sizes = {} if sizes is None else sizes
    if root in sizes:
        return
    on_path: Set[str] = set()
    path: List[str] = [root]
    stack: List[Tuple[str, int]] = [(root, 0)]  # (filter, next reference to look at)
    on_path.add(root)
    while stack:
        name, index = stack[-1]
        refs = filters[name].references() if name in filters else ()
        if index < len(refs):
            stack[-1] = (name, index + 1)
            child = refs[index]
            if child in on_path:
                raise NwfilterError(f"filter reference loop: {' -> '.join(path + [child])}")
            if child not in sizes:
                stack.append((child, 0))
                path.append(child)
                on_path.add(child)
            continue
        stack.pop()
        path.pop()
        on_path.discard(name)
        sizes[name] = _size(filters, name, [sizes[ref] for ref in refs])


def _size(filters: Mapping[str, Filter], name: str, children: List[Tuple[int, int, int]]) -> Tuple[int, int, int]:
    rules = sum(isinstance(e, Rule) for e in filters[name].entries) if name in filters else 0
    depth = 1 + max((c[0] for c in children), default=0)
    width = 1 + sum(c[1] for c in children)
    occurrences = rules + sum(c[2] for c in children)
    if depth > MAX_DEPTH:
        raise NwfilterError(f"filter references nest more than {MAX_DEPTH} deep", f"filter {name!r}")
    if width > MAX_TREE_FILTERS:
        raise NwfilterError(f"the tree walks {width} filter instances over all its reference paths, "
                            f"more than {MAX_TREE_FILTERS}", f"filter {name!r}")
    if occurrences > MAX_BINDING_RULES:
        raise NwfilterError(f"the tree has {occurrences} rules over all its reference paths, "
                            f"more than {MAX_BINDING_RULES}", f"filter {name!r}")
    return depth, width, occurrences


def check_host_rules(total: int, counts: Callable[[], Mapping[str, int]]) -> None:
    """Refuse a change after which the host's ports would hold ``total`` nft
    rules, more than MAX_HOST_RULES (``counts``, per port, are read only then,
    to name the largest)."""
    if total > MAX_HOST_RULES:
        counts = counts()
        biggest = max(counts, key=counts.__getitem__)
        raise NwfilterError(f"the host's bindings would hold {total} nft rules, more than {MAX_HOST_RULES} "
                            f"(the largest, {biggest!r}, {counts[biggest]})")
