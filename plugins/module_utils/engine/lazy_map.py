# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A map whose keys are known up front and whose values are read on first
use: a change of one binding on a host with thousands reads only that one,
and a copy to change records what was set, so the store writes only that."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, MutableMapping, Optional, Set, TypeVar

V = TypeVar("V")


class LazyMap(MutableMapping[str, V]):
    def __init__(self, keys: Iterable[str], load: Callable[[str], V], parent: Optional["LazyMap[V]"] = None) -> None:
        self._keys: Dict[str, None] = dict.fromkeys(keys)  # ordered, like the dicts it stands for
        self._load = load
        self._values: Dict[str, V] = {}
        self.parent = parent
        self.assigned: Set[str] = set()  # keys set since this map was made (perhaps to the same value)

    @classmethod
    def of(cls, values: Dict[str, V]) -> "LazyMap[V]":
        found = cls(values, values.__getitem__)
        found._values.update(values)
        return found

    def __getitem__(self, key: str) -> V:
        if key not in self._keys:
            raise KeyError(key)
        try:
            return self._values[key]
        except KeyError:
            value = self._values[key] = self._load(key)
            return value

    def __setitem__(self, key: str, value: V) -> None:
        self._keys[key] = None
        self._values[key] = value
        self.assigned.add(key)

    def __delitem__(self, key: str) -> None:
        del self._keys[key]
        self._values.pop(key, None)
        self.assigned.discard(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def loaded(self, key: str) -> Optional[V]:
        """The value if it was already read or set (no reading here)."""
        return self._values.get(key)

    def copy(self) -> "LazyMap[V]":
        """A map to change: it reads through this one (sharing what it read)."""
        return LazyMap(self._keys, self.__getitem__, parent=self)

    def changes(self, before: "MutableMapping[str, V]") -> Iterator[str]:
        """The keys whose value may differ from ``before`` (a map made by
        ``before.copy()`` knows them; any other compares every key)."""
        keys = sorted(self.assigned) if self.parent is before else list(self._keys)
        return (key for key in keys if key not in before or before[key] != self[key])
