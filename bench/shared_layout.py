"""An experiment for docs/dev/shared-chains.md, not the product's layout.

The bench filter (clean-traffic and an incoming tcp/22 accept) on N ports,
twice in one lab: as nft_compile writes it (chains per port, reached through
verdict maps), and hand-written as shared chains that look each port's
values up in sets keyed by its interface name. For each: nft's time to
install the N ports in one transaction and to add one port to N (what a
bind costs in the kernel), the verdicts of the standard probes sent from a
VM (real frames: they must be equal), and the UDP round trip through the
bridge.

    python -m bench.shared_layout [--ports 1000 10000] [--runs 5]
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
from engine.libnftables import LibNftables  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from engine.xml_form import filter_from_xml  # noqa: E402  pylint: disable=wrong-import-position

from bench.run import FILTER, PEER, VM, _ports, round_trips  # noqa: E402  pylint: disable=wrong-import-position
from lab.netns import Lab  # noqa: E402  pylint: disable=wrong-import-position
from lab.probes import run_probes, standard_probes  # noqa: E402  pylint: disable=wrong-import-position

Port = Tuple[str, str, str, int]  # name, MAC, IPv4 address, port id

# Shared chains for the bench filter. Where a rule of clean-traffic names
# $MAC or $IP, the port's value is found in a set by the port's name. The
# port ids go into the mark bit by bit (nft cannot OR a looked-up value into
# the mark): set ``id_bit<k>`` holds the ports whose id has bit k, so no
# chain and no verdict is per port, and adding a port validates nothing.
ID_BITS = 14
BITS = "".join(f"add set bridge vmguard id_bit{k} {{ type ifname; }}\n" for k in range(ID_BITS))
FROM_ID = "".join(f"add rule bridge vmguard o iifname @id_bit{k} meta mark set meta mark | 0x{1 << k:x}\n"
                  for k in range(ID_BITS))
TO_ID = "".join(f"add rule bridge vmguard mark_to oifname @id_bit{k} meta mark set meta mark | 0x{1 << k + ID_BITS:x}\n"
                for k in range(ID_BITS))
SHARED_BASE = """add table bridge vmguard
add set bridge vmguard vm_ports { type ifname; }
add set bridge vmguard macs { type ifname . ether_addr; }
add set bridge vmguard ips { type ifname . ipv4_addr; }
add set bridge vmguard rarp { typeof iifname . @nh,64,48 . @nh,144,48; }
""" + BITS + """add chain bridge vmguard mark_to
add chain bridge vmguard o
add chain bridge vmguard o_ip
add chain bridge vmguard i
add chain bridge vmguard prerouting { type filter hook prerouting priority -300; policy accept; }
add chain bridge vmguard forward { type filter hook forward priority -200; policy accept; }
add chain bridge vmguard postrouting { type filter hook postrouting priority 300; policy accept; }
add rule bridge vmguard prerouting iifname @vm_ports jump o
add rule bridge vmguard forward oifname @vm_ports jump mark_to
add rule bridge vmguard postrouting oifname @vm_ports jump i
add rule bridge vmguard o meta mark set meta mark & 0xffffc000
""" + FROM_ID + """add rule bridge vmguard mark_to meta mark set meta mark & 0xf0003fff
""" + TO_ID + """add rule bridge vmguard o iifname . ether saddr != @macs drop
add rule bridge vmguard o ether type ip jump o_ip
add rule bridge vmguard o ether type ip accept
add rule bridge vmguard o iifname . arp saddr ether != @macs drop
add rule bridge vmguard o iifname . arp saddr ip != @ips drop
add rule bridge vmguard o ether type arp accept
add rule bridge vmguard o ether daddr ff:ff:ff:ff:ff:ff iifname . ether saddr @macs ether type 0x8035 @nh,48,16 3 \
@nh,112,32 0 @nh,192,32 0 iifname . @nh,64,48 . @nh,144,48 @rarp accept
add rule bridge vmguard o ether type 0x8035 drop
add rule bridge vmguard o ether type 0x0835 accept
add rule bridge vmguard o drop
add rule bridge vmguard o_ip ip saddr 0.0.0.0 ip protocol udp return
add rule bridge vmguard o_ip iifname . ip saddr @ips return
add rule bridge vmguard o_ip drop
add rule bridge vmguard i ether type ip accept
add rule bridge vmguard i ether type arp accept
add rule bridge vmguard i ether daddr ff:ff:ff:ff:ff:ff ether type 0x8035 @nh,48,16 3 @nh,112,32 0 @nh,192,32 0 \
oifname . @nh,64,48 . @nh,144,48 @rarp accept
add rule bridge vmguard i ether type 0x8035 drop
add rule bridge vmguard i drop
add table inet vmguard
add set inet vmguard l3_from { type mark; }
add set inet vmguard l3_to { type mark; }
add chain inet vmguard fi
add chain inet vmguard fo
add chain inet vmguard hi
add chain inet vmguard forward { type filter hook forward priority 0; policy accept; }
add chain inet vmguard input { type filter hook input priority 0; policy accept; }
add rule inet vmguard forward meta mark & 0x3fff @l3_from jump fi
add rule inet vmguard forward meta mark & 0xfffc000 @l3_to jump fo
add rule inet vmguard input meta mark & 0x3fff @l3_from jump hi
add rule inet vmguard fi meta nfproto ipv4 meta l4proto 6 th sport 22 ct state established ct direction reply return
add rule inet vmguard fo meta nfproto ipv4 meta l4proto 6 th dport 22 ct state new,established ct direction original accept
add rule inet vmguard hi meta nfproto ipv4 meta l4proto 6 th sport 22 ct state established ct direction reply return
"""


def shared_ports(ports: List[Port]) -> str:
    """What each port adds to the shared layout: set elements only."""
    def quoted(name: str) -> str:
        return f'"{name}"'
    lines = []
    for k in range(ID_BITS):
        names = [quoted(name) for name, _mac, _ip, pid in ports if pid >> k & 1]
        if names:
            lines.append(f"add set bridge vmguard id_bit{k} {{ type ifname; elements = {{ {', '.join(names)} }}; }}")
    for what, items in (
            ("set bridge vmguard vm_ports", [quoted(name) for name, _mac, _ip, _pid in ports]),
            ("set bridge vmguard macs", [f"{quoted(name)} . {mac}" for name, mac, _ip, _pid in ports]),
            ("set bridge vmguard ips", [f"{quoted(name)} . {ip}" for name, _mac, ip, _pid in ports]),
            ("set bridge vmguard rarp", [f"{quoted(name)} . 0x{mac.replace(':', '')} . 0x{mac.replace(':', '')}"
                                         for name, mac, _ip, _pid in ports]),
            ("set inet vmguard l3_from", [f"0x{pid:x}" for _name, _mac, _ip, pid in ports]),
            ("set inet vmguard l3_to", [f"0x{pid << 14:x}" for _name, _mac, _ip, pid in ports])):
        kind, family, table, name = what.split()
        key = {"vm_ports": "type ifname", "macs": "type ifname . ether_addr", "ips": "type ifname . ipv4_addr",
               "rarp": "typeof iifname . @nh,64,48 . @nh,144,48", "l3_from": "type mark", "l3_to": "type mark"}[name]
        lines.append(f"add {kind} {family} {table} {name} {{ {key}; elements = {{ {', '.join(items)} }}; }}")
    return "\n".join(lines) + "\n"


def _nft(netns: str) -> Callable[[str], float]:
    library = LibNftables(netns)

    def run(script: str) -> float:
        start = time.perf_counter()
        code, _out, err = library.run(script)
        took = time.perf_counter() - start
        if code != 0:
            raise SystemExit(err)
        return took
    return run


def _applies(host: Host, call: Callable[[], object]) -> float:
    """The nft time of one engine call (its script's transaction)."""
    taken: List[float] = []
    apply = host.nft.apply

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return apply(*args, **kwargs)
        finally:
            taken.append(time.perf_counter() - start)
    host.nft.apply = timed
    try:
        call()
    finally:
        host.nft.apply = apply
    return sum(taken)


def _checked(lab: Lab) -> Tuple[Dict[str, bool], float]:
    verdicts = run_probes(lab, standard_probes(lab.guests["vm"], lab.guests["peer"]))
    return verdicts, round_trips(lab, 2000)


def measure(count: int, runs: int) -> Dict[str, Dict[str, object]]:
    results: Dict[str, Dict[str, object]] = {}
    with Lab("sl") as lab, tempfile.TemporaryDirectory() as root:
        vm, peer = lab.add_vm("vm", *VM), lab.add_vm("peer", *PEER)
        mine = [(vm.port, vm.mac, vm.ip), (peer.port, peer.mac, peer.ip)]
        ports = mine + _ports(count - 2)
        host = Host(root, netns=lab.host)
        host.define_filter(filter_from_xml(FILTER.format(port=22)))
        load = _applies(host, lambda: host.set_bindings(
            [Binding(p, mac, FilterRef("bench-vm", {"IP": (ip,)})) for p, mac, ip in ports]))
        extra = Binding("xnew", "52:54:00:99:00:01", FilterRef("bench-vm", {"IP": ("10.99.0.1",)}))
        one = []
        for _run in range(runs):
            one.append(_applies(host, lambda: host.bind(extra)))
            host.unbind("xnew")
        verdicts, rtt = _checked(lab)
        results["chains per port (nft_compile)"] = {"load": load, "one": statistics.median(one),
                                                    "verdicts": verdicts, "rtt": rtt}

        nft = _nft(lab.host)
        nft("delete table bridge vmguard\ndelete table inet vmguard\n")
        numbered = [(p, mac, ip, pid) for pid, (p, mac, ip) in enumerate(ports, start=1)]
        load = nft(SHARED_BASE + shared_ports(numbered))
        new = [("xnew", "52:54:00:99:00:01", "10.99.0.1", count + 1)]
        one = []
        for _run in range(runs):
            one.append(nft(shared_ports(new)))
            nft("".join(f'delete element bridge vmguard id_bit{k} {{ "xnew" }}\n' for k in range(ID_BITS)
                        if (count + 1) >> k & 1) +
                'delete element bridge vmguard vm_ports { "xnew" }\n'
                'delete element bridge vmguard macs { "xnew" . 52:54:00:99:00:01 }\n'
                'delete element bridge vmguard ips { "xnew" . 10.99.0.1 }\n'
                'delete element bridge vmguard rarp { "xnew" . 0x525400990001 . 0x525400990001 }\n'

                f'delete element inet vmguard l3_from {{ 0x{count + 1:x} }}\n'
                f'delete element inet vmguard l3_to {{ 0x{(count + 1) << 14:x} }}\n')
        verdicts, rtt = _checked(lab)
        results["shared chains, values in sets"] = {"load": load, "one": statistics.median(one),
                                                    "verdicts": verdicts, "rtt": rtt}
        nft("delete table bridge vmguard\ndelete table inet vmguard\n")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ports", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"# layouts of the bench filter, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; nft time through libnftables, one more port: median of {args.runs}")
    print("\n| ports | layout | install all, one transaction | add one port | UDP round trip | probe verdicts |"
          "\n| --- | --- | --- | --- | --- | --- |")
    for count in args.ports:
        results = measure(count, args.runs)
        reference = next(iter(results.values()))["verdicts"]
        for layout, found in results.items():
            same = "equal" if found["verdicts"] == reference else "DIFFER: " + ", ".join(
                sorted(name for name in reference if found["verdicts"].get(name) != reference[name]))
            print(f"| {count} | {layout} | {found['load'] * 1000:.0f} ms | {found['one'] * 1000:.1f} ms "
                  f"| {found['rtt']:.0f} µs | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
