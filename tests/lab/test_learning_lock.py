"""The kernel keeps a learning port's lock, with no learner running: the
first address the VM uses (IPv4 source, ARP sender, IPv6 global source) or
the yiaddr of a DHCP ACK its server sends it is the only one that passes."""

import shutil

import pytest
from scapy.all import ARP, IP, UDP, Ether, IPOption, IPv6  # pylint: disable=no-name-in-module
from scapy.all import ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_Redirect  # pylint: disable=no-name-in-module

from engine.model import Binding, FilterRef
from engine.xml_form import filter_from_xml
from lab.probes import Probe, run_probes, tagged
from test_learner import _ack, _real_dhcp  # pylint: disable=import-error

SPOOF = "192.0.2.99"


def _udp(vm, peer, source):
    return Ether(src=vm.mac, dst=peer.mac) / IP(src=source, dst=peer.ip) / UDP(sport=4000, dport=5000)


def _passes(lab, frames):
    """{name: arrived at the peer} for frames sent by the VM, one after the other."""
    return {name: run_probes(lab, [Probe(name, "vm", "peer", tagged(frame))], wait=0.05)[name]
            for name, frame in frames}


def test_first_ipv4_source_locks(lab, host):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic")))
    assert host.locked(vm.port) == {"IP": []}
    seen = _passes(lab, [("real", _udp(vm, peer, vm.ip)), ("spoofed", _udp(vm, peer, SPOOF)),
                         ("real again", _udp(vm, peer, vm.ip)),
                         ("arp spoofed", Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff")
                          / ARP(hwsrc=vm.mac, psrc=SPOOF, pdst=peer.ip)),
                         ("arp real", Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff")
                          / ARP(hwsrc=vm.mac, psrc=vm.ip, pdst=peer.ip))])
    assert seen == {"real": True, "spoofed": False, "real again": True, "arp spoofed": False, "arp real": True}
    status = host.status(vm.port)
    assert status["locked"] == {"IP": [vm.ip]} and status["learning"]


def test_spoofed_first_is_locked_and_real_dropped(lab, host):
    """libvirt's documented caveat, kept exactly: the first address wins."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic")))
    seen = _passes(lab, [("spoofed", _udp(vm, peer, SPOOF)), ("real", _udp(vm, peer, vm.ip))])
    assert seen == {"spoofed": True, "real": False}
    assert host.locked(vm.port) == {"IP": [SPOOF]}


def test_arp_first_and_what_locks_nothing(lab, host):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic")))
    broadcast = Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff")
    seen = _passes(lab, [
        ("dhcp discover", broadcast / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)),
        ("arp probe", broadcast / ARP(hwsrc=vm.mac, psrc="0.0.0.0", pdst=vm.ip)),
        ("multicast source", _udp(vm, peer, "224.0.0.9")),
        ("class e source", _udp(vm, peer, "240.0.0.9")),
        ("arp of another mac", broadcast / ARP(hwsrc="52:54:00:66:66:66", psrc=SPOOF, pdst=peer.ip)),
        ("arp real", broadcast / ARP(hwsrc=vm.mac, psrc=vm.ip, pdst=peer.ip)),
        ("spoofed", _udp(vm, peer, SPOOF))])
    assert seen == {"dhcp discover": True, "arp probe": True, "multicast source": False, "class e source": False,
                    "arp of another mac": False, "arp real": True, "spoofed": False}
    assert host.locked(vm.port) == {"IP": [vm.ip]}


@pytest.mark.parametrize("ip_options", [False, True])
def test_dhcp_ack_locks_before_the_vm_speaks(lab, host, ip_options):
    """The ACK's yiaddr is taken from the UDP payload wherever the IP header ends (@th)."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"DHCPSERVER": (peer.ip,)})))
    rogue = _ack(peer.mac, "192.0.2.66", vm.mac, "192.0.2.77")  # not the trusted server
    offer = _ack(peer.mac, peer.ip, vm.mac, "192.0.2.78", kind="offer")
    ack = _ack(peer.mac, peer.ip, vm.mac, vm.ip)
    if ip_options:
        ack[IP].options = [IPOption(b"\x94\x04\x00\x00")]  # router alert: a 24-byte IP header
    for frame in (rogue, offer, ack):
        run_probes(lab, [Probe("reply", "peer", "vm", tagged(frame))], wait=0.05)
    assert host.locked(vm.port) == {"IP": [vm.ip]}
    assert _passes(lab, [("spoofed", _udp(vm, peer, SPOOF)), ("leased", _udp(vm, peer, vm.ip))]) == \
        {"spoofed": False, "leased": True}


