"""vmguard-clean-traffic-dualstack (and -ra-server) with real frames through
the real kernel: each neighbour-discovery, router-advertisement and DHCPv6
attack of issue 13 is dropped, the VM's own IPv6 traffic passes, and two
guarded VMs talk over IPv6 (echo and TCP) while the attacks fail to poison
their neighbours (docs/dual-stack.md)."""

import os
import random
import socket
import struct
import time

import pytest
from scapy.all import Ether  # pylint: disable=no-name-in-module
from scapy.layers.dhcp6 import DHCP6_Advertise, DHCP6_Reply, DHCP6_Solicit
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest, ICMPv6MLReport2, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_Redirect, ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr, ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr, ICMPv6NDOptUnknown, IPv6,
    IPv6ExtHdrHopByHop, RouterAlert, in6_getnsma, in6_getnsmac)

from engine.host import Host
from engine.model import Binding, FilterRef
from engine.values import eui64_link_local
from lab.netns import Guest, Lab, inside, run
from lab.probes import Probe, run_probes

DUALSTACK = "vmguard-clean-traffic-dualstack"
RA_SERVER = "vmguard-clean-traffic-dualstack-ra-server"
SECOND = "2001:db8::11"  # the VM's second global address (the first is lab.netns.VM's)
FORGED_MAC = "52:54:00:66:66:66"
ROUTER = "fe80::1"  # the trusted router of the -ra-server filter


def _mac_for(address: str) -> str:
    """The Ethernet destination of an IPv6 destination (33:33:... for multicast)."""
    packed = socket.inet_pton(socket.AF_INET6, address)
    return "33:33:" + ":".join(f"{b:02x}" for b in packed[-4:])


def _solicited(address: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, in6_getnsma(socket.inet_pton(socket.AF_INET6, address)))


def _probe(name: str, sender: str, observer: str, frame) -> Probe:
    # Bridge netfilter trims bytes after the IPv6 payload, and ND messages are
    # checked to their exact length, so no trailing tag: a random flow label
    # makes each frame unique, and the whole frame is its tag.
    frame[IPv6].fl = random.getrandbits(20)
    data = bytes(frame)
    return Probe(name, sender, observer, data, tag=data)


def _nd(src_mac: str, src: str, dst: str, dst_mac: str = ""):
    return Ether(src=src_mac, dst=dst_mac or _mac_for(dst)) / IPv6(src=src, dst=dst, hlim=255)


