"""The kernel always holds what the store says: whatever damaged our tables,
the next Host call puts them back (one transaction, reported as changed),
and never touches tables that are not ours."""

import json
import os
import re

import pytest

from engine import nft_run
from engine import store as store_module
from engine.errors import NwfilterError
from engine.host import Host
from engine.integrity import compare
from engine.model import Binding, FilterRef
from engine.port_index import shard_of
from engine.xml_form import binding_to_xml, filter_from_xml
from old_stores import to_index_json
from lab.netns import run
from lab.probes import run_probes, standard_probes
from test_ansible import collections, play, tasks  # noqa: F401  pylint: disable=unused-import

FOREIGN = """table inet theirs {
\tchain input {
\t\ttype filter hook input priority 10; policy accept;
\t\ttcp dport 2222 counter accept
\t}
}
"""

# <o> is the chain of frames from the port, <ip> its IPv4 sub-chain, <shape> its shape (layout "shared")
DAMAGE = {
    "flush ruleset": "flush ruleset",
    "delete bridge table": "delete table bridge vmguard",
    "delete inet table": "delete table inet vmguard",
    "delete port chain": "flush chain bridge vmguard <ip>\n"
                         "delete rule bridge vmguard <o> handle {<o>:<ip>}\n"
                         "delete chain bridge vmguard <ip>",
    "flush port chain": "flush chain bridge vmguard <o>",
    "rule put into port chain": "insert rule bridge vmguard <o> accept",
    # the chains keep their rule counts and the rules their handles: only their content tells
    "rule replaced in port chain": "replace rule bridge vmguard <ip> handle {<ip>:drop} accept",
    "rule replaced in base chain": "replace rule bridge vmguard prerouting handle {prerouting:@from_vm} accept",
    # every chain and rule still there, none of them hooked
    "bridge table made dormant": "add table bridge vmguard { flags dormant; }",
    "inet table made dormant": "add table inet vmguard { flags dormant; }",
    "base chain policy drop": "chain bridge vmguard postrouting { policy drop; }",
}
OWN_DAMAGE = {"delete map element": 'delete element bridge vmguard from_vm { "vnet0" }'}
SHARED_DAMAGE = {
    "port taken out of its shape": 'delete element bridge vmguard <shape>/ports { "vnet0" }',
    "element added to a shape's set": 'add element bridge vmguard <ipset> { "vnet0" . 192.0.2.99 }',
    "element deleted from a shape's set": 'delete element bridge vmguard <ipset> { "vnet0" . 192.0.2.10 }',
    "dispatch chain flushed": "flush chain bridge vmguard shared_o",
    "rule replaced in a dispatch chain": "replace rule bridge vmguard shared_o handle {shared_o:jump} accept",
    "id chain flushed": "flush chain bridge vmguard id/to/hi/0",  # one of the 512 that set a port's id in the mark
}
UNFILTERING = ("flush ruleset", "rule put into port chain", "rule replaced in port chain", "rule replaced in base chain",
               "bridge table made dormant", "port taken out of its shape", "element added to a shape's set",
               "dispatch chain flushed", "rule replaced in a dispatch chain")
# clean-traffic and a rule that changes nothing, with a variable's value where no set lookup can stand
# (a masked MAC address): the port gets chains of its own
OWN = ("<filter name='own-chains'><filterref filter='clean-traffic'/><rule action='continue' direction='inout'>"
       "<mac srcmacaddr='$MAC' srcmacmask='ff:ff:ff:ff:ff:ff'/></rule></filter>")


def _bind(lab, host, ip=None, root="clean-traffic"):
    vm = lab.guests["vm"]
    return host.bind(Binding(vm.port, vm.mac, FilterRef(root, {"IP": (ip or vm.ip,)})))


def _damage(lab, layout, script):
    """``script`` for the port's chains in this layout, and each ``{chain:text}``
    replaced by the handle of the rule of that bridge chain of ours that contains the text."""
    if layout == "shared":
        listing = lab.nft_list()
        shape = re.search(r"chain (s/[0-9a-f]+)/o ", listing).group(1)
        ipset = re.search(r"set (s/[0-9a-f]+/v\d+) \{\n\t\ttypeof iifname \. ip saddr\n", listing).group(1)
        names = {"<o>": f"{shape}/o", "<ip>": f"{shape}/o/ipv4-ip", "<shape>": shape, "<ipset>": ipset}
    else:
        names = {"<o>": "p/vnet0/o", "<ip>": "p/vnet0/o/ipv4-ip"}
    for name, value in names.items():
        script = script.replace(name, value)
    return _with_handles(lab, script)


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


