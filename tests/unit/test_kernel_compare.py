"""Comparing what the kernel holds with what the store says (pure logic)."""

from engine.integrity import BASE_CHAINS, BASE_MAPS, BASE_TABLES, Kernel, compare

RECORD = {"chains": [["bridge", "p/vnet0/o", "d1", 2], ["bridge", "p/vnet0/i", "d2", 1]],
          "elements": [["bridge", "from_vm", '"vnet0"'], ["bridge", "to_vm", '"vnet0"']]}


def _kernel():
    kernel = Kernel(set(BASE_TABLES), set(BASE_MAPS), set(BASE_CHAINS), dict(BASE_CHAINS))
    kernel.rules.update({("bridge", "p/vnet0/o"): 2, ("bridge", "p/vnet0/i"): 1})
    kernel.elements.update({("bridge", "from_vm", '"vnet0"'): "p/vnet0/o", ("bridge", "to_vm", '"vnet0"'): "p/vnet0/i"})
    return kernel


def test_the_base_layout_is_read_from_the_base_script():
    assert BASE_TABLES == {"bridge", "inet"} and ("inet", "fi") in BASE_MAPS
    assert BASE_CHAINS[("bridge", "prerouting")] == 1 and BASE_CHAINS[("inet", "forward")] == 2


def test_all_there_means_no_findings():
    found = compare({"vnet0": RECORD}, _kernel())
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
    kernel.rules[("bridge", "p/vnet0/o/extra")] = 1
    cases.append((kernel, "vnet0: chain bridge p/vnet0/o/extra was not installed by us"))
    for kernel, problem in cases:
        found = compare({"vnet0": RECORD}, kernel)
        assert found.problems == [problem] and found.damaged == {"vnet0"} and not found.base


def test_base_damage_and_stale_ports():
    kernel = _kernel()
    kernel.hooked.discard(("bridge", "prerouting"))
    kernel.rules[("bridge", "p/gone/o")] = 3
    found = compare({"vnet0": RECORD}, kernel)
    assert found.base and found.stale == {"gone"}
    assert found.problems == ["base chain bridge vmguard prerouting is missing or altered",
                              "gone: chains of a port that has no binding"]
    found = compare({"vnet0": None}, Kernel())
    assert found.problems[:2] == ["table bridge vmguard is missing", "table inet vmguard is missing"]
    assert "vnet0: the store has no record of what it installed" in found.problems


def test_no_binding_needs_no_table():
    assert not compare({}, Kernel())
