# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's nftables ruleset generation: a counter every committed
nftables transaction of a network namespace increments, whoever sends it.
The same generation as after our own last commit means nobody changed any
table since; reading it is one netlink round trip (NFT_MSG_GETGEN), far
cheaper than listing our tables.

A ``Marker`` (boot id, namespace cookie, generation) names one ruleset state
of one namespace of one boot: generations restart at every boot and differ
per namespace.
"""

from __future__ import annotations

import struct
from typing import Optional, Tuple

from .errors import NwfilterError
from .nft_netlink import Netlink

NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1

Marker = Tuple[str, int, int]


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
        return handle.read().strip()


class Generation:
    """Reads the ruleset generation of one network namespace (None: ours)."""

    def __init__(self, netns: Optional[str] = None, netlink: Optional[Netlink] = None) -> None:
        self.netlink = netlink or Netlink(netns)

    def current(self) -> int:
        """The generation now (one netlink request and its reply)."""
        try:
            reply = self.netlink.request(NFT_MSG_GETGEN, [NFTA_GEN_ID])
        except OSError as exc:
            raise NwfilterError(f"cannot read the nftables ruleset generation: {exc.strerror or exc}") from None
        return struct.unpack(">I", reply[0][NFTA_GEN_ID][:4])[0]

    def marker(self) -> Marker:
        return (boot_id(), self.netlink.namespace(), self.current())


def next_to(before: Optional[Marker], after: Optional[Marker]) -> bool:
    """Whether ``after`` is the generation right after ``before`` (same boot,
    same namespace): the commit between them, ours, was the only one."""
    return before is not None and after is not None and after[:2] == before[:2] and after[2] == before[2] + 1