def _with_handles(lab, script):
    """``script`` with each ``{chain:text}`` replaced by the handle of the
    rule of that bridge chain of ours that contains the text."""
    return re.sub(r"\{([^{}:]+):([^{}]+)\}", lambda found: lab.rule_handle(found.group(1), found.group(2)), script)


@pytest.mark.parametrize("dumps", ["per table", "per chain"])
@pytest.mark.parametrize("layout, damage", [("shared", name) for name in sorted({**DAMAGE, **SHARED_DAMAGE})]
                         + [("own", name) for name in sorted({**DAMAGE, **OWN_DAMAGE})])
def test_the_next_call_repairs_what_was_damaged(lab, host, layout, damage, dumps, monkeypatch):
    """Rules are counted from one dump of each table, or, in large tables,
    one dump per chain. A port of a shape shares its chains; one whose
    filter puts a variable's value where no lookup can stand has its own."""
    monkeypatch.setattr(nft_run, "PER_CHAIN_DUMPS_FROM", 0 if dumps == "per chain" else nft_run.PER_CHAIN_DUMPS_FROM)
    lab.nft(FOREIGN)
    root = "clean-traffic"
    if layout == "own":
        host.define_filter(filter_from_xml(OWN))
        root = "own-chains"
    assert _bind(lab, host, root=root).changed
    assert ("p/vnet0/o " in lab.nft_list()) == (layout == "own")
    assert not _spoofed_passes(lab)
    whole = _tables(lab)
    lab.nft(_damage(lab, layout, {**DAMAGE, **OWN_DAMAGE, **SHARED_DAMAGE}[damage]))
    if damage in UNFILTERING:
        assert _spoofed_passes(lab)
    if damage == "flush ruleset":
        lab.nft(FOREIGN)
    predicted = host.converge(check=True)
    assert predicted.changed and predicted.repaired
    assert _tables(lab) != whole  # check mode repaired nothing
    result = _bind(lab, host, root=root)  # the very same binding: only the repair changes anything
    assert result.changed and result.repaired and not result.rebuilt, result
    assert _tables(lab) == whole  # ours as it was, theirs untouched
    assert not _spoofed_passes(lab)
    assert not _bind(lab, host, root=root).changed


def test_nothing_damaged_means_no_change_and_no_listing(lab, host, monkeypatch):
    _bind(lab, host)
    lab.nft(FOREIGN)  # someone else's commit: one listing, nothing of ours to repair
    assert not host.converge().changed
    monkeypatch.setattr(host.nft, "kernel", lambda: pytest.fail("listed the ruleset"))
    assert not host.converge().changed and not _bind(lab, host).changed
    assert "table inet theirs" in lab.nft_list()


def test_counters_that_count_are_no_damage(lab, host):
    """A rule without matches or verdict is an nft counter: its figures change
    with every frame, what the rule says does not. (First in the chain: after
    clean-traffic's accepts it would count only what the namespaces' kernels
    happen to send, IPv6 neighbour discovery, and not always.)"""
    vm = lab.guests["vm"]
    host.define_filter(filter_from_xml("<filter name='counted'><filterref filter='clean-traffic'/>"
                                       "<rule action='continue' direction='inout' priority='-900'/></filter>"))
    host.bind(Binding(vm.port, vm.mac, FilterRef("counted", {"IP": (vm.ip,)})))
    assert not _spoofed_passes(lab)
    assert re.search(r"counter packets [1-9]", lab.nft_list()), lab.nft_list()
    lab.nft(FOREIGN)  # someone else's commit: the next call reads our tables
    assert not host.converge().changed


