# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A map whose keys are known up front and whose values are read on first
use: a change of one binding on a host with thousands reads only that one,
and a copy to change records what was set, so the store writes only that."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, MutableMapping, Optional, Set, TypeVar, Union

V = TypeVar("V")
ASKED = 64  # keys asked about one by one before the keys are listed instead


class LazyMap(MutableMapping[str, V]):
    """``keys`` are given, or listed by a call when all are wanted: until
    then, whether a key is there is asked of ``exists`` (a host's store lists
    10,000 bindings only for a change that needs them all)."""

    def __init__(self, keys: Union[Iterable[str], Callable[[], Iterable[str]]], load: Callable[[str], V],
                 parent: Optional["LazyMap[V]"] = None, exists: Optional[Callable[[str], bool]] = None) -> None:
        self._listing: Optional[Callable[[], Iterable[str]]] = None
        self._keys: Optional[Dict[str, None]] = None  # ordered, like the dicts it stands for
        if callable(keys):
            self._listing = keys
        else:
            self._keys = dict.fromkeys(keys)
        self._exists = exists
        self._known: Dict[str, bool] = {}  # before the listing: keys asked about, set or deleted
        self._load = load
        self._values: Dict[str, V] = {}
        self.parent = parent
        self.assigned: Set[str] = set()  # keys set since this map was made (perhaps to the same value)
        self.deleted: Set[str] = set()  # keys deleted since then

    @classmethod
    def of(cls, values: Dict[str, V]) -> "LazyMap[V]":
        found = cls(values, values.__getitem__)
        found._values.update(values)
        return found

    def _all(self) -> Dict[str, None]:
        if self._keys is None:
            keys = dict.fromkeys(self._listing() if self._listing is not None else ())
            for key, present in self._known.items():
                if present:
                    keys[key] = None
                else:
                    keys.pop(key, None)
            self._keys = keys
        return self._keys

    def __getitem__(self, key: str) -> V:
        if key not in self:
            raise KeyError(key)
        try:
            return self._values[key]
        except KeyError:
            value = self._values[key] = self._load(key)
            return value

    def __setitem__(self, key: str, value: V) -> None:
        if self._keys is not None:
            self._keys[key] = None
        else:
            self._known[key] = True
        self._values[key] = value
        self.assigned.add(key)
        self.deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        if self._keys is not None:
            del self._keys[key]
        else:
            self._known[key] = False
        self._values.pop(key, None)
        self.assigned.discard(key)
        self.deleted.add(key)

    def __contains__(self, key: object) -> bool:
        if self._keys is not None or self._exists is None:
            return key in self._all()
        if not isinstance(key, str):
            return False
        if key not in self._known:
            if len(self._known) >= ASKED:  # many keys asked about: one listing costs less
                return key in self._all()
            self._known[key] = self._exists(key)
        return self._known[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._all()))

    def __len__(self) -> int:
        return len(self._all())

    def loaded(self, key: str) -> Optional[V]:
        """The value if it was already read or set (no reading here)."""
        return self._values.get(key)

    def copy(self) -> "LazyMap[V]":
        """A map to change: it reads through this one (sharing what it read)."""
        if self._keys is not None:
            return LazyMap(self._keys, self.__getitem__, parent=self)
        return LazyMap(lambda: list(self._all()), self.__getitem__, parent=self, exists=self.__contains__)

    def changes(self, before: "MutableMapping[str, V]") -> Iterator[str]:
        """The keys whose value may differ from ``before`` (a map made by
        ``before.copy()`` knows them; any other compares every key)."""
        keys = sorted(self.assigned) if self.parent is before else list(self._all())
        return (key for key in keys if key not in before or before[key] != self[key])

    def gone(self, before: "MutableMapping[str, V]") -> List[str]:
        """The keys of ``before`` that this map has not (known the same way)."""
        keys = sorted(self.deleted) if self.parent is before else list(before)
        return [key for key in keys if key in before and key not in self]
