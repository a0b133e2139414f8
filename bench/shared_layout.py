"""An experiment for docs/dev/shared-chains.md, not the product's layout.

The bench filter (clean-traffic and an incoming tcp/22 accept) on N ports,
twice in one lab: as nft_compile writes it (chains per port, reached through
verdict maps), and hand-written as shared chains that look each port's
values up in sets keyed by its interface name. For each: nft's time to
install the N ports in one transaction and to add one port to N (what a
bind costs in the kernel), the verdicts of the standard probes sent from a
VM (real frames: they must be equal), and, in rounds interleaved between
the two, the UDP round trip through the bridge and the CPU time per frame
sent (steadier than round trips on a shared VM).

    python -m bench.shared_layout [--ports 1000 10000] [--runs 5] [--rounds 3] [--ids halves|bits]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.nft_run import Nft  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from engine import nft_layout as layout  # noqa: E402  pylint: disable=wrong-import-position
from engine.xml_form import filter_from_xml  # noqa: E402  pylint: disable=wrong-import-position

from bench.bulk import _timing  # noqa: E402  pylint: disable=wrong-import-position
from bench.run import FILTER, PEER, VM, _ports, _timed, frame_cost, round_trips  # noqa: E402  pylint: disable=wrong-import-position
from lab.netns import Lab  # noqa: E402  pylint: disable=wrong-import-position
from lab.probes import run_probes, standard_probes  # noqa: E402  pylint: disable=wrong-import-position

Port = Tuple[str, str, str, int]  # name, MAC, IPv4 address, port id

# Shared chains for the bench filter. Where a rule of clean-traffic names
# $MAC or $IP, the port's value is found in a set by the port's name. nft
# cannot OR a looked-up value into the mark, so the port ids go in one of two
# ways (--ids): "bits", set ``id_bit<k>`` holds the ports whose id has bit k
# and one shared rule per bit sets it (no verdict per port: adding a port
# validates nothing, but every frame makes 28 lookups); "halves", verdict
# maps jump to one of 128 shared chains per 7-bit half of the id (4 lookups
# and 4 one-rule chains a frame; the maps' elements are validated).
ID_BITS = 14
HALF = 7
SHARED = "vmshared"  # beside the engine's tables: the two layouts are switched by emptying base chains
ID_MAPS = {"from_lo": ("o", "iifname", 0), "from_hi": ("o", "iifname", HALF),
           "to_lo": ("mark_to", "oifname", ID_BITS), "to_hi": ("mark_to", "oifname", ID_BITS + HALF)}


def _id_rules(ids: str, chain: str) -> str:
    """What a layout's ``chain`` (o: the sending port's id, mark_to: the receiving port's) does with ids."""
    if ids == "bits":
        key, shift = ("iifname", 0) if chain == "o" else ("oifname", ID_BITS)
        return "".join(f"add rule bridge vmshared {chain} {key} @id_bit{k} meta mark set meta mark | 0x{1 << (k + shift):x}\n"
                       for k in range(ID_BITS))
    return "".join(f"add rule bridge vmshared {chain} {key} vmap @{name}\n"
                   for name, (where, key, _shift) in ID_MAPS.items() if where == chain)


def _id_objects(ids: str) -> str:
    if ids == "bits":
        return "".join(f"add set bridge vmshared id_bit{k} {{ type ifname; }}\n" for k in range(ID_BITS))
    lines = []
    for name, (_where, _key, shift) in ID_MAPS.items():
        lines.append(f"add map bridge vmshared {name} {{ type ifname : verdict; }}")
        keep = 0xFFFFFFFF & ~(((1 << HALF) - 1) << shift)
        lines += [f"add chain bridge vmshared {name}/{k} {{ meta mark set meta mark & 0x{keep:08x} | 0x{k << shift:x}; }}"
                  for k in range(1 << HALF)]
    return "\n".join(lines) + "\n"


