# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Our nftables layout, apart from the compiler that fills it: the two
tables and their base chains, the verdict maps, how per-port chains are
named, and what of a port is in the kernel. What reads or removes ports
(nft_run, integrity, nft_delete) needs only this, so a run that compiles
nothing does not import the compiler (docs/architecture.md).

- ``table bridge vmguard``: prerouting ``iifname vmap @from_vm`` (frames from
  the VM, libvirt's direction out) and postrouting ``oifname vmap @to_vm``
  (frames to the VM, direction in) jump to ``<port> o`` / ``<port> i`` and
  their sub-chains. Keyed by name, a port's rules are in
  force before its tap exists and survive its re-creation.
- ``table inet vmguard``: layer-3/4 rules with connection tracking, which the
  bridge family lacks here. Bridged IP packets reach it through br_netfilter
  with the bridge as their interface, so the bridge table tags them: the low
  14 bits of the packet mark carry the sending port's id, bits 14-27 the
  receiving port's; verdict maps on those bits lead to the port's ``fi`` (from the
  VM), ``fo`` (to the VM) and ``hi`` (from the VM to the host).
Per-port chain names are ``p/<port>/<part>`` (see chain_name).

Ports of one shape (their tree compiled with each variable's value looked up
per port, nft_compile) share its chains ``s/<digest>/<part>``: such a port is
set elements only. Dispatch chains (``shared_o``, ``shared_i``, ``shared_fi``,
``shared_fo``, ``shared_hi``) hold one rule per shape that jumps to its chain
for the ports in its sets; the port's id reaches the mark through verdict maps
on the ids' two halves (``id_from_lo`` ...) that jump to one of 128 fixed
one-rule chains each (``id/from/lo/<n>``): no element of a port leads to a
chain of its own, so a bind makes the kernel validate little.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

TABLE = "vmguard"
# A port id is 14 bits: 16,383 ports (store format 3; format 2 had 12 bits,
# bits 24-31 left to others). Bits 28-31 of the mark are never changed.
PORT_ID_BITS = 14
MAX_PORT_ID = (1 << PORT_ID_BITS) - 1
FROM_MASK, TO_SHIFT = MAX_PORT_ID, PORT_ID_BITS
OTHERS_MASK = 0xFFFFFFFF & ~(FROM_MASK | FROM_MASK << TO_SHIFT)


# A shared port's id is set in the mark in two halves per direction: (map, keyed by, first bit)
ID_MAPS = {"id_from_lo": ("iifname", 0), "id_from_hi": ("iifname", 1), "id_to_lo": ("oifname", 2),
           "id_to_hi": ("oifname", 3)}
# the dispatch chains: (family, chain) -> the shape's part they lead to
DISPATCH = {("bridge", "shared_o"): "o", ("bridge", "shared_i"): "i", ("inet", "shared_fi"): "fi",
            ("inet", "shared_fo"): "fo", ("inet", "shared_hi"): "hi"}
# the set of a shape's ports that each part is found by
PORT_SETS = {"o": "ports", "i": "ports", "fi": "from", "hi": "from", "fo": "to"}


def id_chain(vmap: str, value: int) -> str:
    """``id/<direction>/<half>/<value>``: the one-rule chain setting that half of a port id."""
    return "id/" + vmap[3:].replace("_", "/") + f"/{value}"


def _half_shift(vmap: str) -> int:
    """Where in a port id the half an id map sets begins."""
    return TO_SHIFT // 2 if vmap.endswith("hi") else 0


def id_targets(port_id: int) -> Dict[str, str]:
    """Per id map, the chain a port's element leads to."""
    return {vmap: id_chain(vmap, (port_id >> _half_shift(vmap)) & ((1 << TO_SHIFT // 2) - 1)) for vmap in ID_MAPS}


def id_part(vmap: str, target: str) -> int:
    """The part of a port id that an id map's element leading to ``target`` sets."""
    return int(target.rsplit("/", 1)[1]) << _half_shift(vmap)


def _id_chains(from_mask: int, to_shift: int) -> str:
    half = to_shift // 2
    lines = []
    for vmap, (_key, quarter) in ID_MAPS.items():
        shift = quarter * half if quarter < 2 else to_shift + (quarter - 2) * half
        keep = 0xFFFFFFFF & ~(((1 << half) - 1) << shift)
        for value in range(1 << half):
            chain = f"bridge {TABLE} {id_chain(vmap, value)}"
            lines += [f"add chain {chain}", f"flush chain {chain}",
                      f"add chain {chain} {{\nmeta mark set meta mark & 0x{keep:08x} | 0x{value << shift:08x}\n}}"]
    return "\n".join(lines)


def base_script(from_mask: int, to_shift: int, ids: bool = True) -> str:
    """Our tables, maps and base chains, for a mark layout. The dispatch
    chains are created, not flushed: they hold the shapes' rules. Without
    ``ids``, the 512 id chains are left as they are (a repair that found them
    whole: refilling them costs most of a small repair)."""
    return f"""add table bridge {TABLE}
add map bridge {TABLE} from_vm {{ type ifname : verdict; }}
add map bridge {TABLE} to_vm {{ type ifname : verdict; }}
add map bridge {TABLE} mark_to {{ type ifname : verdict; }}
""" + "".join(f"add map bridge {TABLE} {vmap} {{ type ifname : verdict; }}\n" for vmap in ID_MAPS) + f"""\
add chain bridge {TABLE} prerouting {{ type filter hook prerouting priority -300; policy accept; }}
add chain bridge {TABLE} forward {{ type filter hook forward priority -200; policy accept; }}
add chain bridge {TABLE} postrouting {{ type filter hook postrouting priority 300; policy accept; }}
add chain bridge {TABLE} shared_o
add chain bridge {TABLE} shared_i
{_id_chains(from_mask, to_shift) if ids else ""}
flush chain bridge {TABLE} prerouting
flush chain bridge {TABLE} forward
flush chain bridge {TABLE} postrouting
add rule bridge {TABLE} prerouting iifname vmap @id_from_lo
add rule bridge {TABLE} prerouting iifname vmap @id_from_hi
add rule bridge {TABLE} prerouting iifname vmap @from_vm
add rule bridge {TABLE} prerouting jump shared_o
add rule bridge {TABLE} forward oifname vmap @mark_to
add rule bridge {TABLE} forward oifname vmap @id_to_lo
add rule bridge {TABLE} forward oifname vmap @id_to_hi
add rule bridge {TABLE} postrouting oifname vmap @to_vm
add rule bridge {TABLE} postrouting jump shared_i
add table inet {TABLE}
add map inet {TABLE} fi {{ type mark : verdict; }}
add map inet {TABLE} fo {{ type mark : verdict; }}
add map inet {TABLE} hi {{ type mark : verdict; }}
add chain inet {TABLE} forward {{ type filter hook forward priority 0; policy accept; }}
add chain inet {TABLE} input {{ type filter hook input priority 0; policy accept; }}
add chain inet {TABLE} shared_fi
add chain inet {TABLE} shared_fo
add chain inet {TABLE} shared_hi
flush chain inet {TABLE} forward
flush chain inet {TABLE} input
add rule inet {TABLE} forward meta mark & 0x{from_mask:x} vmap @fi
add rule inet {TABLE} forward jump shared_fi
add rule inet {TABLE} forward meta mark & 0x{from_mask << to_shift:x} vmap @fo
add rule inet {TABLE} forward jump shared_fo
add rule inet {TABLE} input meta mark & 0x{from_mask:x} vmap @hi
add rule inet {TABLE} input jump shared_hi
"""


BASE = base_script(FROM_MASK, TO_SHIFT)

# the key type of each verdict map (BASE declares them)
MAP_KEYS = {("bridge", "from_vm"): "ifname", ("bridge", "to_vm"): "ifname", ("bridge", "mark_to"): "ifname",
            ("inet", "fi"): "mark", ("inet", "fo"): "mark", ("inet", "hi"): "mark",
            **{("bridge", vmap): "ifname" for vmap in ID_MAPS}}


def port_key(part: str, portdev: str, port_id: int) -> str:
    """What finds a port in the chains of a shape's ``part`` (DISPATCH), as nft syntax."""
    if part in ("o", "i"):
        return f'"{portdev}"'
    return f"0x{port_id << TO_SHIFT if part == 'fo' else port_id:x}"


def listed_keys(portdev: str, port_id: int) -> List[str]:
    """What finds a port in its shape's sets as nft lists them (``port_key``
    as nft prints it back): its name, its id as sender and as receiver."""
    return [f'"{portdev}"', f"0x{port_id:08x}", f"0x{port_id << TO_SHIFT:08x}"]


def key_expression(part: str) -> str:
    return {"o": "iifname", "i": "oifname", "fo": f"meta mark & 0x{FROM_MASK << TO_SHIFT:x}"}.get(
        part, f"meta mark & 0x{FROM_MASK:x}")


# everything of ours, whether it exists or not (``add`` first makes ``delete`` never fail)
REMOVE_ALL = "".join(f"add table {family} {TABLE}\ndelete table {family} {TABLE}\n" for family in ("bridge", "inet"))


@dataclass
class PortLive:
    """What of one port is in our tables now: chains (family, name), map
    elements (family, map, key as nft syntax) and, where known, a digest of
    each chain's rules (a chain whose rules do not change is left alone) and
    of what the kernel holds in it (``rule_content``, read back after our commit)."""

    chains: Set[Tuple[str, str]]
    elements: Set[Tuple[str, str, str]]
    digests: Dict[Tuple[str, str], str] = field(default_factory=dict)
    sets: Set[Tuple[str, str]] = field(default_factory=set)
    contents: Dict[Tuple[str, str], str] = field(default_factory=dict)
    members: Set[Tuple[str, str, str]] = field(default_factory=set)  # (family, set, element) in its shape's sets
    targets: Dict[Tuple[str, str, str], str] = field(default_factory=dict)  # of its id maps' elements
    specs: Dict[Tuple[str, str], str] = field(default_factory=dict)  # of the sets of its members

    def target(self, element: Tuple[str, str, str], portdev: str) -> str:
        """The chain an element of this port leads to."""
        return self.targets.get(element) or map_target(portdev, element[1])

    def holds(self, chain: Tuple[str, str], rules_digest: str) -> bool:
        """Whether ``chain`` is in force with rules of that digest (a
        transaction leaves it alone)."""
        return chain in self.chains and self.digests.get(chain) == rules_digest


Chain = Tuple[str, str]  # (family, name)
Element = Tuple[str, str, str]  # (family, map, key as nft syntax)


@dataclass
class Kernel:
    """What our tables hold now."""

    tables: Set[str] = field(default_factory=set)  # families
    maps: Set[Tuple[str, str]] = field(default_factory=set)
    hooked: Set[Chain] = field(default_factory=set)  # base chains with a hook
    rules: Dict[Chain, int] = field(default_factory=dict)  # every chain's rule count
    contents: Dict[Chain, str] = field(default_factory=dict)  # every chain's rule_content.chain_digest
    elements: Dict[Element, str] = field(default_factory=dict)  # to the jump target
    sets: Set[Chain] = field(default_factory=set)  # (family, name): the learning ports' address locks
    dormant: Set[str] = field(default_factory=set)  # families whose table is dormant: its hooks see nothing
    dropping: Set[Chain] = field(default_factory=set)  # base chains whose policy is not accept (ours all accept)
    members: Dict[Chain, Set[Tuple[bytes, bytes]]] = field(default_factory=dict)  # the shapes' sets (set_members)

    def add_map(self, vmap: Dict[str, Any]) -> None:
        """A map as nft lists it in JSON, with its elements."""
        self.maps.add((vmap["family"], vmap["name"]))
        for key, verdict in vmap.get("elem", []):
            text = f'"{key}"' if isinstance(key, str) else f"0x{key:x}"
            target = verdict.get("jump", {}).get("target", "") if isinstance(verdict, dict) else ""
            self.elements[(vmap["family"], vmap["name"], text)] = target

    def live(self) -> Dict[str, PortLive]:
        """Per port, its chains and elements in force (no digests: their rules are unknown)."""
        ports: Dict[str, PortLive] = {}
        for family, name in self.rules:
            portdev = portdev_of(name)
            if portdev:
                ports.setdefault(portdev, PortLive(set(), set())).chains.add((family, name))
        for element, target in self.elements.items():
            portdev = element[2][1:-1] if element[1] in ID_MAPS else portdev_of(target)
            if portdev:
                ports.setdefault(portdev, PortLive(set(), set())).elements.add(element)
                if element[1] in ID_MAPS:
                    ports[portdev].targets[element] = target
        for family, name in self.sets:
            portdev = portdev_of(name)
            if portdev:
                ports.setdefault(portdev, PortLive(set(), set())).sets.add((family, name))
        for (family, name), members in self.members.items():
            if family == "bridge" and name.endswith("/ports"):  # a shape's ports, by name
                for key, _end in members:
                    ports.setdefault(key.rstrip(b"\0").decode(errors="replace"), PortLive(set(), set()))
        return ports

    def port_ids(self) -> Dict[str, int]:
        """Port ids the kernel holds (the key of a port's ``fi`` element, or
        the halves its id map elements lead to)."""
        found = {portdev_of(target) or "": int(key, 16) for (family, vmap, key), target in self.elements.items()
                 if (family, vmap) == ("inet", "fi") and portdev_of(target)}
        for (_family, vmap, key), target in sorted(self.elements.items()):
            if vmap in ("id_from_lo", "id_from_hi") and target.startswith("id/"):
                found[key[1:-1]] = found.get(key[1:-1], 0) | id_part(vmap, target)
        return found


def digest(rules: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(rules).encode()).hexdigest()[:16]


LiveState = Mapping[str, PortLive]


@functools.lru_cache(maxsize=65536)
def chain_name(portdev: str, *parts: str) -> str:
    """``p/<portdev>/<part>...``: nft identifiers allow ``/``, which interface
    names and libvirt chain names lack (a chain name's ``:`` becomes ``/``)."""
    return "/".join(("p", portdev) + tuple(part.replace(":", "/") for part in parts))


def map_target(portdev: str, vmap: str) -> str:
    """The chain a port's element of ``vmap`` leads to (not of an id map: PortLive.target)."""
    return chain_name(portdev, {"from_vm": "o", "to_vm": "i", "mark_to": "mark"}.get(vmap, vmap))


def shape_parts(shape: str, chains: Iterable[str]) -> Tuple[str, ...]:
    """The parts (DISPATCH) a shape named ``shape`` has among these chain names."""
    names = set(chains)
    return tuple(part for part in DISPATCH.values() if f"{shape}/{part}" in names)


def dispatch_rule(shape: str, part: str) -> str:
    """The rule of a dispatch chain that sends a shape's ports to its ``part``."""
    return f"{key_expression(part)} @{shape}/{PORT_SETS[part]} jump {shape}/{part}"


def owner_of(name: str) -> str:
    """The port (``p/<port>``) or shape (``s/<digest>``) a chain or set of ours belongs to."""
    return "/".join(name.split("/")[:2])


def portdev_of(chain: str) -> Optional[str]:
    parts = chain.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "p" else None
