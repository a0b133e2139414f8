"""The repair's pure logic: reading nftables' netlink notifications (messages
built here byte by byte, as the kernel lays them out) and comparing what of
ours the kernel holds with the store's port records."""

import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from engine.nft_compile import PortLive, digest  # noqa: E402  pylint: disable=wrong-import-position
from engine.nft_events import Change, Commit, parse, summary  # noqa: E402  pylint: disable=wrong-import-position
from engine.nft_run import Layout  # noqa: E402  pylint: disable=wrong-import-position
from learner.repair import damage  # noqa: E402  pylint: disable=wrong-import-position


def _attribute(kind, value):
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _message(message, family, *attributes):
    body = struct.pack("=BBH", family, 0, 0) + b"".join(_attribute(k, v) for k, v in attributes)
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | message, 0, 0, 0) + body


def test_parse_changes_and_the_commit_that_ends_them():
    data = (_message(2, 7, (1, b"vmguard\0"))                               # DELTABLE bridge
            + _message(5, 1, (1, b"vmguard\0"), (3, b"p/vnet0/fi\0"))       # DELCHAIN inet
            + _message(8, 7, (1, b"vmguard\0"), (2, b"p/vnet0/o\0"))        # DELRULE
            + _message(14, 7, (1, b"vmguard\0"), (2, b"from_vm\0"))         # DELSETELEM
            + _message(6, 2, (1, b"filter\0"), (2, b"FORWARD\0"))           # NEWRULE ip
            + _message(16, 0)                                               # GETGEN: not a change
            + _message(15, 0, (1, struct.pack("!I", 9)), (2, struct.pack("!I", 4242)), (3, b"nft\0")))
    assert list(parse(data)) == [
        Change("table", True, "bridge", "vmguard", ""), Change("chain", True, "inet", "vmguard", "p/vnet0/fi"),
        Change("rule", True, "bridge", "vmguard", "p/vnet0/o"), Change("element", True, "bridge", "vmguard", "from_vm"),
        Change("rule", False, "ip", "filter", "FORWARD"), Commit(4242, "nft")]


def test_parse_stops_at_a_malformed_message():
    good = _message(2, 7, (1, b"vmguard\0"))
    assert list(parse(good + struct.pack("=IHHII", 3, 0, 0, 0, 0) + good)) == [
        Change("table", True, "bridge", "vmguard", "")]


def test_summary_names_what_went_and_leaves_out_what_went_with_it():
    flush = [Change("rule", True, "bridge", "vmguard", "p/vnet0/o"), Change("chain", True, "bridge", "vmguard", "x"),
             Change("set", True, "bridge", "vmguard", "from_vm"), Change("table", True, "bridge", "vmguard", "")]
    assert summary(flush) == "deleted table bridge vmguard"
    flushed = [Change("rule", True, "bridge", "vmguard", "p/vnet0/o/mac")] * 2
    assert summary(flushed) == "deleted 2 rules of chain bridge vmguard p/vnet0/o/mac"
    many = [Change("chain", False, "inet", "vmguard", f"c{i}") for i in range(8)]
    assert summary(many).endswith("added chain inet vmguard c5 and 2 more changes")


def _layout(port_rules=None, tables=("bridge", "inet"), drop=()):
    """Our layout as BASE makes it, with these port chains' rule counts, less the chains in ``drop``."""
    rules = {("bridge", "prerouting"): 1, ("bridge", "forward"): 1, ("bridge", "postrouting"): 1,
             ("inet", "forward"): 2, ("inet", "input"): 1, **(port_rules or {})}
    maps = {("bridge", "from_vm"), ("bridge", "to_vm"), ("bridge", "mark_to"), ("inet", "fi"), ("inet", "fo"), ("inet", "hi")}
    return Layout(set(tables), {m for m in maps if m[0] in tables},
                  {c: n for c, n in rules.items() if c[0] in tables and c not in drop})


RECORD = {"vnet0": {"id": 1, "chains": [["bridge", "p/vnet0/o", digest(["drop"])], ["bridge", "p/vnet0/i", digest(())]],
                    "elements": [["bridge", "from_vm", '"vnet0"'], ["bridge", "to_vm", '"vnet0"']]}}
PORT = {("bridge", "p/vnet0/o"): 1, ("bridge", "p/vnet0/i"): 0}
ELEMENTS = (("bridge", "from_vm", '"vnet0"'), ("bridge", "to_vm", '"vnet0"'))


def _live(chains=tuple(PORT), elements=ELEMENTS):
    return {"vnet0": PortLive(set(chains), set(elements))}


def test_nothing_to_repair():
    assert damage(_layout(PORT), _live(), RECORD, {"vnet0"}) == []
    assert damage(Layout(set(), set(), {}), {}, {}, set()) == []  # nothing stored: no tables needed


def test_each_damage_is_named():
    assert damage(Layout(set(), set(), {}), {}, RECORD, {"vnet0"}) == [
        "table bridge vmguard missing", "table inet vmguard missing"]
    assert damage(_layout(PORT, tables=("bridge",)), _live(), RECORD, {"vnet0"}) == ["table inet vmguard missing"]
    flushed = _layout({("bridge", "p/vnet0/o"): 0, ("bridge", "p/vnet0/i"): 0}, drop=[("bridge", "forward")])
    assert damage(flushed, _live(), RECORD, {"vnet0"}) == [
        "base chain bridge vmguard forward missing", "chain bridge vmguard p/vnet0/o flushed"]
    without = _live([("bridge", "p/vnet0/i")], [("bridge", "to_vm", '"vnet0"')])
    assert damage(_layout({("bridge", "p/vnet0/i"): 0}), without, RECORD, {"vnet0"}) == [
        "chain bridge vmguard p/vnet0/o missing", 'element "vnet0" of map bridge vmguard from_vm missing']
    stale = _live(list(PORT) + [("bridge", "p/vnet0/x")])
    assert damage(_layout(PORT), stale, RECORD, {"vnet0"}) == ["chain bridge vmguard p/vnet0/x not in the store"]
    assert damage(_layout(PORT), _live(), RECORD, {"vnet0", "vnet1"}) == [
        "the store's port records do not match its bindings"]