def test_a_commit_while_our_tables_are_read_is_checked_by_the_next_call(lab, host, monkeypatch):
    """Someone's commit lands while the kernel check reads our tables, too late
    for the listing: finding nothing wrong, the check must not vouch for it, so
    the next call reads our tables again and repairs what it did."""
    _bind(lab, host)
    lab.nft(FOREIGN)  # someone else's commit: the next call reads our tables
    read = host.nft.kernel

    def read_then_tamper():
        kernel = read()
        lab.nft(_damage(lab, "shared", "flush chain bridge vmguard <o>"))
        return kernel
    monkeypatch.setattr(host.nft, "kernel", read_then_tamper)
    assert not host.converge().changed  # what it read was whole
    monkeypatch.setattr(host.nft, "kernel", read)
    assert _spoofed_passes(lab)
    result = host.converge()
    assert result.changed and result.repaired
    assert not _spoofed_passes(lab) and not host.converge().changed


def test_stale_chains_are_replaced_never_appended_to(lab, host, tmp_path):
    """A change killed after the kernel committed and before the store was
    written: the kernel holds chains the store does not know of."""
    _bind(lab, host, "10.1.0.1")
    stale_kernel = lab.nft_list()
    other = Host(str(tmp_path / "fresh"), netns=lab.host)
    result = _bind(lab, other, "10.2.0.1")  # a store that knows nothing of vnet0's shape or elements
    shape = re.search(r"chain (s/[0-9a-f]+)/o ", stale_kernel).group(1)
    assert result.repaired == ["vnet0: chains of a port that has no binding",
                               f"chains and sets of {shape}, which no port uses"]
    listing = lab.nft_list()
    assert "10.1.0.1" not in listing and '"vnet0" . 10.2.0.1' in listing
    assert stale_kernel != listing


def test_the_module_repairs_and_info_tells(lab, collections, tmp_path):
    root = str(tmp_path / "store")
    assert [t["changed"] for t in play(lab, collections, tmp_path, tasks(root))] == [True, True]
    lab.nft("flush ruleset")  # what nftables.service does on start, restart and stop
    assert _spoofed_passes(lab)
    info = {"vmguard.nwfilter.nwfilter_info": {"root": root}}
    checked = [dict(task, check_mode=True, diff=True) for task in tasks(root)]
    results = play(lab, collections, tmp_path, [info] + checked + tasks(root) + tasks(root) + [info, {
        "vmguard.nwfilter.nwfilter_info": {"root": "relative/store"}}])
    broken, fixed = results[0]["bindings"]["vnet0"], results[7]["bindings"]["vnet0"]
    assert broken["in_force"] is False and "table bridge vmguard is missing" in broken["not_in_force_because"]
    assert any("vnet0 are not in force" in warning for warning in results[0]["warnings"])
    assert [t["changed"] for t in results[1:7]] == [True, True, True, False, False, False]
    assert "table inet vmguard is missing" in results[1]["diff"][1]["before"]
    assert "table bridge vmguard is missing" in results[3]["repaired"] and not results[4]["repaired"]
    assert fixed["in_force"] is True and not results[7].get("warnings")
    assert results[8]["failed"] and "must be an absolute path" in results[8]["msg"]
    assert not _spoofed_passes(lab)


WEB = "<filter name='web'><filterref filter='clean-traffic'/><rule action='accept' direction='in'><tcp dstportstart='22'/></rule></filter>"


def _web(portdev, number):
    return Binding(portdev, f"52:54:00:00:01:{number:02x}", FilterRef("web", {"IP": (f"192.0.2.{100 + number}",)}))


@pytest.mark.parametrize("lost", ["the index", "vnet0's shard"])
def test_lost_port_records_keep_the_ids_the_kernel_holds(lab, host, lost):
    """The totals still count vnet0 when only its shard is lost: the full
    check counts them again, so vnet0 gets back its id, and vnet2 a free one."""
    host.define_filter(filter_from_xml(WEB))
    host.set_bindings([_web("vnet0", 0), _web("vnet1", 1)])
    ids = host.nft.kernel().port_ids()
    assert sorted(ids.values()) == [1, 2]
    assert shard_of("vnet0") != shard_of("vnet1")
    for name in os.listdir(host.store.index_dir):
        if lost == "the index" or name == f"{shard_of('vnet0')}.json":
            os.unlink(os.path.join(host.store.index_dir, name))
    result = host.bind(_web("vnet2", 2))
    assert result.rebuilt == ["vnet2"] and "vnet0: the store has no record of what it installed" in result.repaired
    kernel = host.nft.kernel()
    assert kernel.port_ids() == dict(ids, vnet2=3)
    state = host._load()  # pylint: disable=protected-access
    assert {port: entry[0] for port, entry in state.index.all().items()} == kernel.port_ids()
    assert not compare({p: state.installed.get(p) for p in state.bindings}, kernel, host.store.kernel_contents("base")).problems


