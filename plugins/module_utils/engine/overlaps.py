# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Addresses bound on more than one port. Anti-spoofing then lets every one
of those VMs use the address, which is usually an inventory mistake, but not
always (a failover pair sharing an address, one VM on two networks), so the
modules warn rather than refuse."""

from __future__ import annotations

from typing import Collection, Dict, List, Mapping, Tuple

from .model import Binding


def shared_addresses(bindings: Mapping[str, Binding], ports: Collection[str]) -> List[str]:
    """One line per MAC, IP or IPV6 address that a binding among ``ports``
    shares with another binding."""
    owners: Dict[Tuple[str, str], List[str]] = {}
    for portdev, binding in bindings.items():
        given = binding.parameters
        for kind in ("MAC", "IP", "IPV6"):
            for value in given.get(kind, ()):
                owners.setdefault((kind, value.lower()), []).append(portdev)
    return [f"{kind} {value} is bound on {', '.join(sorted(found))}"
            for (kind, value), found in sorted(owners.items()) if len(found) > 1 and any(p in ports for p in found)]
