"""The service repairs our rules by itself (learner/repair.py), running as a
process in the lab's host namespace: each kind of damage done with nft is
undone within a second, and spoofed frames are dropped again (real frames);
our own deliberate changes are never undone; one service per store.

Then other firewalls beside ours: an nftables.conf that starts with `flush
ruleset` (Debian's nftables.service on start, restart and stop), a
firewalld-like reload (its own table deleted and re-created), iptables-nft
chains as Docker and libvirt's network driver add them. Ours keep working,
theirs are untouched and keep working too."""

import re
import subprocess
import time

import pytest
from scapy.all import IP, UDP, Ether  # pylint: disable=no-name-in-module

from engine.model import Binding, FilterRef
from engine.network_forms import network_from_dict
from engine.xml_form import filter_from_xml
from lab.netns import run
from lab.probes import Probe, run_probes, standard_probes, tagged
from lab.service import Service

# clean-traffic (bridge chains) plus one layer-3 rule (inet table): damage to either table shows in frames
GUARDED = """<filter name='guarded'><filterref filter='clean-traffic'/>
  <rule action='drop' direction='out' priority='500'><udp dstportstart='7'/></rule></filter>"""


def _shape(lab):
    """The shape the bound port's chains are shared in."""
    return re.search(r"chain (s/[0-9a-f]+)/o ", lab.nft_list()).group(1)


def _ipset(lab):
    """The set of the bound port's IPv4 addresses."""
    return re.search(r"set (s/[0-9a-f]+/v\d+) \{\n\t\ttypeof iifname \. ip saddr\n", lab.nft_list()).group(1)


DAMAGES = {
    "flush ruleset": lambda lab: "flush ruleset",
    "delete bridge table": lambda lab: "delete table bridge vmguard",
    "delete inet table": lambda lab: "delete table inet vmguard",
    # a chain can only go with the rule that jumps to it
    "delete a shape's chain": lambda lab: (
        f"delete rule bridge vmguard {_shape(lab)}/o handle "
        f"{lab.rule_handle(f'{_shape(lab)}/o', f'jump {_shape(lab)}/o/ipv4-ip')}\n"
        f"delete chain bridge vmguard {_shape(lab)}/o/ipv4-ip"),
    "flush a shape's chain": lambda lab: f"flush chain bridge vmguard {_shape(lab)}/o/ipv4-ip",
    "take the port out of its shape": lambda lab: f'delete element bridge vmguard {_shape(lab)}/ports {{ "vnet0" }}',
    "add an element to a shape's set": lambda lab: (
        f'add element bridge vmguard {_ipset(lab)} {{ "vnet0" . 192.0.2.99 }}'),
    # same rule counts, same handles: only the rules' content tells
    "replace a shape's rule": lambda lab: (
        f"replace rule bridge vmguard {_shape(lab)}/o/ipv4-ip handle "
        f"{lab.rule_handle(f'{_shape(lab)}/o/ipv4-ip', 'drop')} accept"),
    "replace a base rule": lambda lab: (
        f"replace rule bridge vmguard prerouting handle {lab.rule_handle('prerouting', 'vmap @from_vm')} accept"),
    "make a table dormant": lambda lab: "add table bridge vmguard { flags dormant; }",
}


def _udp_to(lab, port):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    frame = Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(sport=4000, dport=port)
    return Probe(f"udp to port {port}", "vm", "peer", tagged(frame))


