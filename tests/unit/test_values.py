import pytest

from engine.errors import NwfilterError
from engine.values import parse_typed

HOSTILE = ["1.2.3.4; flush ruleset", "$(reboot)", "'", '"', "1.2.3.4\n", "a" * 300, "", " 1.2.3.4"]


@pytest.mark.parametrize("kind,text,expected", [
    ("mac", "52:54:00:AB:cd:1", "52:54:00:ab:cd:01"),
    ("ipv4", "10.0.0.1", "10.0.0.1"),
    ("ipv4mask", "255.255.255.0", 24),
    ("ipv4mask", "24", 24),
    ("ipv6", "FE80::", "fe80::"),
    ("ipv6mask", "10", 10),
    ("port", "0x43", 67),
    ("ethertype", "ipv4", 0x800),
    ("ethertype", "0x835", 0x835),
    ("ipproto", "udp", 17),
    ("arpopcode", "Request_Reverse", 3),
    ("state", "NEW,ESTABLISHED", frozenset({"NEW", "ESTABLISHED"})),
    ("tcpflags", "SYN,ACK/SYN", (frozenset({"SYN", "ACK"}), frozenset({"SYN"}))),
    ("boolean", "true", True),
])
def test_valid(kind, text, expected):
    assert parse_typed(kind, text) == expected


@pytest.mark.parametrize("kind", ["mac", "ipv4", "ipv4mask", "ipv6", "port", "ethertype", "ipproto", "state"])
@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_values_raise_engine_error(kind, text):
    with pytest.raises(NwfilterError) as info:
        parse_typed(kind, text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind,text", [
    ("port", "65536"), ("dscp", "64"), ("vlanid", "4096"), ("ethertype", "0x5ff"), ("ipv4mask", "255.0.255.0"),
])
def test_out_of_range(kind, text):
    with pytest.raises(NwfilterError):
        parse_typed(kind, text)
