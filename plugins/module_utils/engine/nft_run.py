# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running nft: one script is one kernel transaction (all or nothing), and
reading back what of ours is in force."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .errors import NwfilterError
from .libnftables import LIB, LibNftables
from .nft_compile import TABLE, PortLive, portdev_of

FAMILIES = ("bridge", "inet")


@dataclass
class Layout:
    """What exists of ours: the families of our tables, our maps (family,
    name) and each chain's (family, name) number of rules."""

    tables: Set[str]
    maps: Set[Tuple[str, str]]
    rules: Dict[Tuple[str, str], int]


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

    def _ours(self, kind: str) -> List[Dict[str, Any]]:
        """Our ``chain`` or ``map`` objects as nft's JSON gives them, without
        any rules: listing whole tables in JSON takes ten times longer."""
        found: List[Dict[str, Any]] = []
        for family in FAMILIES:
            out = self._run(["-j", "list", f"{kind}s", family])
            found += [item[kind] for item in json.loads(out).get("nftables", [])
                      if kind in item and item[kind]["table"] == TABLE]
        return found

    def live(self) -> Dict[str, PortLive]:
        """Per port, the chains and verdict-map elements of ours in force now."""
        ports: Dict[str, PortLive] = {}
        for chain in self._ours("chain"):
            portdev = portdev_of(chain["name"])
            if portdev:
                ports.setdefault(portdev, PortLive(set(), set())).chains.add((chain["family"], chain["name"]))
        for vmap in self._ours("map"):
            for key, verdict in vmap.get("elem", []):
                target = verdict.get("jump", {}).get("target", "")
                portdev = portdev_of(target)
                if portdev:
                    text = f'"{key}"' if isinstance(key, str) else f"0x{key:x}"
                    ports.setdefault(portdev, PortLive(set(), set())).elements.add(
                        (vmap["family"], vmap["name"], text))
        return ports

    def layout(self) -> Layout:
        """Which of our tables and maps exist and how many rules each of our
        chains has, read from nft's text listing (a quarter of the time of
        the JSON one): in it a chain's rules are the lines indented twice
        after ``chain <name> {``, besides a base chain's ``type ... hook`` line."""
        found = Layout(set(), set(), {})
        for family in FAMILIES:
            try:
                text = self._run(["list", "table", family, TABLE])
            except NwfilterError:
                continue  # the table does not exist
            found.tables.add(family)
            chain: Optional[Tuple[str, str]] = None
            for line in text.splitlines():
                if line.startswith("\tchain ") or line.startswith("\tmap "):
                    kind, name = line.strip().rstrip("{").split(None, 1)
                    chain = (family, name.strip()) if kind == "chain" else None
                    if chain is None:
                        found.maps.add((family, name.strip()))
                    else:
                        found.rules[chain] = 0
                elif chain is not None and line.startswith("\t\t") and not (
                        line.startswith("\t\ttype ") and " hook " in line):
                    found.rules[chain] += 1
        return found

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
