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
    assert learn_any(_dhcp("offer"), VM) == "192.0.2.50"


def test_any_mode_ignores_what_reveals_nothing():
    for source in ("0.0.0.0", "224.0.0.5", "240.0.0.1", "255.255.255.255"):
        assert learn_any(bytes(Ether(src=VM) / IP(src=source) / UDP()), VM) is None
    assert learn_any(bytes(Ether(src="52:54:00:00:00:02") / IP(src="192.0.2.9") / UDP()), VM) is None
    assert learn_any(_dhcp("offer", chaddr="52:54:00:00:00:02"), VM) is None
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
    assert again.addresses("vnet0", 500.0) == ["192.0.2.50", "192.0.2.51"]
    assert again.expire(1500.0) == ["vnet0"] and Leases(path).addresses("vnet0", 1500.0) == ["192.0.2.51"]


def test_ipv6_global_source_only():
    from scapy.all import IPv6  # pylint: disable=import-outside-toplevel,no-name-in-module
    from learner.packets import learn_any6  # pylint: disable=import-outside-toplevel
    assert learn_any6(bytes(Ether(src=VM) / IPv6(src="2001:db8::9", dst="2001:db8::1") / UDP()), VM) == "2001:db8::9"
    for source in ("fe80::1", "::", "ff02::1"):
        assert learn_any6(bytes(Ether(src=VM) / IPv6(src=source, dst="ff02::2") / UDP()), VM) is None
    assert learn_any6(bytes(Ether(src="52:54:00:00:00:02") / IPv6(src="2001:db8::9") / UDP()), VM) is None