def _id_elements(ids: str, ports: List[Port]) -> Dict[str, List[str]]:
    """The id sets' or maps' elements of ``ports``, by set or map name."""
    if ids == "bits":
        return {f"id_bit{k}": [f'"{name}"' for name, _mac, _ip, pid in ports if pid >> k & 1] for k in range(ID_BITS)}
    return {name: [f'"{port}" : jump {name}/{(pid >> (shift % ID_BITS)) & ((1 << HALF) - 1)}'
                   for port, _mac, _ip, pid in ports]
            for name, (_where, _key, shift) in ID_MAPS.items()}


SHARED_TEMPLATE = """add table bridge vmshared
add set bridge vmshared vm_ports { type ifname; }
add set bridge vmshared macs { type ifname . ether_addr; }
add set bridge vmshared ips { type ifname . ipv4_addr; }
add set bridge vmshared rarp { typeof iifname . @nh,64,48 . @nh,144,48; }
@ID_OBJECTS@add chain bridge vmshared mark_to
add chain bridge vmshared o
add chain bridge vmshared o_ip
add chain bridge vmshared i
add chain bridge vmshared prerouting { type filter hook prerouting priority -300; policy accept; }
add chain bridge vmshared forward { type filter hook forward priority -200; policy accept; }
add chain bridge vmshared postrouting { type filter hook postrouting priority 300; policy accept; }
add rule bridge vmshared prerouting iifname @vm_ports jump o
add rule bridge vmshared forward oifname @vm_ports jump mark_to
add rule bridge vmshared postrouting oifname @vm_ports jump i
add rule bridge vmshared o meta mark set meta mark & 0xffffc000
@FROM_ID@add rule bridge vmshared mark_to meta mark set meta mark & 0xf0003fff
@TO_ID@add rule bridge vmshared o iifname . ether saddr != @macs drop
add rule bridge vmshared o ether type ip jump o_ip
add rule bridge vmshared o ether type ip accept
add rule bridge vmshared o iifname . arp saddr ether != @macs drop
add rule bridge vmshared o iifname . arp saddr ip != @ips drop
add rule bridge vmshared o ether type arp accept
add rule bridge vmshared o ether daddr ff:ff:ff:ff:ff:ff iifname . ether saddr @macs ether type 0x8035 @nh,48,16 3 \
@nh,112,32 0 @nh,192,32 0 iifname . @nh,64,48 . @nh,144,48 @rarp accept
add rule bridge vmshared o ether type 0x8035 drop
add rule bridge vmshared o ether type 0x0835 accept
add rule bridge vmshared o drop
add rule bridge vmshared o_ip ip saddr 0.0.0.0 ip protocol udp return
add rule bridge vmshared o_ip iifname . ip saddr @ips return
add rule bridge vmshared o_ip drop
add rule bridge vmshared i ether type ip accept
add rule bridge vmshared i ether type arp accept
add rule bridge vmshared i ether daddr ff:ff:ff:ff:ff:ff ether type 0x8035 @nh,48,16 3 @nh,112,32 0 @nh,192,32 0 \
oifname . @nh,64,48 . @nh,144,48 @rarp accept
add rule bridge vmshared i ether type 0x8035 drop
add rule bridge vmshared i drop
add table inet vmshared
add set inet vmshared l3_from { type mark; }
add set inet vmshared l3_to { type mark; }
add chain inet vmshared fi
add chain inet vmshared fo
add chain inet vmshared hi
add chain inet vmshared forward { type filter hook forward priority 0; policy accept; }
add chain inet vmshared input { type filter hook input priority 0; policy accept; }
add rule inet vmshared forward meta mark & 0x3fff @l3_from jump fi
add rule inet vmshared forward meta mark & 0xfffc000 @l3_to jump fo
add rule inet vmshared input meta mark & 0x3fff @l3_from jump hi
add rule inet vmshared fi meta nfproto ipv4 meta l4proto 6 th sport 22 ct state established ct direction reply return
add rule inet vmshared fo meta nfproto ipv4 meta l4proto 6 th dport 22 ct state new,established ct direction original accept
add rule inet vmshared hi meta nfproto ipv4 meta l4proto 6 th sport 22 ct state established ct direction reply return
"""