def test_restore_restores_what_it_can_read(lab, host):
    vm = lab.guests["vm"]
    _bind(lab, host)
    host.bind(Binding("other0", "52:54:00:00:00:33", FilterRef("no-ip-spoofing", {"IP": ("192.0.2.33",)})))  # a shape no other port has
    before = [line for line in lab.nft_list().splitlines() if "other0" in line]
    with open(os.path.join(host.store.root, "bindings", "other0.xml"), "wb") as handle:
        handle.write(b"\xff\xfe")
    lab.nft(_damage(lab, "shared", 'delete element bridge vmguard <ipset> { "vnet0" . 192.0.2.10 }'))
    result = Host(host.store.root, netns=lab.host).restore()  # as at boot
    assert result.rebuilt == [vm.port] and len(result.skipped) == 1
    assert "other0.xml: not UTF-8 text" in result.skipped[0]
    assert not _spoofed_passes(lab)
    assert [line for line in lab.nft_list().splitlines() if "other0" in line] == before  # left as it was
    # a change reads only the bindings it touches: others still change, and the report names the damage
    assert host.bind(Binding("other1", "52:54:00:00:00:34", FilterRef("clean-traffic"))).changed
    with pytest.raises(NwfilterError, match="other0.xml: not UTF-8 text"):
        host.report()
    with pytest.raises(NwfilterError, match="other0.xml: not UTF-8 text"):
        host.unbind("other0")


def test_a_repair_leaves_whole_id_chains_alone(lab, host):
    """A repair rewrites our base chains but not the 512 id chains it found
    whole (their rules keep their handles), and what was read back of them
    when they were installed still holds them to it."""
    _bind(lab, host)
    handle = lab.rule_handle("id/from/lo/1", "meta mark set")
    lab.nft(_damage(lab, "shared", 'delete element bridge vmguard <ipset> { "vnet0" . 192.0.2.10 }'))
    assert host.converge().repaired and not _spoofed_passes(lab)
    assert lab.rule_handle("id/from/lo/1", "meta mark set") == handle
    lab.nft(FOREIGN)  # someone else's commit: the next call compares our tables with the store
    assert not host.converge().changed
    lab.nft("flush chain bridge vmguard id/from/lo/1")
    assert host.converge().repaired == ["chain bridge vmguard id/from/lo/1 has other rules than we put there"]


