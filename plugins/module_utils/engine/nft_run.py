# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running nft: one script is one kernel transaction (all or nothing), and
reading back what of ours is in force."""

from __future__ import annotations

import json
import subprocess
from typing import Dict, List, Optional, Sequence

from .errors import NwfilterError
from .libnftables import LIB, LibNftables
from .nft_netlink import Netlink, attribute, text
from .integrity import BASE_MAPS, Kernel
from .nft_compile import TABLE, PortLive

FAMILIES = ("bridge", "inet")
NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE = 1, 4, 7
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK = 1, 3, 4
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2


class Nft:
    """nftables through libnftables in-process (optionally in a named network
    namespace), or through the nft command ``argv`` when one is given or the
    library is missing."""

    def __init__(self, argv: Optional[Sequence[str]] = None, netns: Optional[str] = None) -> None:
        self.argv = list(argv or ("nft",))
        self.lib = LibNftables(netns) if argv is None and LIB is not None else None
        if netns is not None and self.lib is None:
            self.argv = ["ip", "netns", "exec", netns] + self.argv
        self.netlink = Netlink(netns)

    def _run(self, args: List[str], stdin: str = "") -> str:
        if self.lib is not None:
            json_output = args[:1] == ["-j"]
            commands = stdin if args[-2:] == ["-f", "-"] else " ".join(args[1:] if json_output else args)
            code, output, error = self.lib.run(commands, json_output)
        else:
            try:
                done = subprocess.run(self.argv + args, input=stdin, capture_output=True, text=True, check=False)
            except OSError as exc:
                raise NwfilterError(f"cannot run {self.argv[0]}: {exc.strerror}") from None
            code, output, error = done.returncode, done.stdout, done.stderr
        if code != 0:
            message = " ".join(line.strip() for line in error.splitlines() if line.strip())
            raise NwfilterError(f"nft refused the change: {message[:600]}")
        return output

    def apply(self, script: str) -> None:
        """Run ``script`` as one transaction; on error nothing of it is in force."""
        self._run(["-f", "-"], script)

    def kernel(self) -> Kernel:
        """What our tables hold now: their chains and rule counts from netlink
        dumps (listing a table makes nft decode every rule), their maps from nft."""
        kernel = Kernel()
        for family in FAMILIES:
            tables = self.netlink.request(NFT_MSG_GETTABLE, [NFTA_TABLE_NAME], family, dump=True)
            if not any(text(table[NFTA_TABLE_NAME]) == TABLE for table in tables):
                continue
            kernel.tables.add(family)
            wanted = [NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK]
            for chain in self.netlink.request(NFT_MSG_GETCHAIN, wanted, family, dump=True):
                if text(chain[NFTA_CHAIN_TABLE]) == TABLE:
                    name = (family, text(chain[NFTA_CHAIN_NAME]))
                    kernel.rules[name] = 0
                    if NFTA_CHAIN_HOOK in chain:
                        kernel.hooked.add(name)
            for rule in self.netlink.request(NFT_MSG_GETRULE, [NFTA_RULE_CHAIN], family,
                                             attribute(NFTA_RULE_TABLE, TABLE.encode() + b"\0"), dump=True):
                name = (family, text(rule[NFTA_RULE_CHAIN]))
                kernel.rules[name] = kernel.rules.get(name, 0) + 1
            for vmap in sorted(name for f, name in BASE_MAPS if f == family):
                try:
                    listed = json.loads(self._run(["-j", "list", "map", family, TABLE, vmap]))
                except NwfilterError:
                    continue  # the map does not exist
                for item in listed.get("nftables", []):
                    if "map" in item:
                        kernel.add_map(item["map"])
        return kernel

    def live(self) -> Dict[str, PortLive]:
        """Per port, the chains and verdict-map elements of ours in force now."""
        return self.kernel().live()

    def port_rules(self, portdev: str) -> str:
        """The exact rules in force for a port, as nft prints them. One listing
        per table, so a change running at the same time cannot make it fail."""
        prefix = f"p/{portdev}"
        shown = []
        for family in FAMILIES:
            try:
                text = self._run(["list", "table", family, TABLE])
            except NwfilterError:
                continue  # the table does not exist
            text = text.rstrip()[:-1]  # without the table's closing brace
            chains = [block for block in text.split("\n\tchain ")[1:]
                      if block.split(" ", 1)[0] == prefix or block.startswith(prefix + "/")]
            if chains:
                body = "\n".join(f"\tchain {block.rstrip()}" for block in chains)
                shown.append(f"table {family} {TABLE} {{\n{body}\n}}\n")
        return "".join(shown)
