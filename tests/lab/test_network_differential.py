"""Differential test of virtual networks against libvirt 9.0's network
driver: the same <network> XML started by libvirt in one lab (its bridge,
iptables rules and dnsmasq in that lab's host namespace) and applied by us
in another; the same real connections from the guest, the outside and the
other guest must get the same verdict and the same translated source."""

import pytest

from engine.host import Host
from engine.network_forms import network_from_xml
from lab.libvirt_oracle import Oracle
from lab.netns import PEER, VM, Lab
from lab.network_lab import OUTSIDE, add_outside, delete_bridge, route_guests, tcp, udp

pytestmark = pytest.mark.oracle

NAME = "vmgnet"
IPS = "<ip address='192.0.2.1' prefix='24'/><ip family='ipv6' address='2001:db8::1' prefix='64'/>"
SCENARIOS = {
    "nat with dev": "<forward mode='nat' dev='ext0'/>",
    "nat without dev": "<forward mode='nat'/>",
    "nat ipv6": "<forward mode='nat'><nat ipv6='yes'/></forward>",
    "route with dev": "<forward mode='route' dev='ext0'/>",
    "route without dev": "<forward mode='route'/>",
    "isolated": "",
    "open": "<forward mode='open'/>",
}


def _xml(forward):
    # the bridge's MAC stays the same from one network to the next, as the guests' neighbour caches expect
    return (f"<network><name>{NAME}</name>{forward}<bridge name='br0' stp='off' delay='0'/>"
            f"<mac address='52:54:00:ff:00:01'/>{IPS}</network>")


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    with Lab("a") as ours, Lab("o") as theirs:
        outs = {}
        for lab in (ours, theirs):
            lab.add_vm("vm", *VM)
            lab.add_vm("peer", *PEER)
            route_guests(lab)
            outs[lab.host] = add_outside(lab)
        delete_bridge(theirs)  # libvirt makes its own
        oracle = Oracle(theirs)
        try:
            oracle.__enter__()  # queues behind other oracles (the machine-wide lock)
        except RuntimeError as exc:
            pytest.skip(f"{exc} (stop it to compare)")
        try:
            yield ours, theirs, outs, Host(str(tmp_path_factory.mktemp("store")), netns=ours.host), oracle
        finally:
            oracle.__exit__(None, None, None)


def _observe(lab, out):
    """What the probes saw: the source address at the receiver, refused, timeout or None (nothing)."""
    vm, peer = lab.guests["vm"].name, lab.guests["peer"].name
    seen = {}
    for family, (vm_ip, out_ip, peer_ip, host_ip) in (("v4", (VM[1], OUTSIDE[0], PEER[1], "192.0.2.1")),
                                                       ("v6", (VM[2], OUTSIDE[1], PEER[2], "2001:db8::1"))):
        seen[f"{family} guest to outside udp"] = udp(vm, out, out_ip)
        seen[f"{family} guest to outside tcp (and replies)"] = tcp(vm, out, out_ip)
        seen[f"{family} outside to guest tcp"] = tcp(out, vm, vm_ip)
        seen[f"{family} outside to guest udp"] = udp(out, vm, vm_ip)
        seen[f"{family} guest to guest udp"] = udp(vm, peer, peer_ip)
        seen[f"{family} guest to host udp"] = udp(vm, lab.host, host_ip)
    return seen


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_same_verdicts_as_libvirt(labs, scenario):
    ours, theirs, outs, host, oracle = labs
    xml = _xml(SCENARIOS[scenario])
    for lab in (ours, theirs):  # forwarding is for each side to turn on
        lab.sh(lab.host, "sysctl -qw net.ipv4.ip_forward=0", "sysctl -qw net.ipv6.conf.all.forwarding=0")
    oracle.define_network(NAME, xml)
    try:
        theirs.sh(theirs.host, *(f"ip link set {g.port} master br0" for g in theirs.guests.values()))
        expected = _observe(theirs, outs[theirs.host])
    finally:
        oracle.undefine_network(NAME)
    host.networks.define([network_from_xml(xml)], exclusive=True)
    got = _observe(ours, outs[ours.host])
    differ = {probe: (got[probe], expected[probe]) for probe in expected if got[probe] != expected[probe]}
    assert not differ, f"ours vs libvirt: {differ}"
