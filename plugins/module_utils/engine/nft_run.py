# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running nft: one script is one kernel transaction (all or nothing), and
reading back what of ours is in force."""

from __future__ import annotations

import errno
import itertools
import json
import re
import struct
from typing import Any, Collection, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from .errors import NwfilterError
from .libnftables import OUTPUT_JSON, OUTPUT_TERSE, LibNftables, library
from .nft_layout import ID_MAPS, MAP_KEYS, TABLE, Chain, Kernel, PortLive, owner_of, portdev_of
from .set_members import (NFTA_DATA_VALUE, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END, NFTA_SET_ELEM_LIST_ELEMENTS,
                          decode, element_list, encode, map_key, map_key_text, set_named)
from .nft_netlink import Netlink, attribute, cstring, each_attribute, text
from .rule_content import chain_digest

FAMILIES = ("bridge", "inet")
OUTPUT_OPTIONS = {"-j": OUTPUT_JSON, "-t": OUTPUT_TERSE}  # nft's options, as libnftables takes them
NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE = 1, 4, 7
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS, NFT_TABLE_F_DORMANT = 1, 2, 0x1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NF_ACCEPT = 1, 3, 4, 5, 1
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFT_MSG_GETSET, NFTA_SET_TABLE, NFTA_SET_NAME = 10, 1, 2
NFT_MSG_GETSETELEM = 13
NFTA_SET_ELEM_DATA, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 2, 2, 1, 2
VERDICTS = {0: "drop", 1: "accept", -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
PER_CHAIN_DUMPS_FROM = 10000  # chains in one of our tables (Nft._rules)
# chains read back after a commit, and rules in our tables, for one dump per table (Nft.contents)
TABLE_DUMP_FROM, TABLE_DUMP_RULES = 2000, 50000
UNRECORDED = PortLive(set(), set())  # a port whose record cannot be read: none of its elements is known


def _elements_by_key(block: str) -> Tuple[str, Dict[str, List[str]]]:
    """A set or map as nft lists it: its head, without elements or closing
    brace, and its elements by their key's first part (what finds a port: its
    name or its id, nft_layout.listed_keys)."""
    head, _sep, listed = block.rstrip().rpartition("elements = {")
    if not _sep:
        return block.rstrip()[:-1].rstrip(), {}
    found: Dict[str, List[str]] = {}
    for item in listed.rsplit("}", 2)[0].split(","):
        item = item.strip()
        found.setdefault(re.split(r" [.:] ", item, 1)[0], []).append(item)
    return head.rstrip(), found


def _our_blocks(listing: str, family: str) -> List[str]:
    """The chains, sets and maps of our table of ``family`` in nft's listing."""
    start = listing.find(f"table {family} {TABLE} {{\n")
    if start < 0:
        return []
    end = listing.find("\n}\n", start)
    return re.split(r"\n\t(?=(?:chain|set|map) )", listing[start:end if end >= 0 else len(listing)])[1:]


