"""Real frames through the lab: each probe is built with scapy, tagged with a
unique payload, sent from one guest's eth0 and looked for on another's."""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

from scapy.all import ARP, DHCP, BOOTP, IP, IPv6, TCP, UDP, ICMP, Dot1Q, Ether, Raw  # pylint: disable=no-name-in-module

from .netns import Guest, Lab, inside

ETH_P_ALL = 0x0003


@dataclass
class Probe:
    name: str
    sender: str     # guest names in the lab
    observer: str
    frame: bytes    # already tagged
    tag: bytes = b""  # what identifies it on arrival; default: the last 12 bytes of frame


def _socket(ns: str) -> socket.socket:
    with inside(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind(("eth0", 0))
    sock.setblocking(False)
    return sock


def run_probes(lab: Lab, probes: Sequence[Probe], wait: float = 0.3) -> Dict[str, bool]:
    """Send every probe; True for those that arrived at their observer."""
    guests = {p.sender for p in probes} | {p.observer for p in probes}
    socks = {g: _socket(lab.guests[g].name) for g in guests}
    arrived: Dict[str, bool] = {p.name: False for p in probes}
    try:
        for probe in probes:
            socks[probe.sender].send(probe.frame)
        tags = {_tag_of(p): p for p in probes}
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            ready, _w, _x = select.select(list(socks.values()), [], [], max(0.0, deadline - time.monotonic()))
            for guest, sock in socks.items():
                if sock not in ready:
                    continue
                while True:
                    try:
                        data = sock.recv(65535)
                    except BlockingIOError:
                        break
                    for tag, probe in tags.items():
                        if tag in data and probe.observer == guest:
                            arrived[probe.name] = True
    finally:
        for sock in socks.values():
            sock.close()
    return arrived


def _tag_of(probe: Probe) -> bytes:
    return probe.tag or probe.frame[-12:]


def tagged(frame) -> bytes:
    """The frame's bytes with a unique 12-byte tag at the end (payload or padding)."""
    tag = b"VMG" + os.urandom(9)
    return bytes(frame / Raw(tag))


SPOOFED_IPV4 = "192.0.2.99"  # the source address of the "spoofed ipv4" probe


def standard_probes(vm: Guest, peer: Guest, vm_name: str = "vm", peer_name: str = "peer") -> List[Probe]:
    """What every filter is judged on: legitimate traffic and the usual spoofs."""
    eth = Ether(src=vm.mac, dst=peer.mac)
    spoof_mac = "52:54:00:66:66:66"
    back = Ether(src=peer.mac, dst=vm.mac)
    frames = {
        "ipv4 udp": eth / IP(src=vm.ip, dst=peer.ip) / UDP(sport=4000, dport=5000),
        "ipv4 tcp syn": eth / IP(src=vm.ip, dst=peer.ip) / TCP(sport=4001, dport=80, flags="S"),
        "ipv4 icmp echo": eth / IP(src=vm.ip, dst=peer.ip) / ICMP(),
        "spoofed mac": Ether(src=spoof_mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=5000),
        "spoofed ipv4": eth / IP(src=SPOOFED_IPV4, dst=peer.ip) / UDP(sport=4000, dport=5000),
        "arp request": Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=vm.mac, psrc=vm.ip, pdst=peer.ip),
        "arp spoofed ip": Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=vm.mac, psrc="192.0.2.99", pdst=peer.ip),
        "arp spoofed mac": Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=2, hwsrc=spoof_mac, psrc=vm.ip, pdst=peer.ip),
        "rarp": Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff", type=0x8035) / ARP(op=3, hwsrc=vm.mac, hwdst=vm.mac),
        "dhcp discover": Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex(vm.mac.replace(":", ""))) / DHCP(
            options=[("message-type", "discover"), "end"]),
        "rogue dhcp offer": Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff") / IP(src=vm.ip, dst="255.255.255.255")
        / UDP(sport=67, dport=68) / BOOTP(op=2, yiaddr="192.0.2.77") / DHCP(
            options=[("message-type", "offer"), "end"]),
        "vlan tagged": eth / Dot1Q(vlan=10) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=5000),
        "unknown ethertype": Ether(src=vm.mac, dst=peer.mac, type=0x88B5),
        "ipv6": eth / IPv6(src=vm.ipv6, dst=peer.ipv6) / UDP(dport=5000),
        "spoofed ipv6": eth / IPv6(src="2001:db8::99", dst=peer.ipv6) / UDP(dport=5000),
        "incoming ipv4": back / IP(src=peer.ip, dst=vm.ip) / UDP(dport=5000),
        "incoming ipv6": back / IPv6(src=peer.ipv6, dst=vm.ipv6) / UDP(dport=5000),
    }
    incoming = {"incoming ipv4", "incoming ipv6"}
    return [Probe(name, peer_name if name in incoming else vm_name, vm_name if name in incoming else peer_name,
                  tagged(frame)) for name, frame in frames.items()]


def incoming_tcp(vm: Guest, peer: Guest, ports: Sequence[int], vm_name: str = "vm",
                 peer_name: str = "peer") -> List[Probe]:
    """TCP SYNs from the peer to the VM, one per port: "incoming tcp <port>"."""
    return [Probe(f"incoming tcp {port}", peer_name, vm_name,
                  tagged(Ether(src=peer.mac, dst=vm.mac) / IP(src=peer.ip, dst=vm.ip)
                         / TCP(sport=40000, dport=port, flags="S"))) for port in ports]
