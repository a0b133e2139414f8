"""Hostile frames: every parser of learner/packets.py returns None or a
well-formed answer for truncated and malformed Ethernet/IPv4/IPv6/ARP/UDP/
DHCP/DHCPv6 frames, and never raises (hypothesis, thousands of cases)."""

import os
import sys

from hypothesis import given, settings, strategies as st
from scapy.all import ARP, BOOTP, DHCP, IP, UDP, Ether, IPv6  # pylint: disable=no-name-in-module
from scapy.layers.dhcp6 import DHCP6_Reply, DHCP6OptIA_NA, DHCP6OptIAAddress

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from learner.packets import arp_sender, dhcp, dhcp6, ipv4_source, learn_any, learn_any6  # noqa: E402  pylint: disable=wrong-import-position

VM = "52:54:00:00:00:01"
CHADDR = bytes.fromhex(VM.replace(":", ""))
SEEDS = [bytes(frame) for frame in (
    Ether(src="52:54:00:00:00:fe", dst=VM) / IP(src="192.0.2.1", dst="255.255.255.255") / UDP(sport=67, dport=68)
    / BOOTP(op=2, yiaddr="192.0.2.50", chaddr=CHADDR)
    / DHCP(options=[("message-type", "ack"), ("server_id", "192.0.2.1"), ("lease_time", 600), "end"]),
    Ether(src=VM, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=VM, psrc="192.0.2.8", pdst="192.0.2.1"),
    Ether(src=VM) / IP(src="192.0.2.9", dst="192.0.2.1") / UDP(dport=9),
    Ether(src=VM) / IPv6(src="2001:db8::9", dst="2001:db8::1") / UDP(dport=9),
    Ether(src="52:54:00:00:00:fe", dst=VM) / IPv6(src="fe80::1", dst="fe80::2") / UDP(sport=547, dport=546)
    / DHCP6_Reply(trid=1) / DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr="2001:db8::66", validlft=600)]),
)]


def _parse_all(frame):
    for to_vm in (False, True):
        address = learn_any(frame, VM, to_vm)
        assert address is None or address.count(".") == 3
    assert learn_any6(frame, VM) is None or ":" in learn_any6(frame, VM)
    for parser in (arp_sender, ipv4_source, dhcp, dhcp6):
        parser(frame)
    message = dhcp6(frame)
    if message is not None:
        assert all(isinstance(valid, int) for _address, valid in message.addresses)


@st.composite
def _mutated(draw):
    """A valid frame of one of the kinds above, cut short and/or with bytes overwritten."""
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _change in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(frame) - 1))
        frame[position] = draw(st.integers(0, 255))
    return bytes(frame[:draw(st.integers(0, len(frame)))]) if draw(st.booleans()) else bytes(frame)


@settings(max_examples=3000, deadline=None)
@given(_mutated())
def test_mutated_frames_never_raise(frame):
    _parse_all(frame)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([0x0800, 0x0806, 0x86DD]), st.binary(max_size=400))
def test_random_payloads_never_raise(kind, payload):
    _parse_all(bytes(Ether(src=VM, dst="ff:ff:ff:ff:ff:ff", type=kind)) + payload)


def test_the_frames_of_the_issue():
    """IHL 15 in a 60-byte UDP frame (killed the service) and in a 34-byte one (was learned)."""
    header = bytes([0x4F, 0, 0, 46, 0, 1, 0, 0, 64, 17, 0, 0, 10, 66, 0, 1, 10, 99, 0, 1])
    eth = b"\xff" * 6 + CHADDR + b"\x08\x00"
    assert dhcp(eth + header + b"\0" * 26) is None
    assert learn_any(eth + header, VM) is None
