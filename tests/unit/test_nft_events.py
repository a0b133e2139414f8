"""Reading nftables' netlink notifications (messages built here byte by
byte, as the kernel lays them out), which the learner's repair watches."""

import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from engine.nft_events import Change, Commit, parse, summary  # noqa: E402  pylint: disable=wrong-import-position


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
