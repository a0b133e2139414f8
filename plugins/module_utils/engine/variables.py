# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Variable references in attribute values: ``$X``, ``$X[N]`` and ``$X[@K]``."""

from __future__ import annotations

import functools
import re

from .errors import NwfilterError
from dataclasses import dataclass
from typing import Optional

_REF_RE = re.compile(r"\$([a-zA-Z_][a-zA-Z0-9_]{0,63})(?:\[(@?)([0-9]{1,4})\])?")


@dataclass(frozen=True)
class VarRef:
    """``index`` set: element N of the list. Otherwise ``iterator`` K walks it
    (plain ``$X`` is ``$X[@0]``)."""

    name: str
    index: Optional[int] = None
    iterator: int = 0


def parse_reference(text: str) -> Optional[VarRef]:
    """The reference ``text`` spells, or None if it is a literal."""
    if not isinstance(text, str):
        raise NwfilterError(f"expected text, got {type(text).__name__}")
    return _reference(text)


@functools.lru_cache(maxsize=65536)
def _reference(text: str) -> Optional[VarRef]:
    if not text.startswith("$"):
        return None
    match = _REF_RE.fullmatch(text)
    if not match:
        raise NwfilterError(f"invalid variable reference {text[:40]!r} (use $NAME, $NAME[N] or $NAME[@K])")
    name, at, number = match.groups()
    if number is None:
        return VarRef(name)
    if at:
        return VarRef(name, iterator=int(number))
    return VarRef(name, index=int(number))
