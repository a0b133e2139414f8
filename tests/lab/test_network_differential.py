"""Differential test of virtual networks against libvirt 9.0's network
driver: the same <network> XML started by libvirt in one lab (its bridge,
iptables rules and dnsmasq in that lab's host namespace) and applied by us
in another; the same real connections from the guest, the outside and the
other guest must get the same verdict and the same translated source."""

import contextlib

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


def network_xml(forward):
    # the bridge's MAC stays the same from one network to the next, as the guests' neighbour caches expect
    return (f"<network><name>{NAME}</name>{forward}<bridge name='br0' stp='off' delay='0'/>"
            f"<mac address='52:54:00:ff:00:01'/>{IPS}</network>")


@contextlib.contextmanager
def oracle_labs(tmp_path_factory, prepare):
    """Our lab and libvirt's (whose br0 libvirt makes), each with a vm and a
    peer set up by ``prepare``, and the oracle (queued behind other oracles)."""
    with Lab("a") as ours, Lab("o") as theirs:
        for lab in (ours, theirs):
            lab.add_vm("vm", *VM)
            lab.add_vm("peer", *PEER)
            route_guests(lab)
            prepare(lab)
        delete_bridge(theirs)
        oracle = Oracle(theirs)
        try:
            oracle.__enter__()
        except RuntimeError as exc:
            pytest.skip(f"{exc} (stop it to compare)")
        try:
            yield ours, theirs, Host(str(tmp_path_factory.mktemp("store")), netns=ours.host), oracle
        finally:
            oracle.__exit__(None, None, None)


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    outs = {}
    with oracle_labs(tmp_path_factory, lambda lab: outs.__setitem__(lab.host, add_outside(lab))) as (
            ours, theirs, host, oracle):
        yield ours, theirs, outs, host, oracle


def _observe(lab, out):
    """What the probes saw: the source address at the receiver, refused, timeout or None (nothing)."""
    vm, peer = lab.guests["vm"].name, lab.guests["peer"].name
    seen = {}
    addresses = (("v4", (VM[1], OUTSIDE[0], PEER[1], "192.0.2.1")), ("v6", (VM[2], OUTSIDE[1], PEER[2], "2001:db8::1")))
    for family, (vm_ip, out_ip, peer_ip, host_ip) in addresses:
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
    xml = network_xml(SCENARIOS[scenario])
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
