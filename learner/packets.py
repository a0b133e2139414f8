"""What a captured frame says about a VM's address (pure parsing, no I/O)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

ETH_ARP, ETH_IPV4, ETH_IPV6 = 0x0806, 0x0800, 0x86DD
DHCP_MAGIC = b"\x63\x82\x53\x63"
DHCP_TYPES = {1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak", 7: "release", 8: "inform"}
DHCP6_TYPES = {1: "solicit", 2: "advertise", 3: "request", 4: "confirm", 5: "renew", 6: "rebind", 7: "reply",
               8: "release", 9: "decline"}
DHCP6_CLIENT, DHCP6_SERVER = 546, 547
OPT_IA_NA, OPT_IA_TA, OPT_IAADDR = 3, 4, 5


@dataclass(frozen=True)
class Dhcp:
    kind: str                 # discover, offer, ack, release, ...
    client_mac: str           # chaddr
    your_ip: str              # yiaddr
    client_ip: str            # ciaddr
    server: Optional[str]     # option 54, else the IP source
    lease: Optional[int]      # option 51, seconds


@dataclass(frozen=True)
class Dhcp6:
    kind: str                 # reply, release, decline, ...
    source_mac: str
    dest_mac: str
    server: str               # the IPv6 source of a server's message
    addresses: tuple          # ((address, valid lifetime in seconds), ...) from IA_NA/IA_TA


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def usable_ipv4(address: str) -> bool:
    """An address a VM may own: not 0.0.0.0, multicast, class E or broadcast."""
    ip = ipaddress.IPv4Address(address)
    return not (ip.is_unspecified or ip.is_multicast or ip.is_reserved or int(ip) == 0xFFFFFFFF)


def ethertype(frame: bytes) -> int:
    return struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0


def source_mac(frame: bytes) -> str:
    return mac_text(frame[6:12])


def arp_sender(frame: bytes) -> Optional[tuple]:
    """(sender MAC, sender IP) of an Ethernet/IPv4 ARP request or reply."""
    if ethertype(frame) != ETH_ARP or len(frame) < 42:
        return None
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    if (htype, ptype, hlen, plen) != (1, ETH_IPV4, 6, 4) or op not in (1, 2):
        return None
    return mac_text(frame[22:28]), str(ipaddress.IPv4Address(frame[28:32]))


def ipv4_header(frame: bytes) -> Optional[Tuple[int, int]]:
    """(header length, end of the datagram in the frame) of a well-formed IPv4
    header: version 4, IHL >= 5, a total length that covers the header and
    fits in the frame (Ethernet padding may follow it)."""
    if ethertype(frame) != ETH_IPV4 or len(frame) < 34 or frame[14] >> 4 != 4:
        return None
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, 16)[0]
    if ihl < 20 or total < ihl or 14 + total > len(frame):
        return None
    return ihl, 14 + total


def ipv4_source(frame: bytes) -> Optional[str]:
    return str(ipaddress.IPv4Address(frame[26:30])) if ipv4_header(frame) else None


def _dhcp_options(frame: bytes, start: int, end: int) -> Iterator[Tuple[int, bytes]]:
    """(code, value) of the DHCP options in frame[start:end]; stops at the end
    option or at an option whose length runs past ``end``."""
    while start < end and frame[start] != 255:
        if frame[start] == 0:
            start += 1
            continue
        if start + 2 > end or start + 2 + frame[start + 1] > end:
            return
        yield frame[start], frame[start + 2:start + 2 + frame[start + 1]]
        start += 2 + frame[start + 1]


def dhcp(frame: bytes) -> Optional[Dhcp]:
    """A DHCP message carried in an unfragmented IPv4/UDP datagram (ports 67/68)."""
    header = ipv4_header(frame)
    if header is None or frame[23] != 17 or struct.unpack_from("!H", frame, 20)[0] & 0x3FFF:
        return None
    ihl, end = header
    udp = 14 + ihl
    if udp + 8 > end:
        return None
    sport, dport, length = struct.unpack_from("!HHH", frame, udp)
    if {sport, dport} != {67, 68} or length < 8 or udp + length > end:
        return None
    bootp, end = udp + 8, udp + length
    if end < bootp + 240 or frame[bootp + 236:bootp + 240] != DHCP_MAGIC:
        return None
    kind, server, lease = None, None, None
    for code, value in _dhcp_options(frame, bootp + 240, end):
        if code == 53 and len(value) == 1:
            kind = DHCP_TYPES.get(value[0])
        elif code == 54 and len(value) == 4:
            server = str(ipaddress.IPv4Address(value))
        elif code == 51 and len(value) == 4:
            lease = struct.unpack("!I", value)[0]
    if kind is None:
        return None
    return Dhcp(kind, mac_text(frame[bootp + 28:bootp + 34]), str(ipaddress.IPv4Address(frame[bootp + 16:bootp + 20])),
                str(ipaddress.IPv4Address(frame[bootp + 12:bootp + 16])),
                server or str(ipaddress.IPv4Address(frame[26:30])), lease)


def learn_any(frame: bytes, vm_mac: str, to_vm: bool = False) -> Optional[str]:
    """Mode any: the address this frame may have locked, as the kernel's
    learning rules do: the VM's own IPv4 source (not 0.0.0.0, multicast,
    class E or broadcast) or ARP sender address, or the yiaddr of a DHCP ACK
    for its MAC sent to it (``to_vm``: from the network side, never by the VM)."""
    message = dhcp(frame)
    if message is not None and to_vm:
        if message.kind == "ack" and message.client_mac == vm_mac and usable_ipv4(message.your_ip):
            return message.your_ip
        return None
    if to_vm or source_mac(frame) != vm_mac:
        return None
    arp = arp_sender(frame)
    if arp is not None:
        return arp[1] if arp[0] == vm_mac and usable_ipv4(arp[1]) else None
    source = ipv4_source(frame)
    return source if source is not None and usable_ipv4(source) else None


def learn_any6(frame: bytes, vm_mac: str) -> Optional[str]:
    """The VM's first global IPv6 source address (not link-local, multicast,
    loopback or unspecified); libvirt never learns IPv6."""
    if ethertype(frame) != ETH_IPV6 or len(frame) < 54 or frame[14] >> 4 != 6 or source_mac(frame) != vm_mac:
        return None
    address = ipaddress.IPv6Address(frame[22:38])
    if address.is_link_local or address.is_multicast or address.is_loopback or address.is_unspecified:
        return None
    return str(address)


def _options(data: bytes, start: int, end: int):
    """(code, value) of DHCPv6 options in data[start:end]."""
    while start + 4 <= end:
        code, length = struct.unpack_from("!HH", data, start)
        if start + 4 + length > end:
            return
        yield code, data[start + 4:start + 4 + length]
        start += 4 + length


def _ia_addresses(options: bytes) -> list:
    found = []
    for code, value in _options(options, 0, len(options)):
        if code in (OPT_IA_NA, OPT_IA_TA):
            inner = 12 if code == OPT_IA_NA else 4  # IAID, T1, T2 / IAID
            for sub, address in _options(value, inner, len(value)):
                if sub == OPT_IAADDR and len(address) >= 24:
                    found.append((str(ipaddress.IPv6Address(address[:16])), struct.unpack_from("!I", address, 20)[0]))
    return found


def dhcp6(frame: bytes) -> Optional[Dhcp6]:
    """A DHCPv6 message carried in an IPv6/UDP frame (ports 546/547, no extension headers)."""
    if ethertype(frame) != ETH_IPV6 or len(frame) < 66 or frame[14] >> 4 != 6 or frame[20] != 17:
        return None
    payload = struct.unpack_from("!H", frame, 18)[0]
    sport, dport, length = struct.unpack_from("!HHH", frame, 54)
    if {sport, dport} != {DHCP6_CLIENT, DHCP6_SERVER} or length < 12 or length > payload or 54 + payload > len(frame):
        return None
    kind = DHCP6_TYPES.get(frame[62])
    if kind is None:
        return None
    return Dhcp6(kind, source_mac(frame), mac_text(frame[0:6]), str(ipaddress.IPv6Address(frame[22:38])),
                 tuple(_ia_addresses(frame[66:54 + length])))
