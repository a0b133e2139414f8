"""The kernel always holds what the store says: whatever damaged our tables,
the next Host call puts them back (one transaction, reported as changed),
and never touches tables that are not ours."""

import pytest

from engine.host import Host
from engine.model import Binding, FilterRef
from lab.netns import run
from lab.probes import run_probes, standard_probes

FOREIGN = """table inet theirs {
\tchain input {
\t\ttype filter hook input priority 10; policy accept;
\t\ttcp dport 2222 counter accept
\t}
}
"""

DAMAGE = {
    "flush ruleset": "flush ruleset",
    "delete bridge table": "delete table bridge vmguard",
    "delete inet table": "delete table inet vmguard",
    "delete port chain": "flush chain bridge vmguard p/vnet0/o/ipv4-ip\n"
                         "delete rule bridge vmguard p/vnet0/o handle {jump}\n"
                         "delete chain bridge vmguard p/vnet0/o/ipv4-ip",
    "flush port chain": "flush chain bridge vmguard p/vnet0/o",
    "delete map element": 'delete element bridge vmguard from_vm { "vnet0" }',
}


def _bind(lab, host, ip=None):
    vm = lab.guests["vm"]
    return host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"IP": (ip or vm.ip,)})))


def _spoofed_passes(lab):
    """Whether a frame with a spoofed source address gets through (a legitimate one always must)."""
    probes = [p for p in standard_probes(lab.guests["vm"], lab.guests["peer"]) if p.name in ("ipv4 udp", "spoofed ipv4")]
    verdicts = run_probes(lab, probes)
    assert verdicts["ipv4 udp"]
    return verdicts["spoofed ipv4"]


def _tables(lab):
    """The ruleset's chains and maps by table, in any order (what is put back is listed last)."""
    tables = ("\n" + lab.nft_list()).split("\ntable ")[1:]
    return sorted((table.split(" {")[0], sorted(table.strip().rsplit("\n", 1)[0].split("\n\n"))) for table in tables)


def _nft(lab, *args):
    return run(["ip", "netns", "exec", lab.host, "nft", *args]).stdout


def _jump_handle(lab):
    """The handle of the rule of p/vnet0/o that jumps to its ipv4-ip chain."""
    listing = _nft(lab, "-a", "list", "chain", "bridge", "vmguard", "p/vnet0/o")
    line = next(line for line in listing.splitlines() if "p/vnet0/o/ipv4-ip" in line)
    return line.rsplit("handle ", 1)[1].strip()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_the_next_call_repairs_what_was_damaged(lab, host, damage):
    lab.nft(FOREIGN)
    assert _bind(lab, host).changed
    assert not _spoofed_passes(lab)
    whole = _tables(lab)
    lab.nft(DAMAGE[damage].replace("{jump}", _jump_handle(lab)) if "{jump}" in DAMAGE[damage] else DAMAGE[damage])
    if damage == "flush ruleset":
        assert _spoofed_passes(lab)
        lab.nft(FOREIGN)
    predicted = host.converge(check=True)
    assert predicted.changed and predicted.repaired
    assert _tables(lab) != whole  # check mode repaired nothing
    result = _bind(lab, host)  # the very same binding: only the repair changes anything
    assert result.changed and result.repaired and not result.rebuilt, result
    assert _tables(lab) == whole  # ours as it was, theirs untouched
    assert not _spoofed_passes(lab)
    assert not _bind(lab, host).changed


def test_nothing_damaged_means_no_change_and_no_listing(lab, host, monkeypatch):
    _bind(lab, host)
    lab.nft(FOREIGN)  # someone else's commit: one listing, nothing of ours to repair
    assert not host.converge().changed
    monkeypatch.setattr(host.nft, "kernel", lambda: pytest.fail("listed the ruleset"))
    assert not host.converge().changed and not _bind(lab, host).changed
    assert "table inet theirs" in lab.nft_list()


def test_stale_chains_are_replaced_never_appended_to(lab, host, tmp_path):
    """A change killed after the kernel committed and before the store was
    written: the kernel holds chains the store does not know of."""
    _bind(lab, host, "10.1.0.1")
    stale_kernel = lab.nft_list()
    other = Host(str(tmp_path / "fresh"), netns=lab.host)
    _bind(lab, other, "10.2.0.1")  # a store that knows nothing of vnet0's chains
    listing = _nft(lab, "list", "chain", "bridge", "vmguard", "p/vnet0/o/ipv4-ip")
    assert "10.1.0.1" not in listing and "10.2.0.1" in listing
    assert stale_kernel != lab.nft_list()
