"""A set's elements as nft lists them, picked by port: looking up a few
ports' keys finds what splitting the whole listing finds."""

from engine.nft_run import FEW_KEYS, _elements_by_key

BLOCK = """\tset s/0123456789abcdef/v6 {
\t\ttypeof iifname . ip saddr
\t\telements = { "vnet1" . 10.0.0.1, "vnet10" . 10.0.0.10,
\t\t\t     "vnet1" . 10.0.0.100, "vnet2" . 10.0.0.2 }
\t}"""
MAP = """\tmap id_from_lo {
\t\ttype ifname : verdict
\t\telements = { "vnet1" : jump id/from/lo/1, "vnet2" : jump id/from/lo/2 }
\t}"""
PORTS = """\tset s/0123456789abcdef/ports {
\t\ttypeof iifname
\t\telements = { "vnet1", "vnet10",
\t\t\t     "vnet2" }
\t}"""
MARKS = """\tset s/0123456789abcdef/to {
\t\ttype mark
\t\telements = { 0x00004000, 0x00008000 }
\t}"""


def test_a_few_keys_are_found_as_the_whole_listing_splits_them():
    many = [f'"vnet{n}"' for n in range(FEW_KEYS + 1)] + ["0x00004000"]
    for block in (BLOCK, MAP, PORTS, MARKS):
        head, everything = _elements_by_key(block, many)
        for keys in (['"vnet1"'], ['"vnet2"', '"vnet10"'], ["0x00004000"], ['"vnet7"']):
            assert _elements_by_key(block, keys) == (head, {k: everything[k] for k in keys if k in everything})
    assert _elements_by_key(BLOCK, ['"vnet1"'])[1] == {'"vnet1"': ['"vnet1" . 10.0.0.1', '"vnet1" . 10.0.0.100']}
    assert _elements_by_key(PORTS, ['"vnet2"'])[1] == {'"vnet2"': ['"vnet2"']}