def probes(lab, *others):
    """Spoofed frames and the layer-3 drop (False when dropped), legitimate traffic (True), and ``others``."""
    chosen = {p.name: p for p in standard_probes(lab.guests["vm"], lab.guests["peer"])}
    picked = [chosen[name] for name in ("ipv4 udp", "spoofed mac", "spoofed ipv4", "arp spoofed ip")]
    return run_probes(lab, picked + [_udp_to(lab, 7)] + list(others))


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
        elif line.startswith(("\tchain ", "\tmap ", "\tset ")):
            block = found.setdefault((table, line), [])
        elif line.startswith("\tflags "):  # a dormant table
            found[(table, line)] = []
        elif line.startswith("\t\t"):
            block.append(line)
    # a set's elements, in any order
    return {key: sorted(item.strip(" {},") for line in lines for item in line.split(",")) if " set " in key[1] else lines
            for key, lines in found.items()}


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
        line = service.wait_for("repaired in")
    assert "nft (pid " in line, line  # who did it, and what was found, is logged
    print(f"{damage}: back after {took * 1000:.0f} ms; {line}")


@pytest.mark.parametrize("damage,found", [
    (lambda lab: "delete table inet vmguard-net", "table inet vmguard-net is missing"),
    (lambda lab: "replace rule inet vmguard-net postrouting handle "
                 f"{lab.rule_handle('postrouting', '@nat4', 'inet', 'vmguard-net')} accept",
     "chain inet vmguard-net postrouting has other rules than we put there")], ids=["delete", "replace a rule"])
def test_the_networks_table_is_repaired_too(lab, host, damage, found):
    host.networks.define([network_from_dict({"name": "lab", "bridge": "br0", "forward": {"mode": "nat"},
                                             "ipv4": ["192.0.2.1/24"]})])
    before = ruleset(lab)
    script = damage(lab)
    with Service(lab, host.store.root) as service:
        lab.nft(script)
        took = wait_until(lambda: ruleset(lab) == before, timeout=1.0)
        line = service.wait_for("repaired in")
    assert found in line, line
    print(f"network table back after {took * 1000:.0f} ms; {line}")


