"""The service repairs our rules by itself (learner/repair.py): each kind of
damage done with nft in the lab's host namespace is undone within a second,
and spoofed frames are dropped again (real frames); our own deliberate
changes are never undone; one service per store."""

import re
import subprocess
import time

import pytest

from engine.model import Binding, FilterRef
from engine.xml_form import filter_from_xml
from lab.netns import run
from lab.probes import Probe, run_probes, standard_probes, tagged
from lab.service import Service

# clean-traffic (bridge chains) plus one layer-3 rule (inet table): damage to either table shows in frames
GUARDED = """<filter name='guarded'><filterref filter='clean-traffic'/>
  <rule action='drop' direction='out' priority='500'><udp dstportstart='7'/></rule></filter>"""


def _handle(lab, chain, rule):
    """The handle of the rule of our bridge chain that contains ``rule``."""
    listing = run(["ip", "netns", "exec", lab.host, "nft", "-a", "list", "chain", "bridge", "vmguard", chain]).stdout
    return re.search(re.escape(rule) + r".* # handle (\d+)", listing).group(1)


DAMAGES = {
    "flush ruleset": lambda lab: "flush ruleset",
    "delete bridge table": lambda lab: "delete table bridge vmguard",
    "delete inet table": lambda lab: "delete table inet vmguard",
    # a port chain can only go with the rule that jumps to it
    "delete a port chain": lambda lab: (
        f"delete rule bridge vmguard p/vnet0/o handle {_handle(lab, 'p/vnet0/o', 'jump p/vnet0/o/ipv4-ip')}\n"
        "delete chain bridge vmguard p/vnet0/o/ipv4-ip"),
    "flush a port chain": lambda lab: "flush chain bridge vmguard p/vnet0/o/ipv4-ip",
    "delete a map element": lambda lab: 'delete element bridge vmguard from_vm { "vnet0" }',
}


def probes(lab):
    """Spoofed frames and the layer-3 drop (False when dropped), and legitimate traffic (True)."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    chosen = {p.name: p for p in standard_probes(vm, peer)}
    from scapy.all import IP, UDP, Ether  # pylint: disable=import-outside-toplevel,no-name-in-module
    port7 = Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(sport=4000, dport=7)
    picked = [chosen[name] for name in ("ipv4 udp", "spoofed mac", "spoofed ipv4", "arp spoofed ip")]
    return run_probes(lab, picked + [Probe("udp to port 7", "vm", "peer", tagged(port7))])


ENFORCED = {"ipv4 udp": True, "spoofed mac": False, "spoofed ipv4": False, "arp spoofed ip": False,
            "udp to port 7": False}


@pytest.fixture
def guarded(lab, host):
    vm = lab.guests["vm"]
    host.define_filter(filter_from_xml(GUARDED))
    host.bind(Binding(vm.port, vm.mac, FilterRef("guarded", {"IP": (vm.ip,)})))
    assert probes(lab) == ENFORCED
    return host


def ruleset(lab):
    """{(table, chain or map): its lines}: re-created tables and chains are listed last, so order does not count."""
    found, block = {}, []
    for line in lab.nft_list().splitlines():
        if line.startswith("table "):
            table = line
        elif line.startswith(("\tchain ", "\tmap ")):
            block = found.setdefault((table, line), [])
        elif line.startswith("\t\t"):
            block.append(line)
    return found


def wait_until(predicate, timeout):
    """Seconds until ``predicate()`` held (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - start


@pytest.mark.parametrize("damage", DAMAGES)
def test_each_damage_is_repaired_within_a_second(lab, guarded, damage):
    before = ruleset(lab)
    with Service(lab, guarded.store.root) as service:
        lab.nft(DAMAGES[damage](lab))
        took = wait_until(lambda: ruleset(lab) == before, timeout=1.0)
        assert probes(lab) == ENFORCED
        line = service.wait_for("re-applied")
    assert "nft (pid " in line, line  # who did it, and what was found, is logged
    print(f"{damage}: back after {took * 1000:.0f} ms; {line}")


def test_deliberate_changes_are_not_undone(lab, guarded):
    """Our own changes (another process, as a module run) emit the same notifications:
    the service compares with the store and leaves them alone."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    with Service(lab, guarded.store.root) as service:
        guarded.bind(Binding(peer.port, peer.mac, FilterRef("clean-traffic", {"IP": (peer.ip,)})))
        guarded.unbind(vm.port)
        time.sleep(0.5)
        listing = lab.nft_list()
        assert "p/vnet0/" not in listing and "p/vnet1/o" in listing
        assert run_probes(lab, standard_probes(vm, peer))["spoofed ipv4"]  # vnet0 unfiltered, as asked
        assert not [line for line in service.log if "re-applied" in line or "cannot" in line], service.log


def test_one_service_per_store(lab, host):
    with Service(lab, host.store.root) as first:
        second = subprocess.run(first.argv, env=first.env, capture_output=True, text=True, timeout=30, check=False)
    assert second.returncode == 1
    assert second.stderr.strip() == (f"vmguard-learner: another vmguard-learner (pid {first.process.pid}) already "
                                     f"serves the store {host.store.root}; only one may run per store")