def outgoing_probes(vm: Guest, peer: Guest):
    """{name: (frame, passes)} from the VM, observed at the peer."""
    lla, peer_lla, other = eui64_link_local(vm.mac), eui64_link_local(peer.mac), peer.ipv6
    to_peer = Ether(src=vm.mac, dst=peer.mac)
    tlla, slla = ICMPv6NDOptDstLLAddr(lladdr=vm.mac), ICMPv6NDOptSrcLLAddr(lladdr=vm.mac)
    nonce = ICMPv6NDOptUnknown(type=14, len=1, data=b"nonce!")  # RFC 7527, in Linux's DAD probes
    mld = IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLReport2()
    frames = {
        # legitimate
        "udp from first address": (to_peer / IPv6(src=vm.ipv6, dst=other) / UDP(dport=5000), True),
        "udp from second address": (to_peer / IPv6(src=SECOND, dst=other) / UDP(dport=5000), True),
        "tcp from link-local": (to_peer / IPv6(src=lla, dst=peer_lla) / TCP(dport=22, flags="S"), True),
        "echo from first address": (to_peer / IPv6(src=vm.ipv6, dst=other) / ICMPv6EchoRequest(), True),
        "ns from address": (_nd(vm.mac, vm.ipv6, _solicited(other)) / ICMPv6ND_NS(tgt=other) / slla, True),
        "ns from link-local": (_nd(vm.mac, lla, _solicited(peer_lla)) / ICMPv6ND_NS(tgt=peer_lla) / slla, True),
        "unicast ns without option": (_nd(vm.mac, vm.ipv6, other, peer.mac) / ICMPv6ND_NS(tgt=other), True),
        "na for own address": (_nd(vm.mac, vm.ipv6, other, peer.mac) / ICMPv6ND_NA(tgt=vm.ipv6, S=1) / tlla, True),
        "na for second address": (_nd(vm.mac, SECOND, other, peer.mac) / ICMPv6ND_NA(tgt=SECOND, S=1) / tlla, True),
        "na for own link-local": (_nd(vm.mac, lla, peer_lla, peer.mac) / ICMPv6ND_NA(tgt=lla, S=1) / tlla, True),
        "na without option": (_nd(vm.mac, vm.ipv6, other, peer.mac) / ICMPv6ND_NA(tgt=vm.ipv6, S=1), True),
        "dad ns for own address": (_nd(vm.mac, "::", _solicited(vm.ipv6)) / ICMPv6ND_NS(tgt=vm.ipv6) / nonce, True),
        "dad ns for own link-local": (_nd(vm.mac, "::", _solicited(lla)) / ICMPv6ND_NS(tgt=lla), True),
        "mld report": (Ether(src=vm.mac, dst=_mac_for("ff02::16")) / IPv6(src=lla, dst="ff02::16", hlim=1) / mld,
                       True),
        "mld report from ::": (Ether(src=vm.mac, dst=_mac_for("ff02::16")) / IPv6(src="::", dst="ff02::16", hlim=1)
                               / mld, True),
        "dhcpv6 solicit": (Ether(src=vm.mac, dst=_mac_for("ff02::1:2")) / IPv6(src=lla, dst="ff02::1:2")
                           / UDP(sport=546, dport=547) / DHCP6_Solicit(), True),
        "router solicitation": (_nd(vm.mac, lla, "ff02::2") / ICMPv6ND_RS() / slla, True),
        # attacks
        "spoofed global source": (to_peer / IPv6(src="2001:db8::99", dst=other) / UDP(dport=5000), False),
        "spoofed link-local source": (to_peer / IPv6(src="fe80::99", dst=peer_lla) / UDP(dport=5000), False),
        "udp from ::": (to_peer / IPv6(src="::", dst=other) / UDP(dport=5000), False),
        "na for another's address": (_nd(vm.mac, vm.ipv6, other, peer.mac) / ICMPv6ND_NA(tgt=other, S=1) / tlla,
                                     False),
        "na with forged lladdr": (_nd(vm.mac, vm.ipv6, other, peer.mac) / ICMPv6ND_NA(tgt=vm.ipv6, S=1)
                                  / ICMPv6NDOptDstLLAddr(lladdr=FORGED_MAC), False),
        "unsolicited na override": (_nd(vm.mac, vm.ipv6, "ff02::1") / ICMPv6ND_NA(tgt=other, S=0, O=1) / tlla, False),
        "na with a second lladdr": (_nd(vm.mac, vm.ipv6, "ff02::1") / ICMPv6ND_NA(tgt=vm.ipv6, O=1) / tlla
                                    / ICMPv6NDOptDstLLAddr(lladdr=FORGED_MAC), False),
        "na with lladdr behind another option": (_nd(vm.mac, vm.ipv6, "ff02::1") / ICMPv6ND_NA(tgt=vm.ipv6, O=1)
                                                 / nonce / ICMPv6NDOptDstLLAddr(lladdr=FORGED_MAC), False),
        "na from a spoofed source": (_nd(vm.mac, "2001:db8::99", other, peer.mac) / ICMPv6ND_NA(tgt=vm.ipv6, S=1)
                                     / tlla, False),
        "ns with forged lladdr": (_nd(vm.mac, vm.ipv6, _solicited(other)) / ICMPv6ND_NS(tgt=other)
                                  / ICMPv6NDOptSrcLLAddr(lladdr=FORGED_MAC), False),
        "dad ns for another's address": (_nd(vm.mac, "::", _solicited(other)) / ICMPv6ND_NS(tgt=other), False),
        "router advertisement": (_nd(vm.mac, lla, "ff02::1") / ICMPv6ND_RA(routerlifetime=1800) / slla
                                 / ICMPv6NDOptPrefixInfo(prefix="2001:db8:bad::", prefixlen=64), False),
        "redirect": (_nd(vm.mac, lla, peer_lla, peer.mac) / ICMPv6ND_Redirect(tgt=lla, dst="2001:db8:1::1"), False),
        "dhcpv6 advertise": (to_peer / IPv6(src=lla, dst=peer_lla) / UDP(sport=547, dport=546) / DHCP6_Advertise(),
                             False),
        "dhcpv6 reply": (to_peer / IPv6(src=lla, dst=peer_lla) / UDP(sport=547, dport=546) / DHCP6_Reply(), False),
    }
    return {name: (_probe(name, "vm", "peer", frame), passes) for name, (frame, passes) in frames.items()}