def shared_base(ids: str) -> str:
    return (SHARED_TEMPLATE.replace("@ID_OBJECTS@", _id_objects(ids)).replace("@FROM_ID@", _id_rules(ids, "o"))
            .replace("@TO_ID@", _id_rules(ids, "mark_to")))


def _port_elements(ports: List[Port], ids: str) -> List[Tuple[str, str, str, List[str]]]:
    """What ``ports`` hold in the shared layout, set and map elements only:
    (family, set or map, its declaration, elements)."""
    def quoted(name: str) -> str:
        return f'"{name}"'
    found = [("bridge", name, "type ifname" if ids == "bits" else "type ifname : verdict", items)
             for name, items in _id_elements(ids, ports).items() if items]
    rarp = [f"{quoted(name)} . 0x{mac.replace(':', '')} . 0x{mac.replace(':', '')}" for name, mac, _ip, _pid in ports]
    return found + [
        ("bridge", "vm_ports", "type ifname", [quoted(name) for name, _mac, _ip, _pid in ports]),
        ("bridge", "macs", "type ifname . ether_addr", [f"{quoted(name)} . {mac}" for name, mac, _ip, _pid in ports]),
        ("bridge", "ips", "type ifname . ipv4_addr", [f"{quoted(name)} . {ip}" for name, _mac, ip, _pid in ports]),
        ("bridge", "rarp", "typeof iifname . @nh,64,48 . @nh,144,48", rarp),
        ("inet", "l3_from", "type mark", [f"0x{pid:x}" for _name, _mac, _ip, pid in ports]),
        ("inet", "l3_to", "type mark", [f"0x{pid << 14:x}" for _name, _mac, _ip, pid in ports])]


def shared_ports(ports: List[Port], ids: str) -> str:
    """The script adding ``ports`` to the shared layout."""
    return "".join(f"add {'map' if ':' in declared else 'set'} {family} vmshared {name} "
                   f"{{ {declared}; elements = {{ {', '.join(items)} }}; }}\n"
                   for family, name, declared, items in _port_elements(ports, ids))


def _without(ports: List[Port], ids: str) -> str:
    """The script taking ``ports`` out of the shared layout again (a map element by its key)."""
    return "".join(f"delete element {family} vmshared {name} {{ {', '.join(item.split(' : ')[0] for item in items)} }}\n"
                   for family, name, _declared, items in _port_elements(ports, ids))


def _applies(host: Host, call: Callable[[], object]) -> float:
    """The nft time of one engine call (its script's transaction)."""
    parts: Dict[str, List[float]] = {"nft wall": [], "nft CPU": []}
    apply = host.nft.apply
    host.nft.apply = _timing(parts, "nft", apply)
    try:
        call()
    finally:
        host.nft.apply = apply
    return sum(parts["nft wall"])


def _base_rules(script: str, table: str) -> Dict[Tuple[str, str], List[str]]:
    """The rules of a layout's base chains, by (family, chain)."""
    rules: Dict[Tuple[str, str], List[str]] = {}
    for line in script.splitlines():
        words = line.split()
        if words[:1] == ["add"] and words[1] == "rule" and words[3] == table and words[4] in BASE_CHAINS[words[2]]:
            rules.setdefault((words[2], words[4]), []).append(line)
    return rules


BASE_CHAINS = {"bridge": ("prerouting", "forward", "postrouting"), "inet": ("forward", "input")}


def _switch(nft: Callable[[str], object], on: Dict[Tuple[str, str], List[str]], table_on: str,
            off: Dict[Tuple[str, str], List[str]], table_off: str) -> None:
    """One layout's base chains filled, the other's emptied (their policy is accept), in one transaction."""
    nft("".join(f"flush chain {family} {table_off} {chain}\n" for family, chain in off) +
        "".join(f"flush chain {family} {table_on} {chain}\n" + "\n".join(rules) + "\n"
                for (family, chain), rules in on.items()))


