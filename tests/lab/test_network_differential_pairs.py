"""Differential test of two virtual networks on one host against libvirt
9.0's network driver: the vm on br0 (network a), the peer on br1 (network b);
traffic between them must get the same verdict and translated source as
between two libvirt networks. (A module of its own: one oracle at a time, and
the other module's is released when that module ends.)"""

import pytest

from engine.network_forms import network_from_xml
from lab.netns import PEER, VM
from lab.network_lab import tcp, udp
from test_network_differential import NAME, network_xml, oracle_labs  # pylint: disable=import-error

pytestmark = pytest.mark.oracle

B_ADDRESSES = ("10.1.0.20", "2001:db8:1::20")
B_IPS = "<ip address='10.1.0.1' prefix='24'/><ip family='ipv6' address='2001:db8:1::1' prefix='64'/>"
PAIRS = {
    "nat and nat": ("<forward mode='nat'/>", "<forward mode='nat'/>"),
    "nat and route": ("<forward mode='nat'/>", "<forward mode='route'/>"),
    "route and isolated": ("<forward mode='route'/>", ""),
    "route and route": ("<forward mode='route'/>", "<forward mode='route'/>"),
}


def _pair_xml(forward_a, forward_b):
    return (network_xml(forward_a).replace(NAME, "neta"),
            f"<network><name>netb</name>{forward_b}<bridge name='br1' stp='off' delay='0'/>"
            f"<mac address='52:54:00:ff:00:02'/>{B_IPS}</network>")


def _move_peer(lab):
    """The peer leaves br0's network for br1's (10.1.0.0/24, 2001:db8:1::/64);
    its default routes follow."""
    peer = lab.guests["peer"]
    lab.sh(peer.name, f"ip addr del {PEER[1]}/24 dev eth0", f"ip addr del {PEER[2]}/64 dev eth0",
           f"ip addr add {B_ADDRESSES[0]}/24 dev eth0", f"ip addr add {B_ADDRESSES[1]}/64 dev eth0 nodad",
           "ip route replace default via 10.1.0.1", "ip -6 route replace default via 2001:db8:1::1")


@pytest.fixture(scope="module")
def pair_labs(tmp_path_factory):
    with oracle_labs(tmp_path_factory, _move_peer) as (ours, theirs, host, oracle):
        ours.sh(ours.host, "ip link add br1 type bridge stp_state 0 forward_delay 0", "ip link set br1 up",
                "ip addr add 10.1.0.1/24 dev br1", "ip addr add 2001:db8:1::1/64 dev br1 nodad",
                f"ip link set {ours.guests['peer'].port} master br1")
        yield ours, theirs, host, oracle


def _observe_pair(lab):
    vm, peer = lab.guests["vm"].name, lab.guests["peer"].name
    seen = {}
    for family, (vm_ip, peer_ip) in (("v4", (VM[1], B_ADDRESSES[0])), ("v6", (VM[2], B_ADDRESSES[1]))):
        seen[f"{family} a to b udp"] = udp(vm, peer, peer_ip)
        seen[f"{family} a to b tcp"] = tcp(vm, peer, peer_ip)
        seen[f"{family} b to a udp"] = udp(peer, vm, vm_ip)
        seen[f"{family} b to a tcp"] = tcp(peer, vm, vm_ip)
    return seen


@pytest.mark.parametrize("pair", list(PAIRS))
def test_two_networks_as_libvirt(pair_labs, pair):
    ours, theirs, host, oracle = pair_labs
    xml_a, xml_b = _pair_xml(*PAIRS[pair])
    for lab in (ours, theirs):
        lab.sh(lab.host, "sysctl -qw net.ipv4.ip_forward=0", "sysctl -qw net.ipv6.conf.all.forwarding=0")
    oracle.define_network("neta", xml_a)
    oracle.define_network("netb", xml_b)
    try:
        theirs.sh(theirs.host, f"ip link set {theirs.guests['vm'].port} master br0",
                  f"ip link set {theirs.guests['peer'].port} master br1")
        expected = _observe_pair(theirs)
    finally:
        oracle.undefine_network("neta")
        oracle.undefine_network("netb")
    host.networks.define([network_from_xml(xml_a), network_from_xml(xml_b)], exclusive=True)
    got = _observe_pair(ours)
    differ = {probe: (got[probe], expected[probe]) for probe in expected if got[probe] != expected[probe]}
    assert not differ, f"ours vs libvirt: {differ}"