def incoming_probes(vm: Guest, peer: Guest, ra_source: str = ""):
    """{name: (frame, passes)} from the peer to the VM."""
    lla, peer_lla = eui64_link_local(vm.mac), eui64_link_local(peer.mac)
    to_vm = Ether(src=peer.mac, dst=vm.mac)
    router_advert = ICMPv6ND_RA(routerlifetime=1800) / ICMPv6NDOptSrcLLAddr(lladdr=peer.mac)
    frames = {
        "to first address": (to_vm / IPv6(src=peer.ipv6, dst=vm.ipv6) / UDP(dport=5000), True),
        "to second address": (to_vm / IPv6(src=peer.ipv6, dst=SECOND) / UDP(dport=5000), True),
        "to link-local": (to_vm / IPv6(src=peer_lla, dst=lla) / UDP(dport=5000), True),
        "to all nodes": (Ether(src=peer.mac, dst=_mac_for("ff02::1")) / IPv6(src=peer_lla, dst="ff02::1")
                         / ICMPv6EchoRequest(), True),
        "ns to solicited-node": (_nd(peer.mac, peer.ipv6, _solicited(vm.ipv6), in6_getnsmac(
            socket.inet_pton(socket.AF_INET6, _solicited(vm.ipv6)))) / ICMPv6ND_NS(tgt=vm.ipv6), True),
        "to another address": (to_vm / IPv6(src=peer.ipv6, dst="2001:db8::99") / UDP(dport=5000), False),
        "to another multicast group": (Ether(src=peer.mac, dst=_mac_for("ff02::fb")) / IPv6(src=peer_lla, dst="ff02::fb")
                                       / UDP(sport=5353, dport=5353), False),
        "router advertisement from the peer": (_nd(peer.mac, peer_lla, "ff02::1") / router_advert, not ra_source),
    }
    if ra_source:
        frames["router advertisement from the router"] = (_nd(peer.mac, ra_source, "ff02::1") / router_advert, True)
    return {name: (_probe(name, "peer", "vm", frame), passes) for name, (frame, passes) in frames.items()}


def _verdicts(lab: Lab, probes) -> dict:
    arrived = run_probes(lab, [probe for probe, _passes in probes.values()], wait=0.3)
    return {name: arrived[name] for name in probes}


def _bind(host: Host, guest: Guest, name: str = DUALSTACK, **params) -> None:
    host.bind(Binding(guest.port, guest.mac, FilterRef(name, {"IP": (guest.ip,), **params})))


def test_dualstack_verdicts(lab, host):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    probes = {**outgoing_probes(vm, peer), **incoming_probes(vm, peer)}
    assert all(_verdicts(lab, probes).values())  # unfiltered, every probe arrives
    _bind(host, vm, IPV6=(vm.ipv6, SECOND))
    assert _verdicts(lab, probes) == {name: passes for name, (_probe, passes) in probes.items()}


def test_ra_server_verdicts(lab, host):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    _bind(host, vm, RA_SERVER, IPV6=(vm.ipv6, SECOND), RA_SERVER=(ROUTER,))
    probes = {**outgoing_probes(vm, peer), **incoming_probes(vm, peer, ra_source=ROUTER)}
    assert _verdicts(lab, probes) == {name: passes for name, (_probe, passes) in probes.items()}


# ---- two guarded VMs, real kernels on both ends ----

def _ping6(guest: Guest, destination: str, source: str = "") -> bool:
    """An ICMPv6 echo from the guest's kernel, and its reply (no ping binary needed)."""
    with inside(guest.name):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        scope = socket.if_nametoindex("eth0") if destination.startswith("fe80") else 0
    with sock:
        if source:
            sock.bind((source, 0))
        ident = random.getrandbits(16)
        sock.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, 1) + b"vmguard", (destination, 0, 0, scope))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(1500)
            except socket.timeout:
                return False
            if data[0] == 129 and struct.unpack_from("!H", data, 4)[0] == ident:
                return True
    return False


def _tcp(client: Guest, server: Guest, address: str) -> bool:
    """A TCP connection from client to server's address, with data both ways."""
    with inside(server.name):
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with inside(client.name):
        conn = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with listener, conn:
        listener.bind((address, 0))
        listener.listen(1)
        conn.settimeout(3)
        listener.settimeout(3)
        try:
            conn.connect((address, listener.getsockname()[1]))
            accepted, _peer = listener.accept()
            with accepted:
                conn.sendall(b"ping")
                accepted.sendall(accepted.recv(4) + b"-pong")
                return conn.recv(16) == b"ping-pong"
        except OSError:
            return False


def _host_neighbour(lab: Lab, address: str) -> str:
    """The host's (br0's) neighbour entry for an address, after a datagram made it resolve one."""
    with inside(lab.host):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with sock:
        sock.sendto(b"x", (address, 9))
    time.sleep(0.3)
    return run(["ip", "netns", "exec", lab.host, "ip", "-6", "neigh", "show", address, "dev", "br0"]).stdout