def measure(count: int, runs: int, rounds: int, ids: str) -> Dict[str, Dict[str, object]]:
    results: Dict[str, Dict[str, object]] = {}
    with Lab("sl") as lab, tempfile.TemporaryDirectory() as root:
        vm, peer = lab.add_vm("vm", *VM), lab.add_vm("peer", *PEER)
        mine = [(vm.port, vm.mac, vm.ip), (peer.port, peer.mac, peer.ip)]
        ports = mine + _ports(count - 2)
        probes = standard_probes(vm, peer)
        engine_nft = Nft(netns=lab.host)

        def nft(script: str) -> float:
            return _timed(lambda: engine_nft.apply(script))

        numbered = [(p, mac, ip, pid) for pid, (p, mac, ip) in enumerate(ports, start=1)]
        shared = {"load": nft(shared_base(ids) + shared_ports(numbered, ids))}
        new = [("xnew", "52:54:00:99:00:01", "10.99.0.1", count + 1)]
        one = []
        for _run in range(runs):
            one.append(nft(shared_ports(new, ids)))
            nft(_without(new, ids))
        shared.update(one=statistics.median(one), verdicts=run_probes(lab, probes), rtt=[])
        base_rules = _base_rules(shared_base(ids), SHARED)
        nft("".join(f"flush chain {family} {SHARED} {chain}\n" for family, chain in base_rules))

        host = Host(root, netns=lab.host)
        host.define_filter(filter_from_xml(FILTER.format(port=22)))
        per_port = {"load": _applies(host, lambda: host.set_bindings(
            [Binding(p, mac, FilterRef("bench-vm", {"IP": (ip,)})) for p, mac, ip in ports]))}
        extra = Binding("xnew", "52:54:00:99:00:01", FilterRef("bench-vm", {"IP": ("10.99.0.1",)}))
        one = []
        for _run in range(runs):
            one.append(_applies(host, lambda: host.bind(extra)))
            host.unbind("xnew")
        per_port.update(one=statistics.median(one), verdicts=run_probes(lab, probes), rtt=[])
        engine_base = _base_rules(layout.BASE, layout.TABLE)

        per_port["cpu"], shared["cpu"] = [], []
        for _round in range(rounds):  # interleaved, so drift hits both alike
            per_port["rtt"].append(round_trips(lab, 2000))
            per_port["cpu"].append(frame_cost(lab, 50000))
            _switch(nft, base_rules, SHARED, engine_base, layout.TABLE)
            shared["rtt"].append(round_trips(lab, 2000))
            shared["cpu"].append(frame_cost(lab, 50000))
            _switch(nft, engine_base, layout.TABLE, base_rules, SHARED)
        results["chains per port (nft_compile)"] = per_port
        results[f"shared chains, values in sets (ids: {ids})"] = shared
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ports", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved data-plane rounds per layout")
    parser.add_argument("--ids", choices=("bits", "halves"), default="halves", help="how port ids reach the mark")
    args = parser.parse_args()
    print(f"# layouts of the bench filter, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; nft time through libnftables, one more port: median of {args.runs}")
    print("\n| ports | layout | install all, one transaction | add one port | UDP round trip, median (rounds) "
          "| CPU per frame sent VM -> peer, median (rounds) | probe verdicts |"
          "\n| --- | --- | --- | --- | --- | --- | --- |")
    for count in args.ports:
        results = measure(count, args.runs, args.rounds, args.ids)
        reference = next(iter(results.values()))["verdicts"]
        for name, found in results.items():
            same = "equal" if found["verdicts"] == reference else "DIFFER: " + ", ".join(
                sorted(name for name in reference if found["verdicts"].get(name) != reference[name]))
            print(f"| {count} | {name} | {found['load'] * 1000:.0f} ms | {found['one'] * 1000:.1f} ms "
                  f"| {statistics.median(found['rtt']):.0f} µs ({' '.join(f'{r:.0f}' for r in found['rtt'])}) "
                  f"| {statistics.median(found['cpu']):.2f} µs ({' '.join(f'{c:.2f}' for c in found['cpu'])}) | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
