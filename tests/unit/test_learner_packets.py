"""What the learner reads from frames (frames built with scapy)."""

import os
import sys

from scapy.all import ARP, BOOTP, DHCP, IP, UDP, Ether  # pylint: disable=no-name-in-module

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from learner.leases import Leases  # noqa: E402  pylint: disable=wrong-import-position
from learner.packets import dhcp, learn_any  # noqa: E402  pylint: disable=wrong-import-position

VM = "52:54:00:00:00:01"


def _dhcp(kind, src="192.0.2.1", yiaddr="192.0.2.50", chaddr=VM, ciaddr="0.0.0.0", lease=600):
    options = [("message-type", kind), ("server_id", src), ("lease_time", lease), "end"]
    return bytes(Ether(src="52:54:00:00:00:fe", dst=VM) / IP(src=src, dst="255.255.255.255") / UDP(sport=67, dport=68)
                 / BOOTP(op=2, yiaddr=yiaddr, ciaddr=ciaddr, chaddr=bytes.fromhex(chaddr.replace(":", "")))
                 / DHCP(options=options))


def test_any_mode_sources():
    assert learn_any(bytes(Ether(src=VM) / IP(src="192.0.2.9", dst="192.0.2.1") / UDP()), VM) == "192.0.2.9"
    assert learn_any(bytes(Ether(src=VM) / ARP(hwsrc=VM, psrc="192.0.2.8", pdst="192.0.2.1")), VM) == "192.0.2.8"
    assert learn_any(_dhcp("ack"), VM, to_vm=True) == "192.0.2.50"


def test_only_acks_from_the_network_side_count():
    assert learn_any(_dhcp("offer"), VM, to_vm=True) is None  # the VM may still choose another offer
    assert learn_any(_dhcp("ack"), VM, to_vm=False) is None  # an ACK the VM sends itself


def test_any_mode_ignores_what_reveals_nothing():
    for source in ("0.0.0.0", "224.0.0.5", "240.0.0.1", "255.255.255.255"):
        assert learn_any(bytes(Ether(src=VM) / IP(src=source) / UDP()), VM) is None
    assert learn_any(bytes(Ether(src="52:54:00:00:00:02") / IP(src="192.0.2.9") / UDP()), VM) is None
    assert learn_any(_dhcp("ack", chaddr="52:54:00:00:00:02"), VM, to_vm=True) is None
    assert learn_any(b"\x00" * 10, VM) is None


def test_dhcp_fields():
    message = dhcp(_dhcp("ack", lease=120))
    assert (message.kind, message.client_mac, message.your_ip, message.server, message.lease) == \
        ("ack", VM, "192.0.2.50", "192.0.2.1", 120)


def test_leases_survive_a_restart_and_expire(tmp_path):
    path = str(tmp_path / "leases.json")
    leases = Leases(path)
    leases.add("vnet0", "192.0.2.50", 1000.0, "192.0.2.1")
    leases.add("vnet0", "192.0.2.51", 2000.0, "192.0.2.1")
    again = Leases(path)
    assert again.addresses("vnet0", 500.0) == {"IP": ["192.0.2.50", "192.0.2.51"]}
    assert again.expire(1500.0) == ["vnet0"] and Leases(path).addresses("vnet0", 1500.0) == {"IP": ["192.0.2.51"]}


def test_leases_keep_ipv4_and_ipv6_apart(tmp_path):
    leases = Leases(str(tmp_path / "leases.json"))
    leases.add("vnet0", "192.0.2.50", 1000.0, "192.0.2.1")
    leases.add("vnet0", "2001:db8::50", 1000.0, "fe80::1", var="IPV6")
    assert leases.addresses("vnet0", 0.0) == {"IP": ["192.0.2.50"], "IPV6": ["2001:db8::50"]}
    leases.remove("vnet0", "2001:db8::50")
    assert leases.addresses("vnet0", 0.0) == {"IP": ["192.0.2.50"]}


def _dhcp6(message, src_mac="52:54:00:00:00:fe", dst_mac=VM, src="fe80::fe", addresses=(("2001:db8::50", 600),)):
    from scapy.layers.dhcp6 import DHCP6OptIA_NA, DHCP6OptIAAddress  # pylint: disable=import-outside-toplevel
    from scapy.all import IPv6  # pylint: disable=import-outside-toplevel,no-name-in-module
    options = [DHCP6OptIAAddress(addr=a, preflft=v, validlft=v) for a, v in addresses]
    ia = DHCP6OptIA_NA(iaid=1, T1=0, T2=0, ianaopts=options)
    client = message.__name__ in ("DHCP6_Release", "DHCP6_Decline")
    ports = dict(sport=546, dport=547) if client else dict(sport=547, dport=546)
    return bytes(Ether(src=src_mac, dst=dst_mac) / IPv6(src=src, dst="fe80::1") / UDP(**ports) / message(trid=7) / ia)


def test_dhcp6_fields():
    from scapy.layers.dhcp6 import DHCP6_Release, DHCP6_Reply  # pylint: disable=import-outside-toplevel
    from learner.packets import dhcp6  # pylint: disable=import-outside-toplevel
    reply = dhcp6(_dhcp6(DHCP6_Reply, addresses=(("2001:db8::50", 600), ("2001:db8::51", 0))))
    assert (reply.kind, reply.dest_mac, reply.server) == ("reply", VM, "fe80::fe")
    assert reply.addresses == (("2001:db8::50", 600), ("2001:db8::51", 0))
    release = dhcp6(_dhcp6(DHCP6_Release, src_mac=VM, dst_mac="33:33:00:01:00:02", src="fe80::1"))
    assert (release.kind, release.source_mac, release.addresses) == ("release", VM, (("2001:db8::50", 600),))
    assert dhcp6(_dhcp(kind="ack")) is None and dhcp6(b"\x00" * 80) is None


def test_ipv6_global_source_only():
    from scapy.all import IPv6  # pylint: disable=import-outside-toplevel,no-name-in-module
    from learner.packets import learn_any6  # pylint: disable=import-outside-toplevel
    assert learn_any6(bytes(Ether(src=VM) / IPv6(src="2001:db8::9", dst="2001:db8::1") / UDP()), VM) == "2001:db8::9"
    for source in ("fe80::1", "::", "ff02::1"):
        assert learn_any6(bytes(Ether(src=VM) / IPv6(src=source, dst="ff02::2") / UDP()), VM) is None
    assert learn_any6(bytes(Ether(src="52:54:00:00:00:02") / IPv6(src="2001:db8::9") / UDP()), VM) is None


def test_direction_of_a_captured_frame():
    """A tap port sends (PACKET_OUTGOING) what goes to the VM; a macvtap's lower device receives it."""
    from engine.model import Binding, FilterRef  # pylint: disable=import-outside-toplevel
    from learner.service import PACKET_OUTGOING, to_vm  # pylint: disable=import-outside-toplevel
    tap = Binding("vnet0", VM, FilterRef("clean-traffic"))
    macvtap = Binding("macvtap0", VM, FilterRef("clean-traffic"), linkdev="eth0")
    assert to_vm(PACKET_OUTGOING, tap) and not to_vm(0, tap)
    assert not to_vm(PACKET_OUTGOING, macvtap) and to_vm(0, macvtap)
