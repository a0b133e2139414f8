# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Removing ports straight over netlink, in one transaction. nft 1.0.6 reads
every chain of the ruleset before it deletes anything (tens of ms with 1000
ports, ten times that with 10,000); a removal needs no rule compiled, so it is
sent as the few messages it is: the ports' set and map elements deleted, then their
chains emptied (which drops every jump between them), then the chains and
their address-lock sets deleted."""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

from .nft_layout import TABLE, PortLive
from .set_members import element_list, encode, map_key
from .nft_netlink import Netlink, attribute, cstring

NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_DELSET, NFT_MSG_DELSETELEM = 5, 8, 11, 14
# attributes: table and name are 1 and 3 for a chain, 1 and 2 for a rule's chain, a set and an element list
NAME_ATTRIBUTES = {NFT_MSG_DELCHAIN: (1, 3), NFT_MSG_DELRULE: (1, 2), NFT_MSG_DELSET: (1, 2)}


def _named(message: int, family: str, name: str) -> Tuple[int, str, bytes]:
    table, named = NAME_ATTRIBUTES[message]
    return message, family, attribute(table, cstring(TABLE)) + attribute(named, cstring(name))


def messages(ports: Iterable[PortLive]) -> List[Tuple[int, str, bytes]]:
    """The batch removing these ports, whose objects must all exist (a missing one fails it whole)."""
    ports = list(ports)
    found = []
    for port in ports:
        found += [_element(family, name, *encode(port.specs[family, name], element))
                  for family, name, element in sorted(port.members)]
        found += [_element(family, vmap, map_key(key)) for family, vmap, key in sorted(port.elements)]
    chains = sorted({chain for port in ports for chain in port.chains})
    found += [_named(NFT_MSG_DELRULE, family, name) for family, name in chains]
    found += [_named(NFT_MSG_DELCHAIN, family, name) for family, name in chains]
    found += [_named(NFT_MSG_DELSET, family, name) for port in ports for family, name in sorted(port.sets)]
    return found


def _element(family: str, name: str, key: bytes, end: bytes = b"") -> Tuple[int, str, bytes]:
    """Deleting one element of a set (``end``: of an interval set's element, its key's end)."""
    return NFT_MSG_DELSETELEM, family, element_list(name, key, end)


def remove_members(netlink: Netlink, elements: Iterable[Tuple[str, str, bytes, bytes]],
                   generation: Optional[int]) -> None:
    """Delete these elements (family, set, key, key end) of our sets, as the
    kernel holds them, in one transaction, refused if any other came after ``generation``."""
    netlink.batch([_element(*element) for element in elements], generation)


def remove_ports(netlink: Netlink, ports: Iterable[PortLive], generation: Optional[int]) -> None:
    """Remove these ports in one transaction, refused by the kernel if any
    other came after ``generation`` (OSError: nothing changed)."""
    netlink.batch(messages(ports), generation)
