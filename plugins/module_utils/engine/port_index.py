# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The store's index of ports, read and written in part: a change of one
port on a host with 10,000 reads one shard of about 160 entries, the
shards of its addresses and the totals, not every port's entry.

``index/<xx>.json``, for 64 values of ``xx`` (a hash of the port's name):
each port's entry (``store.index_entry``). What a change needs of all ports
together is kept as the entries change: ``index/totals.json`` has the ids in
use, the count of ports, of nft rules and of ports with layer-3 chains, and
per shape and per root filter the count of ports using it; ``index/by-<xx>.json``
(a hash of the key) has the ports bound to each address and owned by each
domain (``lookup_keys``). Both are derived: one that cannot be read is
counted again from every port's entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from .errors import NwfilterError

TOTALS = "totals.json"
BY = "by-"  # the shards of ports by address and by owner
# 64 shards of each kind: a change at 10,000 ports reads about 160 entries, and a
# bulk bind creates 129 files (a file's creation costs about 0.5 ms on this VM's ext4)
SHARDS = [f"{n:02x}" for n in range(64)]
# an entry's fields (store.index_entry)
ID, RULES, LAYER3, ROOT, DIGEST, ADDRESSES, OWNER, SHAPE = range(8)
DESCRIPTION = "a map of ports to [id, rules, layer-3, filter, digest, addresses, owner, shape]"


def new_entry(port_id: int) -> list:
    """The entry of a port given an id and not installed yet."""
    return [port_id, 0, False, None, None, None, None, None]


def lookup_keys(entry: list) -> List[str]:
    """What finds the port of an entry in the ``by-`` shards: its binding's
    addresses (``overlaps.binding_addresses``) and "owner <uuid>"."""
    return list(entry[ADDRESSES] or ()) + ([owner_key(entry[OWNER])] if entry[OWNER] else [])


def owner_key(uuid: str) -> str:
    return f"owner {uuid}"


def shard_of(port: str) -> str:
    return SHARDS[hashlib.sha1(port.encode("utf-8", "surrogateescape")).digest()[0] % len(SHARDS)]


def is_count(value: object) -> bool:
    """Whether a JSON value is a count (an int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _text_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


def _entry_valid(entry: object) -> bool:
    if not isinstance(entry, list) or len(entry) not in (7, 8):
        return False
    if len(entry) == 7:  # as versions 2-4 wrote it (no shape)
        entry.append(None)
    port_id, rules, layer3, root, digest, addresses, owner, shape = entry
    return (is_count(port_id) and is_count(rules) and isinstance(layer3, bool) and _text_or_none(root)
            and _text_or_none(shape) and _text_or_none(digest) and _text_or_none(owner)
            and (addresses is None or (isinstance(addresses, list) and all(isinstance(a, str) for a in addresses))))


def parse_entries(path: str, text: str) -> Dict[str, list]:
    """A map of ports to entries (a shard, or version 2-5's index.json), or a
    one-line error naming the file (a loop, not nested all(): it is read at every change)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise NwfilterError(f"not valid JSON ({exc})", f"stored file {path}") from None
    if not isinstance(value, dict) or not all(_entry_valid(entry) for entry in value.values()):
        raise NwfilterError(f"not {DESCRIPTION}", f"stored file {path}")
    return value


def entries_text(entries: Dict[str, list]) -> str:
    return json.dumps(entries, sort_keys=True, separators=(",", ":")) + "\n"


def _lookups_valid(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(ports, list) and all(isinstance(p, str) for p in ports)
                                           for ports in value.values())


def _empty_totals() -> dict:
    return {"ports": 0, "rules": 0, "layer3": 0, "ids": 0, "shapes": {}, "roots": {}}


def _totals_valid(value: object) -> bool:
    return (isinstance(value, dict) and all(is_count(value.get(k)) for k in ("ports", "rules", "layer3"))
            and isinstance(value.get("ids"), str) and all(c in "0123456789abcdef" for c in value["ids"])
            and isinstance(value.get("roots"), dict) and all(is_count(n) for n in value["roots"].values())
            and isinstance(value.get("shapes"), dict)
            and all(isinstance(s, list) and len(s) == 2 and is_count(s[0]) and _text_or_none(s[1])
                    for s in value["shapes"].values()))


class PortIndex:
    """Entries by port, each shard read on first use. A ``copy`` to change
    reads through its parent and knows the shards it changed (``writes``)."""

    def __init__(self, directory: str, read: Callable[[str], Optional[str]],
                 parent: Optional["PortIndex"] = None) -> None:
        self.directory = directory
        self._read = read  # a file's text, None when there is none
        self._parent = parent
        self._shards: Dict[str, Dict[str, list]] = {}
        self._changed: Set[str] = set()
        self._recounted: Set[str] = set()  # files counted again from the entries: written with the next change
        self._lookups: Optional[Dict[str, Dict[str, list]]] = None  # the lookup shards as counted again
        self._totals: Optional[dict] = None
        self._rewrite = parent._rewrite if parent is not None else False  # write every file (``blank``)

    @classmethod
    def of(cls, entries: Dict[str, list]) -> "PortIndex":
        """An index held in memory (a store of an older format, read as it is)."""
        found = cls("", lambda _path: None)
        for port, entry in entries.items():
            found.set(port, entry)
        found._changed.clear()
        return found

    @classmethod
    def blank(cls, directory: str) -> "PortIndex":
        """An empty index in place of one that cannot be read: its copies
        write every file of the directory."""
        found = cls(directory, lambda _path: None)
        found._rewrite = True
        return found

    # ---- reading -------------------------------------------------------
    def _shard(self, name: str) -> Dict[str, list]:
        """A shard of entries by port (``xx``) or of ports by lookup key (``by-xx``)."""
        found = self._shards.get(name)
        if found is None:
            if self._parent is not None:
                found = self._parent._shard(name)
            elif name.startswith(BY):
                found = self._lookup_shard(name)
            else:
                path = os.path.join(self.directory, f"{name}.json")
                text = self._read(path)
                found = parse_entries(path, text) if text else {}
                if any(shard_of(port) != name for port in found):
                    raise NwfilterError(f"holds a port of another shard: not {DESCRIPTION}", f"stored file {path}")
            self._shards[name] = found
        return found

    def _lookup_shard(self, name: str) -> Dict[str, list]:
        text = self._read(os.path.join(self.directory, f"{name}.json")) if self.directory else None
        try:
            found = json.loads(text) if text else None
        except ValueError:
            found = None
        if _lookups_valid(found):
            return found
        found = self._counted_lookups().get(name, {})
        if text is not None or found:
            self._recounted.add(name)
        return found

    def _counted_lookups(self) -> Dict[str, Dict[str, list]]:
        """The lookup shards counted again from every port's entry, all at once."""
        if self._lookups is None:
            self._lookups = {}
            for port, entry in sorted(self.all().items()):
                for key in lookup_keys(entry):
                    self._lookups.setdefault(f"{BY}{shard_of(key)}", {}).setdefault(key, []).append(port)
        return self._lookups

    def _writable(self, name: str) -> Dict[str, list]:
        if name not in self._changed:
            self._shards[name] = dict(self._shard(name))
            self._changed.add(name)
        return self._shards[name]

    def get(self, port: str) -> Optional[list]:
        return self._shard(shard_of(port)).get(port)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, str) and port in self._shard(shard_of(port))

    def holding(self, addresses: Iterable[str]) -> Dict[str, List[str]]:
        """Per lookup key (``lookup_keys``), the ports it finds."""
        return {address: self._shard(f"{BY}{shard_of(address)}").get(address, []) for address in addresses}

    def all(self) -> Dict[str, list]:
        """Every port's entry (reads every shard)."""
        return {port: entry for name in SHARDS for port, entry in self._shard(name).items()}

    def ports(self) -> List[str]:
        return sorted(self.all())

    def __len__(self) -> int:
        return self.totals["ports"]

    def __getitem__(self, port: str) -> list:
        entry = self.get(port)
        if entry is None:
            raise KeyError(port)
        return entry

    def id(self, port: str) -> int:
        return self[port][ID]

    @property
    def totals(self) -> dict:
        if self._totals is None:
            if self._parent is not None:
                parent = self._parent.totals
                self._totals = {**parent, "shapes": {k: list(v) for k, v in parent["shapes"].items()},
                                "roots": dict(parent["roots"])}
            else:
                self._totals = self._read_totals()
        return self._totals

    def _read_totals(self) -> dict:
        text = self._read(os.path.join(self.directory, TOTALS)) if self.directory else None
        try:
            found = json.loads(text) if text else None
        except ValueError:
            found = None
        if _totals_valid(found):
            found["ids"] = int(found["ids"], 16)  # the ids in use, as bits; kept as an int until written
            return found
        entries = self.all()  # derived: counted again from every shard
        if text is not None or entries:
            self._recounted.add(TOTALS)
        return _counted(entries)

    def recount(self) -> None:
        """Count the totals and the lookup shards again from every entry, and
        keep what differs (a shard lost or put back from a backup leaves them
        wrong; the full kernel check and restore call this, reading every
        port's shard anyway)."""
        counted = _counted(self.all())
        if _counts(counted) != _counts(self.totals):
            self._totals = counted
            self._recounted.add(TOTALS)
        lookups = self._counted_lookups()
        for name in (f"{BY}{shard}" for shard in SHARDS):
            found = lookups.get(name, {})
            if {key: sorted(ports) for key, ports in self._shard(name).items()} != found:
                self._shards[name] = found
                self._recounted.add(name)

    def used_ids(self) -> int:
        """The ids in use, as the bits of an int."""
        return self.totals["ids"]

    def free_id(self) -> int:
        """The lowest id no port has (ids start at 1)."""
        used = self.used_ids() | 1
        return (~used & (used + 1)).bit_length() - 1

    def shapes(self) -> Dict[str, str]:
        """Per shape in use, one of its ports (found in the shards when the
        port the totals named has left it)."""
        shapes = self.totals["shapes"]
        wanted = {name for name, (_count, port) in shapes.items() if port is None}
        for shard in SHARDS:  # shard by shard: a shape of many ports has one in the first read
            if not wanted:
                break
            for port, entry in sorted(self._shard(shard).items()):
                if entry[SHAPE] in wanted:
                    wanted.discard(entry[SHAPE])
                    shapes[entry[SHAPE]][1] = port
                    self._changed.add(TOTALS)
        return {name: port for name, (_count, port) in shapes.items()}

    def roots(self) -> Dict[Optional[str], int]:
        """Ports per root filter (None: bindings the index could not read)."""
        return {name or None: count for name, count in self.totals["roots"].items()}

    def find(self, wanted: Callable[[list], bool]) -> Iterator[str]:
        """The ports whose entry is ``wanted``, reading every shard."""
        return (port for port, entry in sorted(self.all().items()) if wanted(entry))

    # ---- changing --------------------------------------------------------
    def copy(self) -> "PortIndex":
        return PortIndex(self.directory, self._read, parent=self)

    def set(self, port: str, entry: list) -> None:
        shard = self._writable(shard_of(port))
        old = shard.get(port)
        if old is not None:
            _add(self.totals, port, old, -1)
        _add(self.totals, port, entry, 1)
        self._move(port, lookup_keys(old) if old else [], lookup_keys(entry))
        shard[port] = entry
        self._changed.add(TOTALS)

    def pop(self, port: str) -> Optional[list]:
        if port not in self:
            return None
        entry = self._writable(shard_of(port)).pop(port)
        _add(self.totals, port, entry, -1)
        self._move(port, lookup_keys(entry), [])
        self._changed.add(TOTALS)
        return entry

    def _move(self, port: str, before: List[str], after: List[str]) -> None:
        """Keep the ports by lookup key as the port's keys go from ``before`` to ``after``."""
        for address, sign in [(a, -1) for a in set(before) - set(after)] + [(a, 1) for a in set(after) - set(before)]:
            shard = self._writable(f"{BY}{shard_of(address)}")
            ports = [p for p in shard.get(address, []) if p != port] + ([port] if sign > 0 else [])
            if ports:
                shard[address] = sorted(ports)
            else:
                shard.pop(address, None)

    def writes(self, before: "PortIndex") -> List[Tuple[str, str]]:
        """The files of the shards that differ from ``before``, and the totals with them."""
        recounted: Set[str] = set()
        index: Optional[PortIndex] = self
        while index is not None:
            recounted |= index._recounted
            index = index._parent
        if self._rewrite:
            shards = [f"{prefix}{name}" for prefix in ("", BY) for name in SHARDS]
        else:
            shards = sorted(name for name in (self._changed | recounted) - {TOTALS}
                            if name in recounted or self._shard(name) != before._shard(name))
        writes = [(os.path.join(self.directory, f"{name}.json"), entries_text(self._shard(name))) for name in shards]
        if writes or TOTALS in recounted or (TOTALS in self._changed and self.totals != before.totals):
            totals = {**self.totals, "ids": f"{self.totals['ids']:x}"}
            writes.append((os.path.join(self.directory, TOTALS), json.dumps(totals, sort_keys=True) + "\n"))
        return writes


def _counted(entries: Dict[str, list]) -> dict:
    """The totals of these entries (the first port of each shape named for it)."""
    totals = _empty_totals()
    for port, entry in sorted(entries.items()):
        _add(totals, port, entry, 1)
    return totals


def _counts(totals: dict) -> dict:
    """The totals without the port each names for its shapes."""
    return {**totals, "shapes": {name: count for name, (count, _port) in totals["shapes"].items()}}


def _add(totals: dict, port: str, entry: list, sign: int) -> None:
    """Count ``entry`` of ``port`` in (``sign`` 1) or out of (-1) ``totals``."""
    totals["ports"] += sign
    totals["rules"] += sign * entry[RULES]
    totals["layer3"] += sign * entry[LAYER3]
    totals["ids"] = totals["ids"] | (1 << entry[ID]) if sign > 0 else totals["ids"] & ~(1 << entry[ID])
    root = entry[ROOT] or ""
    totals["roots"][root] = totals["roots"].get(root, 0) + sign
    if not totals["roots"][root]:
        del totals["roots"][root]
    if entry[SHAPE] is not None:
        count, held = totals["shapes"].get(entry[SHAPE], [0, None])
        count += sign
        if not count:
            totals["shapes"].pop(entry[SHAPE], None)
        else:
            totals["shapes"][entry[SHAPE]] = [count, port if sign > 0 and held is None else
                                              None if sign < 0 and held == port else held]