def test_ipv6_first_global_source_locks(lab, host):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.define_filter(filter_from_xml("""<filter name='dual'><filterref filter='no-mac-spoofing'/>
      <filterref filter='no-ip-spoofing'/><filterref filter='no-ipv6-spoofing'/></filter>"""))
    host.bind(Binding(vm.port, vm.mac, FilterRef("dual")))
    eth = Ether(src=vm.mac, dst=peer.mac)
    seen = _passes(lab, [("link-local", eth / IPv6(src="fe80::1", dst=peer.ipv6) / UDP(dport=9)),
                         ("real", eth / IPv6(src=vm.ipv6, dst=peer.ipv6) / UDP(dport=9)),
                         ("spoofed", eth / IPv6(src="2001:db8::99", dst=peer.ipv6) / UDP(dport=9))])
    assert seen == {"link-local": True, "real": True, "spoofed": False}
    assert host.locked(vm.port) == {"IP": [], "IPV6": [vm.ipv6]}


def test_while_ipv6_is_learned_no_router_or_server_messages(lab, host):
    """Mode any lets link-local ND through while IPV6 is learned, but not what
    only routers and DHCPv6 servers send (an RA would make the VM everyone's router)."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.define_filter(filter_from_xml("""<filter name='dual'><filterref filter='no-mac-spoofing'/>
      <filterref filter='no-ip-spoofing'/><filterref filter='no-ipv6-spoofing'/></filter>"""))
    host.bind(Binding(vm.port, vm.mac, FilterRef("dual")))
    eth = Ether(src=vm.mac, dst="33:33:00:00:00:01")
    frames = {"neighbour solicitation": eth / IPv6(src="fe80::1", dst="ff02::1") / ICMPv6ND_NS(tgt="fe80::2"),
              "router advertisement": eth / IPv6(src="fe80::1", dst="ff02::1") / ICMPv6ND_RA(),
              "redirect": eth / IPv6(src="fe80::1", dst="ff02::1") / ICMPv6ND_Redirect(tgt="fe80::2", dst=peer.ipv6),
              "dhcpv6 server": eth / IPv6(src="fe80::1", dst="ff02::1") / UDP(sport=547, dport=546) / b"\x02abc"}
    seen = {}
    for name, frame in frames.items():
        frame[IPv6].fl = len(seen) + 1  # the whole frame is its tag (bridge netfilter trims trailing bytes)
        data = bytes(frame)
        seen[name] = run_probes(lab, [Probe(name, "vm", "peer", data, tag=data)], wait=0.05)[name]
    assert seen == {"neighbour solicitation": True, "router advertisement": False, "redirect": False,
                    "dhcpv6 server": False}
    assert host.locked(vm.port) == {"IP": [], "IPV6": []}  # link-local locks nothing


def test_the_lock_survives_reapplies_and_goes_with_the_port(lab, host):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic")))
    _passes(lab, [("real", _udp(vm, peer, vm.ip))])
    host.define_filter(filter_from_xml("<filter name='unused'><rule action='drop' direction='out'>"
                                       "<all/></rule></filter>"))
    host.restore()  # every port re-applied from the real ruleset
    assert host.locked(vm.port) == {"IP": [vm.ip]}
    assert _passes(lab, [("spoofed", _udp(vm, peer, SPOOF))]) == {"spoofed": False}
    host.unbind(vm.port)
    assert "lock4" not in lab.nft_list()


@pytest.mark.skipif(not (shutil.which("dnsmasq") and shutil.which("dhclient")), reason="dnsmasq or dhclient missing")
def test_real_dhcp_ack_locks(lab, host, tmp_path):
    """dnsmasq's real ACK (libvirt's own DHCP server) fills the lock, no learner running."""
    vm = lab.guests["vm"]
    server = lab.add_vm("dhcp", "52:54:00:00:00:0d", "192.0.2.2")
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"DHCPSERVER": (server.ip,)})))
    with _real_dhcp(server, vm, tmp_path, 4, "192.0.2.100,192.0.2.150,2m"):
        locked = host.locked(vm.port)["IP"]
        assert len(locked) == 1 and 100 <= int(locked[0].split(".")[-1]) <= 150