def _elements(reply: Dict[int, bytes]) -> Iterator[Tuple[bytes, bytes, bytes]]:
    """(key, key end or empty, data) of each set element in a netlink reply."""
    for _kind, element in each_attribute(reply.get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
        parts = dict(each_attribute(element))
        key, end = (dict(each_attribute(parts.get(kind, b""))).get(NFTA_DATA_VALUE, b"")
                    for kind in (NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END))
        yield key, end, parts.get(NFTA_SET_ELEM_DATA, b"")


def _verdict(data: bytes) -> str:
    """A verdict map element's data as nft lists it (``jump chain``); empty for no verdict."""
    verdict = dict(each_attribute(dict(each_attribute(data)).get(NFTA_DATA_VERDICT, b"")))
    if NFTA_VERDICT_CODE not in verdict:
        return ""
    code = VERDICTS.get(struct.unpack(">i", verdict[NFTA_VERDICT_CODE][:4])[0], "?")
    chain = verdict.get(NFTA_VERDICT_CHAIN)
    return f"{code} {text(chain)}" if chain else code


def _shown(head: str, elements: Sequence[str]) -> str:
    return "\t" + head + ("\n\t\telements = { " + ", ".join(elements) + " }" if elements else "") + "\n\t}"


class Nft:
    """nftables through libnftables in-process (optionally in a named network
    namespace), or through the nft command ``argv`` when one is given or the
    library is missing."""

    def __init__(self, argv: Optional[Sequence[str]] = None, netns: Optional[str] = None) -> None:
        self.argv = list(argv or ("nft",))
        self.netns = netns
        self.lib: Optional[LibNftables] = None
        # libnftables is loaded on first use: a run that changes nothing never pays for it
        self._undecided = argv is None
        if argv is not None:
            self._command_in_netns()
        self.netlink = Netlink(netns)

    def _command_in_netns(self) -> None:
        if self.netns is not None:
            self.argv = ["ip", "netns", "exec", self.netns] + self.argv

    def _backend(self) -> Optional[LibNftables]:
        if self._undecided:
            self._undecided = False
            self.lib = LibNftables(self.netns) if library() is not None else None
            if self.lib is None:
                self._command_in_netns()
        return self.lib

    def _run(self, args: List[str], stdin: str = "") -> str:
        lib = self._backend()
        if lib is not None:
            options = list(itertools.takewhile(OUTPUT_OPTIONS.__contains__, args))
            commands = stdin if args[-2:] == ["-f", "-"] else " ".join(args[len(options):])
            code, output, error = lib.run(commands, sum(OUTPUT_OPTIONS[option] for option in options))
        else:
            import subprocess  # pylint: disable=import-outside-toplevel  # without libnftables only
            try:
                done = subprocess.run(self.argv + args, input=stdin, capture_output=True, text=True, errors="replace",
                                      check=False)
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

    def table(self, family: str, name: str) -> Optional[List[Dict[str, Any]]]:
        """The items of one table as nft's JSON gives them; None when it does
        not exist or nft cannot list it (its caller then rebuilds it)."""
        try:
            return json.loads(self._run(["-j", "list", "table", family, name])).get("nftables", [])
        except (NwfilterError, ValueError):
            return None

    def kernel(self) -> Kernel:
        """What our tables hold now: their chains, rule counts and rules'
        content from netlink dumps (listing a table makes nft decode every
        rule), their maps from nft."""
        kernel = Kernel()
        for family in FAMILIES:
            dormant = self.dormant(family, TABLE)
            if dormant is None:
                continue
            kernel.tables.add(family)
            if dormant:
                kernel.dormant.add(family)
            wanted = [NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY]
            for chain in self.netlink.request(NFT_MSG_GETCHAIN, wanted, family, dump=True):
                if text(chain[NFTA_CHAIN_TABLE]) == TABLE:
                    name = (family, text(chain[NFTA_CHAIN_NAME]))
                    kernel.rules[name] = 0
                    if NFTA_CHAIN_HOOK in chain:
                        kernel.hooked.add(name)
                        if struct.unpack(">I", chain.get(NFTA_CHAIN_POLICY, bytes(4))[:4])[0] != NF_ACCEPT:
                            kernel.dropping.add(name)
            self._read_rules(kernel, family)
            for found in self.netlink.request(NFT_MSG_GETSET, [NFTA_SET_TABLE, NFTA_SET_NAME], family, dump=True):
                if text(found[NFTA_SET_TABLE]) == TABLE:
                    name = text(found[NFTA_SET_NAME])
                    if name.startswith("s/"):  # a shape's (nft_layout)
                        kernel.members[(family, name)] = self.set_members(family, name)
                    else:
                        kernel.sets.add((family, name))
            for vmap in sorted(name for f, name in MAP_KEYS if f == family):
                try:
                    listed = json.loads(self._run(["-j", "list", "map", family, TABLE, vmap]))
                except NwfilterError:
                    continue  # the map does not exist
                for item in listed.get("nftables", []):
                    if "map" in item:
                        kernel.add_map(item["map"])
        return kernel

    def dormant(self, family: str, table: str) -> Optional[bool]:
        """Whether that table of ours is dormant (its base chains unhooked: it
        sees no packet); None when it does not exist. From netlink: nft 1.0.6
        lists a table's flags in JSON as garbage."""
        for found in self.netlink.request(NFT_MSG_GETTABLE, [NFTA_TABLE_NAME, NFTA_TABLE_FLAGS], family, dump=True):
            if text(found[NFTA_TABLE_NAME]) == table:
                return bool(struct.unpack(">I", found.get(NFTA_TABLE_FLAGS, bytes(4))[:4])[0] & NFT_TABLE_F_DORMANT)
        return None

    def _read_rules(self, kernel: Kernel, family: str) -> None:
        """Each listed chain's rule count and content (``rule_content``)."""
        chains = [name for name in kernel.rules if name[0] == family]
        for name, rules in self._rules(family, chains, len(chains) < PER_CHAIN_DUMPS_FROM).items():
            kernel.rules[name] = len(rules)
            kernel.contents[name] = chain_digest(rules)

    def contents(self, chains: Collection[Chain], rules_of_ours: int, table: str = TABLE) -> Dict[Chain, str]:
        """The content of these chains of ours (what ``kernel`` reads of them),
        right after our commit: one dump per chain, or one of each table
        when they are many and our tables (``rules_of_ours``, about) not huge."""
        found: Dict[Chain, str] = {}
        for family in FAMILIES:
            wanted = [chain for chain in chains if chain[0] == family]
            if wanted:
                whole = len(wanted) >= TABLE_DUMP_FROM and rules_of_ours <= TABLE_DUMP_RULES
                rules = self._rules(family, wanted, whole, table)
                found.update((name, chain_digest(rules.get(name, []))) for name in wanted)
        return found

    def _rules(self, family: str, chains: Sequence[Chain], whole: bool, table: str = TABLE) -> Dict[Chain, List[bytes]]:
        """Per chain, its rules' expressions: from one dump of the table
        (``whole``) or one dump per chain. A dump of the whole table resumes
        each 32 KB reply by skipping every rule sent before, so it costs about
        the square of the table's rules; a dump per chain costs about 25 µs a
        chain. At 10,000 ports: 11.8 s against 2.3 s; at 1,000 the table's
        dump is the cheaper, 0.10 s against 0.18 s."""
        named = attribute(NFTA_RULE_TABLE, cstring(table))
        found: Dict[Chain, List[bytes]] = {name: [] for name in chains}
        if whole:
            for rule in self.netlink.request(NFT_MSG_GETRULE, [NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS], family, named,
                                             dump=True):
                found.setdefault((family, text(rule[NFTA_RULE_CHAIN])), []).append(rule.get(NFTA_RULE_EXPRESSIONS, b""))
            return found
        for name in chains:
            found[name] = [rule.get(NFTA_RULE_EXPRESSIONS, b"") for rule in self.netlink.request(
                NFT_MSG_GETRULE, [NFTA_RULE_EXPRESSIONS], family, named + attribute(NFTA_RULE_CHAIN, cstring(name[1])),
                dump=True)]
        return found

    def set_members(self, family: str, name: str) -> Set[Tuple[bytes, bytes]]:
        """The elements of one of our sets as the kernel holds them: (key, key
        end or empty), the form set_members.encode gives."""
        replies = self.netlink.request(NFT_MSG_GETSETELEM, [NFTA_SET_ELEM_LIST_ELEMENTS], family, set_named(name),
                                       dump=True)
        return {(key, end) for reply in replies for key, end, _data in _elements(reply)}

    def live(self) -> Dict[str, PortLive]:
        """Per port, the chains and verdict-map elements of ours in force now."""
        return self.kernel().live()

    def set_elements(self, family: str, name: str) -> List[str]:
        """The addresses in one of our sets (none when it does not exist)."""
        try:
            out = self._run(["-j", "list", "set", family, TABLE, name])
        except NwfilterError:
            return []
        return [str(e) for item in json.loads(out).get("nftables", []) if "set" in item
                for e in item["set"].get("elem", [])]

    def ports_rules(self, portdevs: Sequence[str], shapes: Mapping[str, Tuple[str, Sequence[str]]],
                    live: Optional[Mapping[str, PortLive]] = None) -> Dict[str, str]:
        """Per port, the exact rules in force, as nft prints them: its own
        chains, or (``shapes``: per port of a shape, its name and the keys
        that find the port, nft_layout.listed_keys) the shape's chains and the
        port's elements of its sets. Read in one go for all the ports, so a
        change running at the same time cannot make it fail.

        Many ports: one listing per table. A few (``live``: per port, what its
        record says it holds): one terse listing, which reads no set element
        (nft 1.0.6 reads every element of a table to list even one chain of
        it), and each port's elements asked of the kernel by their keys, so
        that the read costs what it shows, not what the host holds."""
        if live is not None:
            try:
                return self._ports_rules(portdevs, shapes, live)
            except OSError:  # a kernel that cannot get one element: the listing has them all
                pass
        return self._ports_rules(portdevs, shapes, None)

    def _ports_rules(self, portdevs: Sequence[str], shapes: Mapping[str, Tuple[str, Sequence[str]]],
                     live: Optional[Mapping[str, PortLive]]) -> Dict[str, str]:
        users: Dict[str, List[str]] = {}  # per block of ours, the ports it is shown for
        for portdev in portdevs:
            if portdev in shapes:
                users.setdefault(shapes[portdev][0], []).append(portdev)
                for vmap in ID_MAPS:
                    users.setdefault(vmap, []).append(portdev)
            else:
                users[f"p/{portdev}"] = [portdev]
        chains: Dict[str, Dict[str, List[str]]] = {p: {} for p in portdevs}
        for family in FAMILIES:
            try:
                listing = self._run(["list", "table", family, TABLE] if live is None
                                    else ["-t", "list", "ruleset", family])
            except NwfilterError:
                continue  # the table does not exist
            for block in _our_blocks(listing, family):
                kind, name = block.split(" ", 2)[:2]
                owner = name if name in ID_MAPS else owner_of(name)
                ports = users.get(owner, ()) if kind == "chain" or portdev_of(name) is None else ()
                if kind == "chain":
                    for portdev in ports:
                        chains[portdev].setdefault(family, []).append(f"\t{block.rstrip()}")
                    continue
                head, by_key = _elements_by_key(block)
                for portdev in ports:  # a shape's set or an id map: the port's own elements
                    mine = self._elements_of(family, name, live.get(portdev, UNRECORDED)) if live is not None \
                        else [item for key in shapes[portdev][1] for item in by_key.get(key, ())]
                    chains[portdev].setdefault(family, []).append(_shown(head, mine))
        return {portdev: "".join(f"table {family} {TABLE} {{\n" + "\n".join(blocks) + "\n}\n"
                                 for family, blocks in found.items())
                for portdev, found in chains.items()}

    def _elements_of(self, family: str, name: str, port: PortLive) -> List[str]:
        """A port's elements of one of its shape's sets or of an id map, as
        nft lists them, of those its record names that the kernel holds."""
        if name in ID_MAPS:
            held = [self.element(family, name, map_key(key))
                    for f, m, key in sorted(port.elements) if (f, m) == (family, name)]
            return [f"{map_key_text(found[0])} : {found[2]}" for found in held if found]
        spec = port.specs.get((family, name), "")
        held = [self.element(family, name, *encode(spec, element))
                for f, s, element in sorted(port.members) if (f, s) == (family, name)]
        return [shown for shown in (decode(spec, found[0], found[1]) for found in held if found) if shown]

    def element(self, family: str, name: str, key: bytes, end: bytes = b"") -> Optional[Tuple[bytes, bytes, str]]:
        """One element of a set or map of ours, got by its key as the kernel
        holds it (set_members): its key, its key's end and, of a verdict map's
        element, the verdict as nft lists it; None when the kernel holds none."""
        try:
            replies = self.netlink.request(NFT_MSG_GETSETELEM, [NFTA_SET_ELEM_LIST_ELEMENTS], family,
                                           element_list(name, key, end))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        for key, end, data in (found for reply in replies for found in _elements(reply)):
            return key, end, _verdict(data)
        return None
