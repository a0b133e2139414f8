# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a chain's rules say, as the kernel holds them: a digest of each
rule's expressions (``NFTA_RULE_EXPRESSIONS`` of a rule dump), in order.

A rule replaced in place keeps its handle and the chain its rule count, so
only the rules' content shows it. The kernel's own encoding is compared,
not nft's: nft may print two encodings alike, and the expected digest is
read back right after our own commit (``Host._commit``), since only the
kernel knows how it encodes what nft sent. Stateful expressions change
their data as frames pass (a counter's packets and bytes), so only their
name counts."""

from __future__ import annotations

import hashlib
import struct
from typing import Iterable, Iterator, Tuple

NFTA_LIST_ELEM, NFTA_EXPR_NAME = 1, 1
# expressions whose dumped data changes with traffic or time
STATEFUL = (b"counter\0", b"quota\0", b"last\0")
_ATTRIBUTE = struct.Struct("=HH")


def _attributes(data: bytes) -> Iterator[Tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        length, kind = _ATTRIBUTE.unpack_from(data, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def stateless(expressions: bytes) -> bytes:
    """A rule's expressions with the data of stateful ones left out."""
    if not any(name in expressions for name in STATEFUL):
        return expressions  # nearly every rule: no parsing
    kept = []
    for kind, element in _attributes(expressions):
        if kind == NFTA_LIST_ELEM:
            name = next((value for kind, value in _attributes(element) if kind == NFTA_EXPR_NAME), b"")
            part = name if name.rstrip(b"\0") + b"\0" in STATEFUL else element
            kept.append(struct.pack("=I", len(part)) + part)
    return b"".join(kept)


def chain_digest(rules: Iterable[bytes]) -> str:
    """One chain's rules (each rule's ``NFTA_RULE_EXPRESSIONS``), in order."""
    digest = hashlib.sha1()
    for expressions in rules:
        content = stateless(expressions)
        digest.update(struct.pack("=I", len(content)) + content)
    return digest.hexdigest()[:16]