def test_a_binding_file_put_in_place_by_hand_is_installed_by_the_next_call(lab, host):
    """The kernel's generation is unchanged, but the bindings' directory is
    not as our last commit left it: the next call compares every binding."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    _bind(lab, host)
    assert host.report()[vm.port]["in_force"]
    path = os.path.join(host.store.root, "bindings", f"{peer.port}.xml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(binding_to_xml(Binding(peer.port, peer.mac, FilterRef("no-mac-spoofing"))))
    assert host.converge().repaired == [f"{peer.port}: the store has no record of what it installed"]
    assert host.report()[peer.port]["in_force"] and not host.converge().changed


def test_restore_rewrites_an_index_it_cannot_read(lab, host):
    """A damaged shard of the index is named by every change that reads it;
    restore adopts the ids the kernel holds and writes the index anew."""
    vm = lab.guests["vm"]
    _bind(lab, host)
    port_id = host.store.index()[vm.port][0]
    shard = os.path.join(host.store.index_dir, f"{shard_of(vm.port)}.json")
    with open(shard, "w", encoding="utf-8") as handle:
        handle.write("{garbage")
    with pytest.raises(NwfilterError, match=f"^stored file {shard}: not valid JSON"):
        host.unbind(vm.port)
    result = Host(host.store.root, netns=lab.host).restore()  # as at boot
    assert result.rebuilt == [vm.port] and len(result.skipped) == 1 and "not valid JSON" in result.skipped[0]
    assert host.store.index()[vm.port][0] == port_id and len(host.store.index()) == 1
    assert not _spoofed_passes(lab) and host.report()[vm.port]["in_force"]


def test_no_bindings_no_tables(lab, host):
    host.define_filter(filter_from_xml(WEB))  # a filter without users changes nothing in the kernel
    assert "vmguard" not in lab.nft_list()
    _bind(lab, host)
    assert host.unbind(lab.guests["vm"].port).changed
    assert "vmguard" not in lab.nft_list()


def test_a_bind_the_store_cannot_follow_leaves_nothing(lab, host, monkeypatch):
    """The kernel took the change, the store could not: the old rules (here: none, so no tables) come back."""
    stage = store_module._stage  # pylint: disable=protected-access  # what writes and fsyncs every stored file

    def full(files):
        if any("/bindings/" in path for path, _text in files):  # the journal goes through, the binding does not
            raise OSError(28, "No space left on device")
        return stage(files)
    applied = []
    monkeypatch.setattr(store_module, "_stage", full)
    monkeypatch.setattr(host.nft, "apply", lambda script, apply=host.nft.apply: (applied.append(script), apply(script)))
    with pytest.raises(NwfilterError, match="cannot write the store .*: No space left on device; nothing changed"):
        _bind(lab, host)
    monkeypatch.undo()
    assert len(applied) == 2 and '"vnet0"' in applied[0]  # the kernel had taken it
    assert "vmguard" not in lab.nft_list() and host.bindings() == {} and host.store.journal() is None


def test_a_version_3_store_is_reinstalled_and_its_rules_read_back(lab, host, tmp_path):
    """The previous release recorded no content: its store is converted on
    the first call, which reinstalls every port and reads back what the
    kernel holds, so that a rule replaced in place is found from then on."""
    _bind(lab, host)
    root = tmp_path / "store"
    for path in (root / "ports").iterdir():  # as version 3 wrote its records
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "chains": [chain[:4] for chain in record["chains"]]}))
    (root / "base.json").unlink()
    to_index_json(root, 3)
    fresh = Host(str(root), netns=lab.host)  # the next module run, with this release
    assert fresh.converge().repaired == ["the store was converted from format 3 to 6: every port's rules are "
                                         "reinstalled (what the kernel holds of each chain is read back and "
                                         "recorded; ports alike share chains)"]
    assert (root / "version").read_text() == "6\n" and not _spoofed_passes(lab)
    record = json.loads((root / "ports" / "vnet0.json").read_text())
    assert record["shape"]["chains"] and all(len(chain) == 5 for chain in record["shape"]["chains"])
    lab.nft(_damage(lab, "shared", DAMAGE["rule replaced in port chain"]))
    assert _spoofed_passes(lab)
    shape = record["shape"]["name"]
    assert fresh.converge().repaired == [f"vnet0: chain bridge {shape}/o/ipv4-ip has other rules than we put there"]
    assert not _spoofed_passes(lab)


def test_a_change_reads_back_only_the_chains_it_wrote(lab, host, monkeypatch):
    """A port bound to a shape already in force reads back nothing of it; a
    redefine that changes one rule makes a new shape, whose chains (and the
    dispatch chains that lead to it) are read back once for all its ports:
    the check holds every chain to what was read back."""
    vm = lab.guests["vm"]
    host.define_filter(filter_from_xml(WEB))
    host.bind(Binding(vm.port, vm.mac, FilterRef("web", {"IP": (vm.ip,)})))
    read = host.nft.contents
    asked = []
    monkeypatch.setattr(host.nft, "contents", lambda chains, rules: asked.extend(chains) or read(chains, rules))
    host.bind(_web("vnet1", 1))
    assert asked == []
    assert host.define_filter(filter_from_xml(WEB.replace("'22'", "'23'"))).rebuilt == [vm.port, "vnet1"]
    shape = re.search(r"chain (s/[0-9a-f]+)/o ", lab.nft_list()).group(1)
    assert {name for _family, name in asked} == {name for name in re.findall(r"chain (\S+) \{", lab.nft_list())
                                                 if name.startswith((f"{shape}/", "shared_"))}
    lab.nft(FOREIGN)  # someone else's commit: the next call compares every chain's content
    assert not host.converge().changed
    lab.nft(_damage(lab, "shared", DAMAGE["rule replaced in port chain"]))
    assert host.converge().repaired == [f"{port}: chain bridge {shape}/o/ipv4-ip has other rules than we put there"
                                        for port in (vm.port, "vnet1")]
    assert not _spoofed_passes(lab)