def _attack(lab: Lab, attacker: Guest, victim: Guest) -> None:
    """From the attacker: an unsolicited NA claiming the victim's address, and a rogue RA."""
    lla = eui64_link_local(attacker.mac)
    frames = [
        _nd(attacker.mac, attacker.ipv6, "ff02::1") / ICMPv6ND_NA(tgt=victim.ipv6, S=0, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=attacker.mac),
        _nd(attacker.mac, lla, "ff02::1") / ICMPv6ND_RA(routerlifetime=1800)
        / ICMPv6NDOptSrcLLAddr(lladdr=attacker.mac) / ICMPv6NDOptPrefixInfo(prefix="2001:db8:bad::", prefixlen=64),
    ]
    with inside(attacker.name):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sock.bind(("eth0", 0))
    with sock:
        for frame in frames:
            sock.send(bytes(frame))
    time.sleep(0.5)


def _poisoned(lab: Lab, attacker: Guest, victim: Guest) -> list:
    """What the attack changed: the host's entry for the victim, the victim's routes."""
    found = []
    if attacker.mac in _host_neighbour(lab, victim.ipv6):
        found.append("host neighbour entry")
    routes = run(["ip", "netns", "exec", victim.name, "ip", "-6", "route", "show"]).stdout
    if "default" in routes or "2001:db8:bad" in routes:
        found.append("victim's routes")
    return found


def _reset(lab: Lab, victim: Guest) -> None:
    lab.sh(lab.host, "ip -6 neigh flush dev br0")
    lab.sh(victim.name, "ip -6 route flush proto ra", "ip -6 route flush 2001:db8:bad::/64",
           "ip -6 addr flush dev eth0 scope global dynamic")


def test_two_dualstack_vms_talk_while_attacks_fail(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    with Lab() as lab:
        vm1 = lab.add_vm("vm1", "52:54:00:00:00:11", "192.0.2.11", "2001:db8::11")
        vm2 = lab.add_vm("vm2", "52:54:00:00:00:12", "192.0.2.12", "2001:db8::12")
        lab.sh(vm1.name, "ip addr add 2001:db8::111/64 dev eth0 nodad")
        # unguarded, the attacks work (so the test can see them)
        _host_neighbour(lab, vm2.ipv6)
        _attack(lab, vm1, vm2)
        assert _poisoned(lab, vm1, vm2) == ["host neighbour entry", "victim's routes"]
        _reset(lab, vm2)

        host = Host(str(tmp_path / "store"), netns=lab.host)
        _bind(host, vm1, IPV6=(vm1.ipv6, "2001:db8::111"))
        _bind(host, vm2, IPV6=(vm2.ipv6,))
        vm1_lla, vm2_lla = eui64_link_local(vm1.mac), eui64_link_local(vm2.mac)
        assert _ping6(vm1, vm2.ipv6)
        assert _ping6(vm1, vm2.ipv6, source="2001:db8::111")
        assert _ping6(vm2, vm1.ipv6)
        assert _ping6(vm1, vm2_lla) and _ping6(vm2, vm1_lla)
        assert _tcp(vm1, vm2, vm2.ipv6) and _tcp(vm2, vm1, "2001:db8::111")
        # guarded, they do nothing, and the neighbours still talk
        _host_neighbour(lab, vm2.ipv6)
        _attack(lab, vm1, vm2)
        assert _poisoned(lab, vm1, vm2) == []
        assert vm2.mac in _host_neighbour(lab, vm2.ipv6)
        assert _ping6(vm1, vm2.ipv6) and _tcp(vm1, vm2, vm2.ipv6)
        # an address the VM gives itself but was not given gets nowhere
        lab.sh(vm1.name, "ip addr add 2001:db8::99/64 dev eth0 nodad")
        assert not _ping6(vm1, vm2.ipv6, source="2001:db8::99")


def test_ipv6_omitted_is_learned_then_guarded(lab, host):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    assert host.bind(Binding(vm.port, vm.mac, FilterRef(DUALSTACK, {"IP": (vm.ip,)}))).learning == [vm.port]
    assert host.learned(vm.port, [], [vm.ipv6]).learning == []
    chosen = ("udp from first address", "na for own address", "na for own link-local", "dad ns for own address",
              "udp from second address", "na for another's address", "router advertisement", "dhcpv6 advertise")
    probes = {name: probe for name, probe in outgoing_probes(vm, peer).items() if name in chosen}
    # SECOND was not learned: only the learned address and the link-local one are the VM's
    expected = {name: passes and name != "udp from second address" for name, (_probe, passes) in probes.items()}
    assert _verdicts(lab, probes) == expected
