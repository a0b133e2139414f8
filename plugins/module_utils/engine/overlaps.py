# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Addresses bound on more than one port. Anti-spoofing then lets every one
of those VMs use the address, which is usually an inventory mistake, but not
always (a failover pair sharing an address, one VM on two networks), so the
modules warn rather than refuse."""

from __future__ import annotations

from typing import Collection, Dict, List, Mapping, Sequence, Set

from .model import Binding


def binding_addresses(binding: Binding) -> List[str]:
    """The binding's MAC, IP and IPV6 addresses, as "KIND value" (kept in the store's index)."""
    given = binding.parameters
    return [f"{kind} {value.lower()}" for kind in ("MAC", "IP", "IPV6") for value in given.get(kind, ())]


def address_kinds(addresses: Collection[str]) -> Set[str]:
    """The kinds (MAC, IP, IPV6) of addresses as ``binding_addresses`` writes them."""
    return {address.split(" ", 1)[0] for address in addresses}


def shared_addresses(addresses: Mapping[str, Sequence[str]], ports: Collection[str]) -> List[str]:
    """One line per address that a binding among ``ports`` shares with
    another binding (``addresses``: per port, ``binding_addresses``)."""
    owners: Dict[str, List[str]] = {}
    for portdev, found in addresses.items():
        for address in found:
            owners.setdefault(address, []).append(portdev)
    return [f"{address} is bound on {', '.join(sorted(found))}"
            for address, found in sorted(owners.items()) if len(found) > 1 and any(p in ports for p in found)]
