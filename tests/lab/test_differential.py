"""Differential test against libvirt 9.0: the same filters with the same
parameters, bound in two labs (ours through nftables, libvirt's real
nwfilter driver through ebtables/iptables), judged by the same real frames."""

import pytest
from scapy.all import IP, TCP, Ether  # pylint: disable=no-name-in-module

from engine.builtin_filters import LIBVIRT_FILTERS
from engine.host import Host
from engine.model import Binding, FilterRef
from engine.resolver import missing_variables
from engine.xml_form import filter_from_xml
from lab.libvirt_oracle import Oracle
from lab.netns import PEER, VM, Lab
from lab.probes import Probe, run_probes, standard_probes, tagged

pytestmark = pytest.mark.oracle

PARAMS = {"IP": ("192.0.2.10",), "IPV6": ("2001:db8::10",), "GATEWAY_MAC": ("52:54:00:00:00:02",),
          "DHCPSERVER": ("192.0.2.20",)}
CUSTOM = {
    "ssh-only": """<filter name='ssh-only'>
  <filterref filter='clean-traffic'/>
  <rule action='accept' direction='in'><tcp dstportstart='22'/></rule>
  <rule action='accept' direction='out'><all/></rule>
  <rule action='drop' direction='inout'><all/></rule>
</filter>""",
    "no-ping-in": """<filter name='no-ping-in'>
  <rule action='reject' direction='in'><icmp/></rule>
  <rule action='drop' direction='inout'><mac srcmacaddr='52:54:00:00:00:02' match='no' protocolid='ipv6'/></rule>
  <rule action='drop' direction='out' priority='100'><udp dstportstart='5000' dstportend='5001'/></rule>
</filter>""",
}


def _probes(lab):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    extra = {f"incoming tcp {port}": Ether(src=peer.mac, dst=vm.mac) / IP(src=peer.ip, dst=vm.ip)
             / TCP(sport=40000, dport=port, flags="S") for port in (22, 23)}
    extra["incoming icmp"] = Ether(src=peer.mac, dst=vm.mac) / IP(src=peer.ip, dst=vm.ip) / IP(proto=1)
    return standard_probes(vm, peer) + [Probe(name, "peer", "vm", tagged(frame)) for name, frame in extra.items()]


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    with Lab("a") as ours, Lab("o") as theirs:
        for lab in (ours, theirs):
            lab.add_vm("vm", *VM)
            lab.add_vm("peer", *PEER)
        with Oracle(theirs) as oracle:
            for name, xml in CUSTOM.items():
                oracle.define_filter(name, xml)
            host = Host(str(tmp_path_factory.mktemp("store")), netns=ours.host)
            for xml in CUSTOM.values():
                host.define_filter(filter_from_xml(xml))
            yield ours, theirs, host, oracle


def _params(name):
    filters = {**LIBVIRT_FILTERS, **{n: filter_from_xml(x) for n, x in CUSTOM.items()}}
    needed = missing_variables(filters, Binding("vnet0", VM[0], FilterRef(name)))
    params = {k: v for k, v in PARAMS.items() if k in needed}
    if "DHCPSERVER" in needed and "v6" in name:
        params["DHCPSERVER"] = ("2001:db8::20",)
    return params


@pytest.mark.parametrize("name", sorted(LIBVIRT_FILTERS) + sorted(CUSTOM))
def test_same_verdicts_as_libvirt(labs, name):
    ours, theirs, host, oracle = labs
    params = _params(name)
    port = ours.guests["vm"].port
    host.bind(Binding(port, VM[0], FilterRef(name, params)))
    oracle.bind(port, VM[0], name, params)
    try:
        probes = _probes(ours)
        mine = run_probes(ours, probes, wait=0.2)
        libvirt = run_probes(theirs, [Probe(p.name, p.sender, p.observer, p.frame) for p in probes], wait=0.2)
    finally:
        oracle.unbind(port)
        host.unbind(port)
    differing = {probe: ("vmguard passes" if mine[probe] else "vmguard drops") for probe in mine
                 if mine[probe] != libvirt[probe]}
    assert not differing
