"""The kernel's address lock of a learning port: one set of size 1 per
address family, kept across re-applies of the same learning rules, emptied
for a changed binding, removed with the port or its promotion."""

from engine.model import Binding, FilterRef
from engine.nft_compile import PortLive, compile_learning, lock_sets, transaction

BINDING = Binding("vnet0", "52:54:00:00:00:01", FilterRef("clean-traffic"))


def _live(program):
    return PortLive({(f, n) for f, n, _r in program.chains}, {(f, m, k) for f, m, k, _t in program.elements},
                    {}, {(f, n) for f, n, _s in program.sets})


def test_one_set_per_learned_family():
    assert set(lock_sets(BINDING, {}, False)) == {"IP"}
    sets = compile_learning(BINDING, {}, 1, ipv6=True).sets
    specs = [spec for _f, _n, spec in sets]
    assert specs == ["type ipv4_addr; size 1; flags dynamic;", "type ipv6_addr; size 1; flags dynamic;"]
    # mode dhcp: IPv6 comes from DHCPv6 snooping only (its reply's offsets are not fixed)
    assert len(compile_learning(BINDING, {"CTRL_IP_LEARNING": ("dhcp",)}, 1, ipv6=True).sets) == 1


def test_the_same_learning_rules_keep_their_lock():
    program = compile_learning(BINDING, {}, 1)
    script = transaction([program], [], {"vnet0": _live(program)})
    assert "delete set" not in script and "flush set" not in script
    assert f"add set bridge vmguard {program.sets[0][1]} {{ type ipv4_addr; size 1; flags dynamic; }}" in script


def test_a_changed_binding_starts_with_an_empty_lock():
    old = compile_learning(BINDING, {}, 1)
    new = compile_learning(Binding("vnet0", "52:54:00:00:00:02", FilterRef("clean-traffic")), {}, 1)
    assert old.sets[0][1] != new.sets[0][1]
    script = transaction([new], [], {"vnet0": _live(old)})
    assert script.index("flush chain bridge vmguard p/vnet0/o") < script.index(f"delete set bridge vmguard {old.sets[0][1]}")


def test_removal_deletes_the_lock():
    program = compile_learning(BINDING, {}, 1)
    script = transaction([], ["vnet0"], {"vnet0": _live(program)})
    assert f"delete set bridge vmguard {program.sets[0][1]}" in script
