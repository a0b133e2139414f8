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
from typing import Sequence

from .nft_netlink import NFTA_LIST_ELEM, NLA_F_NESTED, attribute, each_attribute

NFTA_EXPR_NAME = 1
# expressions whose dumped data changes with traffic or time
STATEFUL = (b"counter\0", b"quota\0", b"last\0")
SEPARATOR = b"\0\0\0\0"


def stateless(expressions: bytes) -> bytes:
    """A rule's expressions with the data of stateful ones left out (their
    name kept), still a well-formed attribute list."""
    kept = []
    for kind, element in each_attribute(expressions):
        if kind == NFTA_LIST_ELEM:
            name = next((value for kind, value in each_attribute(element) if kind == NFTA_EXPR_NAME), b"")
            stateful = name.rstrip(b"\0") + b"\0" in STATEFUL
            kept.append(attribute(NFTA_LIST_ELEM | NLA_F_NESTED, attribute(NFTA_EXPR_NAME, name)) if stateful
                        else attribute(kind | NLA_F_NESTED, element))
    return b"".join(kept)


def chain_digest(rules: Sequence[bytes]) -> str:
    """One chain's rules (each rule's ``NFTA_RULE_EXPRESSIONS``), in order.
    An attribute list is self-delimiting, and a header of length 0 never
    starts an attribute, so it separates the rules unambiguously."""
    blob = SEPARATOR.join(rules)
    if any(name in blob for name in STATEFUL):
        blob = SEPARATOR.join(stateless(rule) if any(name in rule for name in STATEFUL) else rule for rule in rules)
    return hashlib.sha1(blob).hexdigest()[:16]
