"""Virtual networks in the lab: an "outside" namespace reached from the lab's
host H through a veth whose H end is the forward device, default routes for
the guests, and probes made of real sockets (the outside reports the source
address it sees, so NAT is visible)."""

from __future__ import annotations

import select
import socket
import time
from typing import Optional, Tuple

from .netns import Lab, inside, run

OUTSIDE = ("198.51.100.2", "2001:db8:ff::2")
OUTSIDE_GATEWAY = ("198.51.100.1", "2001:db8:ff::1")
GUEST_NETS = ("192.0.2.0/24", "2001:db8::/64")


def add_outside(lab: Lab, dev: str = "ext0", name: str = "out") -> str:
    """A namespace ``<prefix><name>`` whose eth0 is the peer of ``dev`` in H; it
    routes the guests' networks back through H (so only the firewall can stop
    a connection from outside). Returns the namespace."""
    ns = f"{lab.prefix}{name}"
    if ns not in lab.namespaces:
        run(["ip", "netns", "add", ns])
        lab.namespaces.append(ns)
        lab.sh(ns, "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
               "ip link set lo up")
    plug_outside(lab, ns, dev)
    return ns


def plug_outside(lab: Lab, ns: str, dev: str = "ext0") -> None:
    """(Re-)create the veth between H (``dev``) and the outside (eth0)."""
    lab.sh(lab.host, f"ip link add {dev} type veth peer name eth0 netns {ns}",
           f"ip addr add {OUTSIDE_GATEWAY[0]}/24 dev {dev}", f"ip addr add {OUTSIDE_GATEWAY[1]}/64 dev {dev} nodad",
           f"ip link set {dev} up")
    lab.sh(ns, f"ip addr add {OUTSIDE[0]}/24 dev eth0", f"ip addr add {OUTSIDE[1]}/64 dev eth0 nodad",
           "ip link set eth0 up", f"ip route add {GUEST_NETS[0]} via {OUTSIDE_GATEWAY[0]}",
           f"ip -6 route add {GUEST_NETS[1]} via {OUTSIDE_GATEWAY[1]}")


def route_guests(lab: Lab) -> None:
    """Every guest's default routes go through H's addresses on br0; router
    advertisements (libvirt's dnsmasq sends them) are ignored, so the guests
    keep their one IPv6 address."""
    for guest in lab.guests.values():
        lab.sh(guest.name, "sysctl -qw net.ipv6.conf.eth0.accept_ra=0", "ip route add default via 192.0.2.1",
               "ip -6 route add default via 2001:db8::1")


def delete_bridge(lab: Lab) -> None:
    lab.sh(lab.host, "ip link del br0")


def create_bridge(lab: Lab) -> None:
    """br0 in H again, with its addresses and the guests' ports."""
    lab.sh(lab.host, "ip link add br0 type bridge stp_state 0 forward_delay 0", "ip link set br0 up",
           "ip addr add 192.0.2.1/24 dev br0", "ip addr add 2001:db8::1/64 dev br0 nodad",
           *(f"ip link set {g.port} master br0" for g in lab.guests.values()))


def _pair(src_ns: str, dst_ns: str, address: str, kind: int) -> Tuple[socket.socket, socket.socket, str]:
    """A socket in ``dst_ns`` and one in ``src_ns`` for ``address``'s family, and the wildcard address."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with inside(dst_ns):
        receiver = socket.socket(family, kind)
    with inside(src_ns):
        sender = socket.socket(family, kind)
    return receiver, sender, "::" if family == socket.AF_INET6 else "0.0.0.0"


def udp(src_ns: str, dst_ns: str, address: str, port: int = 7000, wait: float = 0.5) -> Optional[str]:
    """Send one datagram from ``src_ns`` to ``address`` (a socket in ``dst_ns``):
    the source address the receiver saw, or None when nothing arrived."""
    seen = udp_source(src_ns, dst_ns, address, port, wait)
    return seen[0] if seen else None


def udp_source(src_ns: str, dst_ns: str, address: str, port: int = 7000,
               wait: float = 0.5) -> Optional[Tuple[str, int]]:
    """As ``udp``, with the source port seen."""
    receiver, sender, anywhere = _pair(src_ns, dst_ns, address, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.bind((anywhere, port))
        tag = b"vmguard-net-probe"
        # sent again every 0.1 s: the first datagram may wait for neighbour discovery on a fresh link
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            sender.sendto(tag, (address, port))
            ready, _w, _x = select.select([receiver], [], [], 0.1)
            if ready:
                data, peer = receiver.recvfrom(100)
                if data == tag:
                    return peer[0], peer[1]
    return None


def tcp(src_ns: str, dst_ns: str, address: str, port: int = 7001, wait: float = 1.5) -> str:
    """Open a connection from ``src_ns`` to a listener in ``dst_ns``: the
    source address the listener saw, ``refused`` (a reject) or ``timeout`` (a
    drop; ``wait`` covers a SYN resent after neighbour discovery)."""
    listener, client, anywhere = _pair(src_ns, dst_ns, address, socket.SOCK_STREAM)
    with listener, client:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((anywhere, port))
        listener.listen(1)
        listener.settimeout(wait)
        client.settimeout(wait)
        try:
            client.connect((address, port))
        except ConnectionRefusedError:
            return "refused"
        except OSError:
            return "timeout"
        try:
            conn, peer = listener.accept()
        except socket.timeout:
            return "timeout"
        conn.close()
        return peer[0]


def udp_spoofable(lab: Lab, guest: str, dst_ns: str, source: str, address: str, port: int = 7009) -> Optional[str]:
    """A datagram with any IPv4 ``source``, sent as a raw frame from the
    guest's eth0 to H's bridge (its gateway): the source the receiver in
    ``dst_ns`` saw, or None when it was dropped."""
    from scapy.all import IP, UDP, Ether, Raw  # pylint: disable=import-outside-toplevel,no-name-in-module
    vm = lab.guests[guest]
    bridge_mac = run(["ip", "netns", "exec", lab.host, "cat", "/sys/class/net/br0/address"]).stdout.strip()
    with inside(dst_ns):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(vm.name):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with receiver, raw:
        receiver.bind(("0.0.0.0", port))
        receiver.settimeout(0.5)
        raw.bind(("eth0", 0))
        raw.send(bytes(Ether(src=vm.mac, dst=bridge_mac) / IP(src=source, dst=address) /
                       UDP(sport=4000, dport=port) / Raw(b"probe")))
        try:
            return receiver.recvfrom(100)[1][0]
        except socket.timeout:
            return None
