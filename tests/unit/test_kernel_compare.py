"""Comparing what the kernel holds with what the store says (pure logic)."""

from engine.integrity import BASE_CHAINS, BASE_MAPS, BASE_TABLES, FIXED_CHAINS, base_contents, compare
from engine.nft_layout import MAP_KEYS, Kernel
from engine.nft_netlink import attribute
from engine.rule_content import chain_digest

RECORD = {"chains": [["bridge", "p/vnet0/o", "d1", 2, "c1"], ["bridge", "p/vnet0/i", "d2", 1, "c2"]],
          "elements": [["bridge", "from_vm", '"vnet0"'], ["bridge", "to_vm", '"vnet0"']]}
BASE = {f"{family} {name}": f"base {name}" for family, name in list(BASE_CHAINS) + list(FIXED_CHAINS)}


def _kernel():
    kernel = Kernel(set(BASE_TABLES), set(BASE_MAPS), set(BASE_CHAINS), dict(BASE_CHAINS))
    kernel.contents.update({chain: f"base {chain[1]}" for chain in list(BASE_CHAINS) + list(FIXED_CHAINS)})
    kernel.rules.update({chain: 1 for chain in FIXED_CHAINS})
    kernel.rules.update({("bridge", "p/vnet0/o"): 2, ("bridge", "p/vnet0/i"): 1})
    kernel.contents.update({("bridge", "p/vnet0/o"): "c1", ("bridge", "p/vnet0/i"): "c2"})
    kernel.elements.update({("bridge", "from_vm", '"vnet0"'): "p/vnet0/o", ("bridge", "to_vm", '"vnet0"'): "p/vnet0/i"})
    return kernel


def test_the_base_layout_is_read_from_the_base_script():
    assert BASE_TABLES == {"bridge", "inet"} and ("inet", "fi") in BASE_MAPS
    assert set(MAP_KEYS) == BASE_MAPS  # Nft.kernel reads the maps MAP_KEYS names
    assert BASE_CHAINS[("bridge", "prerouting")] == 4 and BASE_CHAINS[("inet", "forward")] == 4
    assert ("bridge", "shared_o") in FIXED_CHAINS and ("bridge", "id/to/hi/127") in FIXED_CHAINS


def test_all_there_means_no_findings():
    found = compare({"vnet0": RECORD}, _kernel(), BASE)
    assert not found and not found.damaged and not found.stale and not found.base


def test_each_damage_is_found():
    cases = []
    kernel = _kernel()
    kernel.rules[("bridge", "p/vnet0/o")] = 0
    cases.append((kernel, "vnet0: chain bridge p/vnet0/o has 0 rules, not 2"))
    kernel = _kernel()
    del kernel.elements[("bridge", "to_vm", '"vnet0"')]
    cases.append((kernel, "vnet0: element \"vnet0\" of map bridge to_vm is missing"))
    kernel = _kernel()
    kernel.elements[("bridge", "to_vm", '"vnet0"')] = "p/vnet0/o"
    cases.append((kernel, "vnet0: element \"vnet0\" of map bridge to_vm leads to p/vnet0/o"))
    kernel = _kernel()
    kernel.contents[("bridge", "p/vnet0/i")] = "c3"  # a rule replaced in place: same count, same handles
    cases.append((kernel, "vnet0: chain bridge p/vnet0/i has other rules than we put there"))
    kernel = _kernel()
    kernel.rules[("bridge", "p/vnet0/o/extra")] = 1
    cases.append((kernel, "vnet0: chain bridge p/vnet0/o/extra was not installed by us"))
    for kernel, problem in cases:
        found = compare({"vnet0": RECORD}, kernel, BASE)
        assert found.problems == [problem] and found.damaged == {"vnet0"} and not found.base


def test_base_damage_and_stale_ports():
    kernel = _kernel()
    kernel.hooked.discard(("bridge", "prerouting"))
    kernel.rules[("bridge", "p/gone/o")] = 3
    found = compare({"vnet0": RECORD}, kernel, BASE)
    assert found.base and found.stale == {"gone"}
    assert found.problems == ["base chain bridge vmguard prerouting is missing or altered",
                              "gone: chains of a port that has no binding"]
    found = compare({"vnet0": None}, Kernel(), None)
    assert found.problems[:2] == ["table bridge vmguard is missing", "table inet vmguard is missing"]
    assert "vnet0: the store has no record of what it installed" in found.problems


def test_no_binding_needs_no_table():
    assert not compare({}, Kernel(), None)


def test_a_chain_not_read_back_is_reinstalled():
    """A record written when our commit could not be vouched for (someone
    committed right after it) has no content: the next check reinstalls it."""
    record = {**RECORD, "chains": [RECORD["chains"][0][:4], RECORD["chains"][1]]}
    found = compare({"vnet0": record}, _kernel(), BASE)
    assert found.problems == ["vnet0: what chain bridge p/vnet0/o holds was not read back after it was installed"]
    assert found.damaged == {"vnet0"}


def test_base_chains_content():
    kernel = _kernel()
    kernel.contents[("bridge", "prerouting")] = "other"
    found = compare({"vnet0": RECORD}, kernel, BASE)
    assert found.base and found.problems == ["base chain bridge vmguard prerouting has other rules than we put there"]
    found = compare({"vnet0": RECORD}, _kernel(), None)
    assert found.base and len(found.problems) == len(BASE_CHAINS) + 1  # one line for the id and dispatch chains
    assert found.problems[0] == "what base chain bridge vmguard forward holds was not read back after it was installed"
    assert base_contents(_kernel().contents) == BASE
    kernel = _kernel()
    kernel.contents[("bridge", "id/to/lo/5")] = "other"
    assert compare({"vnet0": RECORD}, kernel, BASE).problems == [
        "chain bridge vmguard id/to/lo/5 has other rules than we put there"]


def _expression(name, data):
    return attribute(0x8001, attribute(1, name + b"\0") + attribute(0x8002, data))


def test_a_counter_s_figures_are_not_content():
    def rule(packets, verdict=b"\3"):
        return _expression(b"payload", b"\1\2") + _expression(b"counter", packets) + _expression(b"immediate", verdict)
    assert chain_digest([rule(b"\0" * 8)]) == chain_digest([rule(b"\7" * 8)])
    plain = rule(b"\0" * 8)
    assert chain_digest([plain]) != chain_digest([rule(b"\0" * 8, b"\4")])
    assert chain_digest([plain, plain]) != chain_digest([plain]) != chain_digest([])


def test_a_table_made_dormant_or_a_base_chain_that_drops():
    kernel = _kernel()
    kernel.dormant.add("bridge")
    kernel.dropping.add(("inet", "input"))
    found = compare({"vnet0": RECORD}, kernel, BASE)
    assert found.base and not found.damaged
    assert found.problems == ["table bridge vmguard is dormant: none of its chains sees a packet",
                              "base chain inet vmguard input drops what no rule of ours does (its policy is not accept)"]
