# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running nft: one script is one kernel transaction (all or nothing), and
reading back what of ours is in force."""

from __future__ import annotations

import json
import subprocess
from typing import Any, Dict, List, Sequence

from .errors import NwfilterError
from .nft_compile import TABLE, PortLive, portdev_of

FAMILIES = ("bridge", "inet")


class Nft:
    def __init__(self, argv: Sequence[str] = ("nft",)) -> None:
        self.argv = list(argv)

    def _run(self, args: List[str], stdin: str = "") -> str:
        try:
            done = subprocess.run(self.argv + args, input=stdin, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise NwfilterError(f"cannot run {self.argv[0]}: {exc.strerror}") from None
        if done.returncode != 0:
            message = " ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
            raise NwfilterError(f"nft refused the change: {message[:600]}")
        return done.stdout

    def apply(self, script: str) -> None:
        """Run ``script`` as one transaction; on error nothing of it is in force."""
        self._run(["-f", "-"], script)

    def _tables(self) -> List[Dict[str, Any]]:
        items: List[Dict[str, Any]] = []
        for family in FAMILIES:
            try:
                out = self._run(["-j", "list", "table", family, TABLE])
            except NwfilterError:
                continue  # the table does not exist yet
            items += json.loads(out).get("nftables", [])
        return items

    def live(self) -> Dict[str, PortLive]:
        """Per port, the chains and verdict-map elements of ours in force now."""
        ports: Dict[str, PortLive] = {}
        for item in self._tables():
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
        """The exact rules in force for a port, as nft prints them."""
        chains = sorted(self.live().get(portdev, PortLive(set(), set())).chains)
        return "".join(self._run(["list", "chain", family, TABLE, name]) for family, name in chains)
