"""A set's elements as nft lists them, picked by port, and a port's
elements as the kernel holds them written as nft lists them."""

from engine.nft_run import _elements_by_key, _shown
from engine.set_members import decode, encode

BLOCK = """\tset s/0123456789abcdef/v6 {
\t\ttypeof iifname . ip saddr
\t\telements = { "vnet1" . 10.0.0.1, "vnet10" . 10.0.0.10,
\t\t\t     "vnet1" . 10.0.0.100, "vnet2" . 10.0.0.2 }
\t}"""
MAP = """\tmap id_from_lo {
\t\ttype ifname : verdict
\t\telements = { "vnet1" : jump id/from/lo/1, "vnet2" : jump id/from/lo/2 }
\t}"""
MARKS = """\tset s/0123456789abcdef/to {
\t\ttype mark
\t\telements = { 0x00004000, 0x00008000 }
\t}"""
EMPTY = """\tmap id_to_hi {
\t\ttype ifname : verdict
\t}"""


def test_a_listing_is_split_by_the_first_part_of_each_key():
    head, found = _elements_by_key(BLOCK)
    assert head == "\tset s/0123456789abcdef/v6 {\n\t\ttypeof iifname . ip saddr"
    assert found == {'"vnet1"': ['"vnet1" . 10.0.0.1', '"vnet1" . 10.0.0.100'], '"vnet10"': ['"vnet10" . 10.0.0.10'],
                     '"vnet2"': ['"vnet2" . 10.0.0.2']}
    assert _elements_by_key(MAP)[1]['"vnet2"'] == ['"vnet2" : jump id/from/lo/2']
    assert sorted(_elements_by_key(MARKS)[1]) == ["0x00004000", "0x00008000"]
    for block in (BLOCK, MAP, MARKS, EMPTY):  # shown with none of its elements, it is closed once
        assert _shown(_elements_by_key(block)[0].strip("\t"), []) == block.split("\n", 1)[0] + "\n" + \
            block.split("\n")[1] + "\n\t}"


def test_elements_read_from_the_kernel_are_written_as_nft_lists_them():
    cases = {"typeof iifname . ip saddr; flags interval;": '"vnet1" . 10.1.0.0/16',
             "typeof iifname . ip6 saddr; flags interval;": '"vnet1" . 2001:db8::/32',
             "typeof iifname . th dport; flags interval;": '"vnet1" . 1024-2047',
             "typeof meta mark . ether saddr;": "0x00004000 . 52:54:00:00:00:09"}
    for spec, element in cases.items():
        assert decode(spec, *encode(spec, element)) == element, spec
    ether_type = "typeof iifname . ether type;"
    assert decode(ether_type, *encode(ether_type, '"vnet1" . 0x0800')) == '"vnet1" . ip'  # named, as nft names it
    assert decode(ether_type, *encode(ether_type, '"vnet1" . 0x8035')) == '"vnet1" . 0x8035'
