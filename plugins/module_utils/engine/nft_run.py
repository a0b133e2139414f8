# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running nft: one script is one kernel transaction (all or nothing), and
reading back what of ours is in force."""

from __future__ import annotations

import json
import subprocess
from typing import Any, Dict, List, Optional, Sequence

from .errors import NwfilterError
from .libnftables import LIB, LibNftables
from .nft_compile import TABLE, PortLive, portdev_of

FAMILIES = ("bridge", "inet")


class Nft:
    """nftables through libnftables in-process (optionally in a named network
    namespace), or through the nft command ``argv`` when one is given or the
    library is missing."""

    def __init__(self, argv: Optional[Sequence[str]] = None, netns: Optional[str] = None) -> None:
        self.argv = list(argv or ("nft",))
        self.lib = LibNftables(netns) if argv is None and LIB is not None else None
        if netns is not None and self.lib is None:
            self.argv = ["ip", "netns", "exec", netns] + self.argv

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

    def has_tables(self) -> bool:
        """Both our tables exist (they are created with their base chains, in one transaction)."""
        tables = self._run(["list", "tables"])
        return all(f"table {family} {TABLE}" in tables for family in FAMILIES)

    def listing(self) -> List[Dict[str, Any]]:
        """Every object of our two tables, as nft's JSON items (a missing table gives none)."""
        items: List[Dict[str, Any]] = []
        for family in FAMILIES:
            try:
                out = self._run(["-j", "list", "table", family, TABLE])
            except NwfilterError:
                continue  # the table does not exist yet
            items += json.loads(out).get("nftables", [])
        return items

    def live(self, items: Optional[List[Dict[str, Any]]] = None) -> Dict[str, PortLive]:
        """Per port, the chains and verdict-map elements of ours in force now
        (in ``items``, a listing already made, when given)."""
        ports: Dict[str, PortLive] = {}
        for item in self.listing() if items is None else items:
            if "chain" in item:
                chain = item["chain"]
                portdev = portdev_of(chain["name"])
                if portdev:
                    ports.setdefault(portdev, PortLive(set(), set())).chains.add((chain["family"], chain["name"]))
            elif "map" in item:
                vmap = item["map"]
                for key, verdict in vmap.get("elem", []):
                    target = verdict.get("jump", {}).get("target", "")
                    portdev = portdev_of(target)
                    if portdev:
                        text = f'"{key}"' if isinstance(key, str) else f"0x{key:x}"
                        ports.setdefault(portdev, PortLive(set(), set())).elements.add(
                            (vmap["family"], vmap["name"], text))
        return ports

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
