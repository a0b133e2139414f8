# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``Networks``: the facade for virtual networks, beside ``Host`` (which
exposes it as ``Host.networks``). The same cycle as for ports, under the same
store lock: load, check the new set of networks, compile, apply one nft
transaction (our network table rebuilt as a whole), then write the store;
if the store cannot be written, the old table is put back."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import NwfilterError
from .network_forms import network_to_xml, networks_xml
from .network_model import Network, check_networks
from .nft_network import BASE_CHAINS, MAP_TYPES, NET_TABLE, NetworkProgram, compile_network, expected_table, table_script
from .integrity import NOT_READ_BACK
from .nft_generation import Generation, Marker, next_to
from .nft_run import Nft
from .store import Store


@dataclass
class NetworkChange:
    changed: bool
    networks: List[str] = field(default_factory=list)  # the names defined, changed or removed
    before: Optional[str] = None
    after: Optional[str] = None
    repaired: List[str] = field(default_factory=list)  # what the kernel lacked or held otherwise (or would)


def _forwarding(networks: Sequence[Network]) -> List[str]:
    """The sysctls libvirt sets for networks that forward (it never clears them)."""
    wanted = []
    if any(n.mode != "isolated" and n.ipv4 for n in networks):
        wanted.append("net.ipv4.ip_forward")
    if any(n.mode != "isolated" and n.ipv6 for n in networks):
        wanted.append("net.ipv6.conf.all.forwarding")
    return wanted


def _key(vmap: str, key: object) -> str:
    """A map element's key from nft's JSON, as ``expected_table`` writes it:
    an interface name quoted, an address as the network it is (nft lists a
    one-address prefix as the address)."""
    if MAP_TYPES.get(vmap, "").startswith("ifname"):
        return f'"{key}"'
    if isinstance(key, dict) and "prefix" in key:
        key = f"{key['prefix']['addr']}/{key['prefix']['len']}"
    try:
        return str(ipaddress.ip_network(str(key)))
    except ValueError:
        return str(key)  # never ours: it differs from what we put there