def test_deliberate_changes_are_not_undone(lab, guarded):
    """Our own changes (another process, as a module run) emit the same notifications:
    the service compares with the store and leaves them alone."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    with Service(lab, guarded.store.root) as service:
        guarded.bind(Binding(peer.port, peer.mac, FilterRef("clean-traffic", {"IP": (peer.ip,)})))
        guarded.unbind(vm.port)
        time.sleep(0.5)
        listing = lab.nft_list()
        assert '"vnet0"' not in listing and '"vnet1"' in listing
        assert run_probes(lab, standard_probes(vm, peer))["spoofed ipv4"]  # vnet0 unfiltered, as asked
        assert not [line for line in service.log if "repaired in" in line or "cannot" in line], service.log
    assert guarded.converge(check=True).repaired == []  # and the comparison reads the kernel right: nothing to repair


def test_one_service_per_store(lab, host):
    with Service(lab, host.store.root) as first:
        second = subprocess.run(first.argv, env=first.env, capture_output=True, text=True, timeout=30, check=False)
    assert second.returncode == 1
    assert second.stderr.strip() == (f"vmguard-learner: another vmguard-learner (pid {first.process.pid}) already "
                                     f"serves the store {host.store.root}; only one may run per store")


NFTABLES_CONF = """#!/usr/sbin/nft -f
flush ruleset
table inet filter {
    chain input { type filter hook input priority filter; policy accept; }
    chain forward { type filter hook forward priority filter; policy accept; udp dport 8 drop; }
    chain output { type filter hook output priority filter; policy accept; }
}
"""
# what firewalld's nftables backend does on reload: its own table only, deleted and re-created in one go
FIREWALLD_RELOAD = """table inet firewalld
delete table inet firewalld
table inet firewalld {
    chain filter_FORWARD { type filter hook forward priority filter + 10; policy accept; udp dport 8 drop; }
    chain filter_INPUT { type filter hook input priority filter + 10; policy accept; }
}
"""
IPTABLES = [  # Docker's and libvirt's network driver's chains, and one rule whose effect the frames show
    "-t nat -N DOCKER", "-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
    "-t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
    "-N DOCKER-USER", "-A FORWARD -j DOCKER-USER",
    "-N LIBVIRT_FWO", "-A FORWARD -j LIBVIRT_FWO", "-A LIBVIRT_FWO -i virbr0 -s 192.168.122.0/24 -j ACCEPT",
    "-A LIBVIRT_FWO -p udp --dport 8 -j DROP",
]


def _both(lab):
    """Our enforcement, plus theirs: UDP to port 8 dropped by the other firewall."""
    return probes(lab, _udp_to(lab, 8))


THEIRS_TOO = dict(ENFORCED, **{"udp to port 8": False})


def _theirs(lab, family, table):
    return run(["ip", "netns", "exec", lab.host, "nft", "list", "table", family, table]).stdout


def test_nftables_conf_with_flush_ruleset(lab, guarded, tmp_path):
    conf = tmp_path / "nftables.conf"
    conf.write_text(NFTABLES_CONF)
    load = ["ip", "netns", "exec", lab.host, "nft", "-f", str(conf)]
    ours = ruleset(lab)
    run(load)  # before the service runs: ours gone, theirs as the file says
    reference = _theirs(lab, "inet", "filter")
    with Service(lab, guarded.store.root) as service:
        wait_until(lambda: ruleset(lab) == {**ours, **_filter_blocks(lab)}, 1.0)  # repaired at start
        assert "at start" in service.wait_for("repaired in")
        run(load)  # nftables.service restarts
        took = wait_until(lambda: ruleset(lab) == {**ours, **_filter_blocks(lab)}, 1.0)
        assert _theirs(lab, "inet", "filter") == reference
        assert _both(lab) == THEIRS_TOO
    print(f"nftables.conf reloaded: ours back after {took * 1000:.0f} ms")


def _filter_blocks(lab):
    return {key: lines for key, lines in ruleset(lab).items() if key[0] == "table inet filter {"}


def test_firewalld_like_reload_leaves_ours_alone(lab, guarded):
    reload = ["ip", "netns", "exec", lab.host, "nft", "-f", "-"]
    run(reload, stdin=FIREWALLD_RELOAD)
    before = ruleset(lab)
    reference = _theirs(lab, "inet", "firewalld")
    with Service(lab, guarded.store.root, debug=True) as service:
        run(reload, stdin=FIREWALLD_RELOAD)
        time.sleep(0.3)
        assert ruleset(lab) == before and _theirs(lab, "inet", "firewalld") == reference
        assert _both(lab) == THEIRS_TOO
        # their transaction never touched our tables: nothing for the service to look at
        assert not [line for line in service.log if "nft (pid" in line], service.log


def _iptables_save(lab):
    """iptables-nft's rules without the packet counters (traffic changes them)."""
    text = run(["ip", "netns", "exec", lab.host, "iptables-save"]).stdout
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("damage", ["flush chain bridge vmguard <shape>/o/ipv4-ip", "delete table inet vmguard"])
def test_iptables_nft_chains_beside_ours(lab, guarded, damage):
    damage = damage.replace("<shape>", _shape(lab))
    for rule in IPTABLES:
        run(["ip", "netns", "exec", lab.host, "iptables"] + rule.split())
    theirs, ours = _iptables_save(lab), ruleset(lab)
    with Service(lab, guarded.store.root) as service:
        # Docker or libvirt restarting: iptables-restore rewrites their tables, ours are not involved
        run(["ip", "netns", "exec", lab.host, "iptables-restore"],
            stdin=run(["ip", "netns", "exec", lab.host, "iptables-save"]).stdout)
        lab.nft(damage)
        took = wait_until(lambda: {k: v for k, v in ruleset(lab).items() if "vmguard" in k[0]} ==
                          {k: v for k, v in ours.items() if "vmguard" in k[0]}, 1.0)
        assert _iptables_save(lab) == theirs
        assert _both(lab) == THEIRS_TOO
        assert len([line for line in service.log if "repaired in" in line]) == 1, service.log
    print(f"{damage} beside iptables-nft: ours back after {took * 1000:.0f} ms")