class Networks:
    def __init__(self, store: Store, nft: Nft, netns: Optional[str] = None) -> None:
        self.store = store
        self.nft = nft
        self.netns = netns
        self.generation = Generation(netlink=nft.netlink)

    def all(self) -> Dict[str, Network]:
        return self.store.networks()

    @staticmethod
    def programs(networks: Dict[str, Network]) -> Dict[str, NetworkProgram]:
        return {name: compile_network(network) for name, network in sorted(networks.items())}

    def define(self, networks: Sequence[Network], exclusive: bool = False, check: bool = False) -> NetworkChange:
        """Add or replace these networks (with ``exclusive``, remove all others) in one transaction."""
        wanted: Dict[str, Network] = {}
        for network in networks:
            if network.name in wanted:
                raise NwfilterError(f"network {network.name!r} given twice")
            wanted[network.name] = network
        with self.store.locked(create=not check):
            old = self.all()
            new = {} if exclusive else dict(old)
            new.update(wanted)
            return self._change(old, new, check)

    def undefine(self, names: Sequence[str], check: bool = False) -> NetworkChange:
        with self.store.locked(create=not check):
            old = self.all()
            return self._change(old, {n: v for n, v in old.items() if n not in names}, check)

    def converge(self, check: bool = False) -> NetworkChange:
        """Make the kernel hold the stored networks' table (every change checks
        this first): changed, with what was repaired, when it did not."""
        with self.store.locked(create=not check):
            old = self.all()
            return self._change(old, old, check)

    def drift(self, networks: Dict[str, Network]) -> List[str]:
        """What of these networks' table the kernel lacks or holds otherwise:
        chains present with the rules we put there (their count, then their
        content as read back after our commit), map elements, no chains of
        ours it should not have (one listing of our network table, then one
        rule dump per chain)."""
        expected = expected_table(list(self.programs(networks).values()))
        if self.nft.dormant("inet", NET_TABLE):
            return [f"table inet {NET_TABLE} is dormant: none of its chains sees a packet"]
        held = self._held()
        if expected is None or held is None:
            return [] if expected is None and held is None else \
                [f"table inet {NET_TABLE} is {'missing' if held is None else 'there without a network'}"]
        rules, maps = held
        problems = [f"chain inet {NET_TABLE} {name} is missing" if name not in rules else
                    f"chain inet {NET_TABLE} {name} has {rules[name]} rules, not {len(wanted)}"
                    for name, wanted in sorted(expected["chains"].items()) if rules.get(name) != len(wanted)]
        problems += [f"chain inet {NET_TABLE} {name} was not installed by us"
                     for name in sorted(set(rules) - set(expected["chains"]))]
        problems += [f"map inet {NET_TABLE} {name} has {len(maps.get(name, []))} elements, not {len(elements)}"
                     if len(maps.get(name, [])) != len(elements) else
                     f"map inet {NET_TABLE} {name} has other elements than we put there"
                     for name, elements in sorted(expected["elements"].items()) if maps.get(name, []) != elements]
        if problems:
            return problems
        recorded, now = self._contents(expected)
        if recorded is None:
            return [f"what table inet {NET_TABLE} holds {NOT_READ_BACK}"]
        return [f"chain inet {NET_TABLE} {name} has other rules than we put there"
                for name in sorted(expected["chains"]) if now.get(name) != recorded.get(name)]

    def _contents(self, expected: Dict[str, object]) -> Tuple[Optional[Dict[str, str]], Dict[str, str]]:
        """Per chain of our network table, what we read back when we installed
        it (None: not known) and what it holds now (``rule_content``)."""
        chains = [("inet", name) for name in expected["chains"]]
        try:
            now = {name: digest for (_family, name), digest in self.nft.contents(chains, 0, NET_TABLE).items()}
        except OSError:
            now = {}  # a chain gone meanwhile: nothing is as recorded
        return self.store.kernel_contents("networks"), now

    def _held(self) -> Optional[Tuple[Dict[str, int], Dict[str, List[str]]]]:
        """What our network table holds: each chain's number of rules and each
        map's elements as ``expected_table`` writes them (one listing); None
        when there is no table."""
        items = self.nft.table("inet", NET_TABLE)
        if items is None:
            return None
        rules: Dict[str, int] = {}
        maps: Dict[str, List[str]] = {}
        for item in items:
            if "chain" in item:
                rules.setdefault(item["chain"]["name"], 0)
            elif "rule" in item:
                rules[item["rule"]["chain"]] = rules.get(item["rule"]["chain"], 0) + 1
            elif "map" in item:
                vmap = item["map"]["name"]
                maps[vmap] = sorted(f"{_key(vmap, key)} : jump {verdict.get('jump', {}).get('target')}"
                                    for key, verdict in item["map"].get("elem", []))
        return rules, maps

    def restore(self) -> NetworkChange:
        """Put the stored networks' table in force again (boot, or after someone flushed it)."""
        with self.store.locked():
            networks = self.all()
            self._enable_forwarding(list(networks.values()))  # a boot resets it
            self._apply(networks)
            return NetworkChange(True, sorted(networks))

    def _change(self, old: Dict[str, Network], new: Dict[str, Network], check: bool) -> NetworkChange:
        """Rebuild our network table as ``new`` when it changes or when the
        kernel does not hold ``old`` as stored (the rebuild repairs it)."""
        changed = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
        repaired = self.drift(old)
        if not changed and not repaired:
            return NetworkChange(False)
        try:
            check_networks(new.values())
            programs = list(self.programs(new).values())
            script = table_script(programs)
        except NwfilterError as exc:
            raise exc.within("no network changed") from None
        if not check:
            # as libvirt when it (re)starts a network: a changed network is a restarted one
            self._enable_forwarding([new[name] for name in changed if name in new])
            self._install(programs, script)
            try:
                self.store.save_networks(old, new)
            except OSError as exc:
                self._apply(old)  # the kernel has the new table but the store could not follow
                raise NwfilterError(f"cannot write the store {self.store.root}: {exc.strerror}; nothing changed") \
                    from None
        return NetworkChange(True, changed, networks_xml({n: old[n] for n in changed if n in old}) or None,
                             networks_xml({n: new[n] for n in changed if n in new}) or None, repaired)

    def _apply(self, networks: Dict[str, Network]) -> None:
        programs = list(self.programs(networks).values())
        self._install(programs, table_script(programs))

    def _install(self, programs: List[NetworkProgram], script: str) -> None:
        """Our network table as ``programs`` (``script``), one transaction, and
        what the kernel holds in it then, read back and recorded when that
        transaction was the only one (else the next check rebuilds the table
        rather than trust what someone may have changed in between)."""
        try:
            before: Optional[Marker] = self.generation.marker()
        except NwfilterError:
            before = None
        self.nft.apply(script)
        expected = expected_table(programs)
        recorded = None
        if expected is not None and before is not None:
            try:
                read = self.nft.contents([("inet", name) for name in expected["chains"]], 0, NET_TABLE)
                after = self.generation.marker()
                if next_to(before, after):
                    recorded = {name: digest for (_family, name), digest in read.items()}
            except (NwfilterError, OSError):
                pass
        self.store.set_kernel_contents("networks", recorded)

    def _enable_forwarding(self, networks: Sequence[Network]) -> None:
        """As libvirt does when it starts a nat, route or open network: without
        forwarding on, the host routes nothing for the guests."""
        names = _forwarding(networks)
        if not names:
            return
        if self.netns is None:
            for name in names:
                try:
                    with open(f"/proc/sys/{name.replace('.', '/')}", "w", encoding="ascii") as handle:
                        handle.write("1\n")
                except OSError as exc:
                    raise NwfilterError(f"cannot set {name} to 1: {exc.strerror}; nothing changed") from None
            return
        # /proc/sys/net shows the namespace of the process that reads it: one sysctl run inside
        done = subprocess.run(["ip", "netns", "exec", self.netns, "sysctl", "-qw"] + [f"{n}=1" for n in names],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise NwfilterError(f"cannot set {' and '.join(names)} to 1: {done.stderr.strip()}; nothing changed")

    def status(self) -> Dict[str, Dict[str, object]]:
        """Per network: its canonical XML, its nft rules and whether the kernel
        holds all of its chains, and our base chains, with the rules we put
        there, and its map elements."""
        networks = self.all()
        programs = self.programs(networks)
        expected = expected_table(list(programs.values()))
        held = self._held() if expected is not None and not self.nft.dormant("inet", NET_TABLE) else None
        rules, maps = held if held else ({}, {})
        recorded, now = self._contents(expected) if held else (None, {})
        base = [name for name, _spec, _rules in BASE_CHAINS]

        def holds(program: NetworkProgram) -> bool:
            chains = [chain for chain, _rules in program.chains] + base
            return held is not None and recorded is not None and \
                all(rules.get(c) == len(expected["chains"][c]) and now.get(c) == recorded.get(c) for c in chains) and \
                all(f"{key} : jump {chain}" in maps.get(vmap, []) for vmap, key, chain in program.elements)

        return {name: {"xml": network_to_xml(networks[name]), "nft": program.text, "enforced": holds(program)}
                for name, program in programs.items()}
