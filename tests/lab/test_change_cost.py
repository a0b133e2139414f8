"""A change costs what it changes, in the real kernel: a removal goes over
netlink and takes exactly the port's objects (nothing of it when someone
committed since the kernel was checked), and stores of the previous formats
are converted on their first change with every port in force (version 2's
ports reinstalled in the wider mark layout of version 3)."""

import functools
import json
import os
import re
import subprocess
import sys

import pytest

from engine import store as store_module
from engine import nft_compile, nft_delete, nft_layout, parallel
from engine.host import Host
from engine.model import Binding, FilterRef
from engine.nft_delete import remove_ports
from engine.store import Store
from engine.xml_form import filter_from_xml
from old_stores import to_index_json
from lab.probes import incoming_tcp, run_probes, standard_probes


def _clean(vm, portdev=None):
    return Binding(portdev or vm.port, vm.mac, FilterRef("clean-traffic", {"IP": (vm.ip,)}))


def _spoofed_passes(lab):
    probes = [p for p in standard_probes(lab.guests["vm"], lab.guests["peer"]) if p.name in ("ipv4 udp", "spoofed ipv4")]
    verdicts = run_probes(lab, probes)
    assert verdicts["ipv4 udp"]
    return verdicts["spoofed ipv4"]


def test_a_removal_over_netlink_takes_exactly_the_port(lab, host, monkeypatch):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(_clean(vm))
    before = lab.nft_list()
    sent = []
    monkeypatch.setattr(nft_delete, "remove_ports", lambda *args: sent.append(args) or remove_ports(*args))
    learning = Binding(peer.port, peer.mac, FilterRef("clean-traffic"))  # learning: it has address-lock sets too
    host.bind(learning)
    assert "lock4" in lab.nft_list()
    result = host.unbind(peer.port)
    assert result.changed and len(sent) == 1 and lab.nft_list() == before
    assert not _spoofed_passes(lab) and not host.converge().changed


# what a run loads only when it compiles, lists our tables to compare them, removes ports or walks a tree
LOADED_WHEN_NEEDED = {"engine.resolver", "engine.nft_compile", "engine.integrity", "engine.nft_delete",
                      "engine.builtin_filters"}


def test_an_unchanged_rerun_loads_only_what_it_uses(lab, host):
    """Ansible's payload compiles every source a module imports on every run:
    the fleet's rerun that changes nothing imports none of that code."""
    vm = lab.guests["vm"]
    host.bind(_clean(vm))
    code = ("import json, sys\nfrom engine.host import Host\nfrom engine.model import Binding, FilterRef\n"
            f"binding = Binding({vm.port!r}, {vm.mac!r}, FilterRef('clean-traffic', {{'IP': ({vm.ip!r},)}}))\n"
            f"result = Host({host.store.root!r}, netns={lab.host!r}).set_bindings([binding], exclusive=True)\n"
            "print(json.dumps([result.changed, [name for name in sys.modules if name.startswith('engine.')]]))\n")
    engine = os.path.dirname(os.path.dirname(sys.modules[Host.__module__].__file__))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=engine))
    changed, loaded = json.loads(done.stdout)
    assert not changed and "engine.store" in loaded
    assert not LOADED_WHEN_NEEDED & set(loaded)


def test_a_removal_of_many_ports_goes_over_netlink_whole(lab, host, monkeypatch):
    """700 ports are 5,600 messages, 0.32 MB: more than a netlink socket's
    default send buffer, and, each acknowledged, their acknowledgements
    overflowed its receive buffer (the removal waited for ones that never came)."""
    vm = lab.guests["vm"]
    host.bind(_clean(vm))
    before = lab.nft_list()
    others = [Binding(f"many{i}", f"52:54:00:44:{i >> 8:02x}:{i & 0xff:02x}",
                      FilterRef("clean-traffic", {"IP": (f"10.44.{i >> 8}.{i & 0xff}",)})) for i in range(700)]
    host.set_bindings([_clean(vm)] + others)
    sent = []  # only removals that netlink took whole, without falling back to nft
    monkeypatch.setattr(nft_delete, "remove_ports", lambda *args: remove_ports(*args) or sent.append(args))
    assert host.set_bindings([_clean(vm)], exclusive=True).changed
    assert len(sent) == 1 and lab.nft_list() == before
    assert not _spoofed_passes(lab) and not host.converge().changed


def test_ports_compiled_by_forked_workers_are_installed_as_one_process_does(lab, host, monkeypatch):
    """A bulk bind shares the compiling among forked copies of the process
    (engine.parallel): the kernel then holds what a bind compiled in one
    process installs, chain for chain and element for element."""
    vm = lab.guests["vm"]
    # two addresses each: no port is made from another's template (test_ports_made_from_a_template_...)
    bindings = [_clean(vm)] + [Binding(f"many{i}", f"52:54:00:45:{i >> 8:02x}:{i & 0xff:02x}",
                                       FilterRef("clean-traffic", {"IP": (f"10.45.{i >> 8}.{i & 0xff}", "10.46.0.1")}))
                               for i in range(300)] + [Binding("learns", "52:54:00:45:ff:01", FilterRef("clean-traffic"))]
    forks, fork = [], os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or fork())
    monkeypatch.setattr(parallel, "fork_safe", lambda _threads: True)  # whatever threads earlier tests left
    found = {}
    for cores in (3, 1):
        monkeypatch.setattr(parallel, "_cores", lambda cores=cores: cores)
        host.set_bindings(bindings)
        records = host.store.records([b.portdev for b in bindings])
        found[cores] = (sorted(lab.nft_list().replace(",", "\n").splitlines()),
                        {b.portdev: records[b.portdev] for b in bindings})
        assert not _spoofed_passes(lab)
        host.set_bindings([], exclusive=True)
        assert len(forks) == 2  # three workers for the first bind (two forked), none for the second
    assert found[3] == found[1]


def test_ports_made_from_a_template_are_installed_as_compiled_ports_are(lab, host, monkeypatch):
    """A bulk bind compiles the first port of each tree and set of variables
    and makes the others from its template (nft_compile.Template): the
    kernel then holds what compiling every port installs, and the records
    say the same. With ports that cannot be made so: two addresses, learning."""
    vm = lab.guests["vm"]
    bindings = [_clean(vm)] + [Binding(f"many{i}", f"52:54:00:47:{i >> 8:02x}:{i & 0xff:02x}", FilterRef(
        "clean-traffic", {"IP": (f"10.47.{i >> 8}.{i & 0xff}",) + (("10.48.0.1",) if i % 50 == 0 else ())}))
        for i in range(300)] + [Binding("learns", "52:54:00:47:ff:01", FilterRef("clean-traffic"))]
    made, from_template = [], nft_compile.from_template
    monkeypatch.setattr(nft_compile, "from_template", lambda *args: made.append(from_template(*args)) or made[-1])
    found = []
    for templates in (True, False):
        if not templates:
            monkeypatch.setattr(nft_compile, "from_template", lambda *args: None)
        host.set_bindings(bindings)
        records = host.store.records([b.portdev for b in bindings])
        found.append((sorted(lab.nft_list().replace(",", "\n").splitlines()), {b.portdev: records[b.portdev] for b in bindings}))
        assert not _spoofed_passes(lab)
        host.set_bindings([], exclusive=True)
    assert found[0] == found[1]
    assert sum(program is not None for program in made) >= 290


@pytest.mark.parametrize("change", ["bind", "change", "unbind", "define an unused filter"])
def test_a_change_reads_what_it_touches_not_the_host(lab, host, monkeypatch, change):
    """On a host with 300 bindings, one change lists no directory of the
    store and reads a handful of its files (the port's binding, record and
    index shards, the totals, its shape's record), whatever the host holds."""
    others = [Binding(f"many{i}", f"52:54:00:44:{i >> 8:02x}:{i & 0xff:02x}",
                      FilterRef("clean-traffic", {"IP": (f"10.44.{i >> 8}.{i & 0xff}",)})) for i in range(300)]
    host.set_bindings(others)
    wanted = Binding("vnet9", "52:54:00:00:00:99", FilterRef("clean-traffic", {"IP": ("10.45.0.9",)}))
    if change in ("change", "unbind"):
        host.bind(wanted)
    fresh = Host(host.store.root, netns=lab.host)  # as the next module run
    listed, read = [], []
    monkeypatch.setattr(store_module.os, "listdir", lambda path, listdir=os.listdir: listed.append(path) or listdir(path))
    monkeypatch.setattr(store_module.os, "scandir", lambda path, scandir=os.scandir: listed.append(path) or scandir(path))
    monkeypatch.setattr(store_module, "_text_of", lambda path, *rest, text_of=store_module._text_of:
                        read.append(path) or text_of(path, *rest))
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *rest, **named: opened.append(path) or real_open(path, *rest, **named))
    if change == "bind":
        result = fresh.bind(wanted)
    elif change == "change":
        result = fresh.bind(Binding("vnet9", "52:54:00:00:00:99", FilterRef("clean-traffic", {"IP": ("10.45.0.8",)})))
    elif change == "unbind":
        result = fresh.unbind("vnet9")
    else:
        result = fresh.define_filter(filter_from_xml("<filter name='unused'><rule action='drop' direction='in'>"
                                                     "<tcp dstportstart='9'/></rule></filter>"))
    monkeypatch.undo()
    files = [path for path in read + opened if isinstance(path, str) and path.startswith(host.store.root)]
    assert result.changed and [path for path in listed if path != host.store.dirs["filters"]] == []
    assert {path for path in files if "/bindings/" in path} <= {os.path.join(host.store.dirs["bindings"], "vnet9.xml")}
    assert len(set(files)) <= 16, sorted(set(files))  # the lock, version, journal, marker, shards, records...


def test_the_learners_scan_reads_only_the_bindings_that_may_learn(lab, host, monkeypatch):
    """The learner asks which bindings learn on every store change: the
    index answers for the bindings that give every address their tree uses."""
    given = [Binding(f"many{i}", f"52:54:00:45:00:{i:02x}", FilterRef("clean-traffic", {"IP": (f"10.46.0.{i}",)}))
             for i in range(100)]
    learning = [Binding("vnet7", "52:54:00:00:00:77", FilterRef("clean-traffic", {})),
                Binding("vnet8", "52:54:00:00:00:88",  # IPv4 given, IPv6 learned
                        FilterRef("vmguard-clean-traffic-dualstack", {"IP": ("10.46.1.8",)}))]
    host.set_bindings(given + learning)
    fresh = Host(host.store.root, netns=lab.host)  # as the service after a store change
    read = []
    monkeypatch.setattr(store_module, "_text_of", lambda path, *rest, text_of=store_module._text_of:
                        read.append(path) or text_of(path, *rest))
    found = fresh.learnable()
    monkeypatch.undo()
    assert {port: sorted(learned) for port, (_binding, _mode, learned) in found.items()} == \
        {"vnet7": ["IP"], "vnet8": ["IPV6"]}
    assert sorted(os.path.basename(path) for path in read if "/bindings/" in path) == ["vnet7.xml", "vnet8.xml"]


def _stored(host, port):
    """What the store says the port has in our tables (its set elements included)."""
    return host._load().live({port})[port]  # pylint: disable=protected-access


def test_netlink_sequence_numbers_start_again_before_32_bits_overflow(lab, host):
    """A service running for months: its socket's sequence numbers reach 2**32."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(_clean(vm))
    host.bind(_clean(peer))
    host.nft.netlink._seq = 2 ** 32 - 3  # pylint: disable=protected-access
    generation = host.generation.current()
    remove_ports(host.nft.netlink, [_stored(host, peer.port)], generation)
    assert f'"{peer.port}"' not in lab.nft_list() and host.generation.current() == generation + 1


def test_a_removal_after_someone_elses_commit_is_refused_whole(lab, host):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(_clean(vm))
    host.bind(_clean(peer))
    generation = host.generation.current()
    stored = _stored(host, peer.port)
    lab.nft("add table inet theirs")  # anyone's commit moves the generation on
    with pytest.raises(OSError):
        remove_ports(host.nft.netlink, [stored], generation)
    assert f'"{peer.port}"' in lab.nft_list()
    remove_ports(host.nft.netlink, [stored], generation + 1)
    assert f'"{peer.port}"' not in lab.nft_list() and "table inet theirs" in lab.nft_list()


def test_a_removal_falls_back_to_nft_when_netlink_fails(lab, host, monkeypatch):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(_clean(vm))
    before = lab.nft_list()
    host.bind(_clean(peer))

    def refused(*_args):
        raise OSError(85, "stale generation")
    monkeypatch.setattr(nft_delete, "remove_ports", refused)
    assert host.unbind(peer.port).changed and lab.nft_list() == before


def _to_version_1(root):
    """Rewrite a store as the release before version 2 kept it: every port record in ports.json."""
    index = to_index_json(root, 1)
    records = {port: {"id": entry[0], **json.loads((root / "ports" / f"{port}.json").read_text())}
               for port, entry in index.items()}
    (root / "ports.json").write_text(json.dumps(records, sort_keys=True) + "\n")
    for name in os.listdir(root / "ports"):
        os.unlink(root / "ports" / name)
    os.rmdir(root / "ports")
    os.unlink(root / "index.json")
    (root / "version").write_text("1\n")
    return records


def test_a_version_1_store_is_converted_on_its_first_change(lab, host, tmp_path):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(_clean(vm))
    host.bind(Binding(peer.port, peer.mac, FilterRef("no-mac-spoofing")))
    root = tmp_path / "store"
    records = _to_version_1(root)
    fresh = Host(str(root), netns=lab.host)  # as the next module run
    assert fresh.report()[vm.port]["in_force"] and (root / "ports.json").exists()  # read as it is
    result = fresh.bind(Binding("vnet9", "52:54:00:00:00:99", FilterRef("no-mac-spoofing")))
    assert result.rebuilt == ["vnet9"] and result.repaired == [CONVERTED.format(version=1, reasons=f"{WIDER}; {READ_BACK}")]
    assert (root / "version").read_text() == "6\n" and not (root / "ports.json").exists()
    index = Store(str(root)).index().all()
    assert {port: entry[0] for port, entry in index.items() if port in records} == \
        {port: record["id"] for port, record in records.items()}
    assert index[vm.port][3] == "clean-traffic" and index[peer.port][3] == "no-mac-spoofing"
    assert not _spoofed_passes(lab)
    assert all(report["in_force"] for report in fresh.report().values())


CONVERTED = ("the store was converted from format {version} to 6: every port's rules are reinstalled "
             "({reasons}; ports alike share chains)")
WIDER = "port ids of 14 bits in the packet mark"
READ_BACK = "what the kernel holds of each chain is read back and recorded"
WEB = """<filter name='web'><filterref filter='clean-traffic'/>
<rule action='accept' direction='in'><tcp dstportstart='22'/></rule>
<rule action='drop' direction='in'><tcp/></rule></filter>"""


def _tcp_in(lab):
    return run_probes(lab, incoming_tcp(lab.guests["vm"], lab.guests["peer"], (22, 23)))


def test_a_version_2_store_is_reinstalled_in_the_wider_mark_layout(lab, host, tmp_path, monkeypatch):
    """The previous release tagged port ids in 12 bits of the mark: its ports
    (layer-3 rules included) are in force before and after the conversion,
    which reinstalls all of them, our base chains included, in one change."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    with monkeypatch.context() as previous:
        for name, value in {"MAX_PORT_ID": 0xFFF, "FROM_MASK": 0xFFF, "TO_SHIFT": 12,
                            "OTHERS_MASK": 0xFF000000}.items():
            previous.setattr(nft_layout, name, value)
        previous.setattr(nft_layout, "BASE", nft_layout.base_script(0xFFF, 12))
        previous.setattr(nft_compile, "compile_port", functools.partial(nft_compile.compile_port, share=False))
        host.define_filter(filter_from_xml(WEB))
        host.bind(Binding(vm.port, vm.mac, FilterRef("web", {"IP": (vm.ip,)})))
        host.bind(_clean(peer))
    root = tmp_path / "store"
    to_index_json(root, 2)
    assert "meta mark & 0x00000fff vmap @fi" in lab.nft_list() and "0x00001000 : jump" in lab.nft_list()
    assert _tcp_in(lab) == {"incoming tcp 22": True, "incoming tcp 23": False} and not _spoofed_passes(lab)
    fresh = Host(str(root), netns=lab.host)  # the next module run, with this release
    predicted = fresh.bind(Binding("vnet9", "52:54:00:00:00:99", FilterRef("no-mac-spoofing")), check=True)
    assert predicted.repaired == ["the store would be converted from format 2 to 6: every port's rules would be "
                                  "reinstalled"] and (root / "version").read_text() == "2\n"
    result = fresh.bind(Binding("vnet9", "52:54:00:00:00:99", FilterRef("no-mac-spoofing")))
    assert result.repaired == [CONVERTED.format(version=2, reasons=f"{WIDER}; {READ_BACK}")] and (root / "version").read_text() == "6\n"
    listing = lab.nft_list()
    assert "meta mark & 0x00003fff vmap @fi" in listing and "meta mark & 0x0fffc000 vmap @fo" in listing
    assert re.search(r"set s/\w+/to \{\n\t\ttype mark\n\t\telements = \{ 0x00004000", listing)  # vm's id, 1, to it
    assert "0x00001000 : jump" not in listing
    assert _tcp_in(lab) == {"incoming tcp 22": True, "incoming tcp 23": False} and not _spoofed_passes(lab)
    assert not fresh.converge().changed and all(report["in_force"] for report in fresh.report().values())


def test_a_version_5_store_is_split_and_its_ports_stay_as_they_are(lab, host, tmp_path):
    """Version 6 only splits the index into shards: no port is reinstalled."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(_clean(vm))
    host.bind(Binding(peer.port, peer.mac, FilterRef("no-mac-spoofing")))
    root = tmp_path / "store"
    index = to_index_json(root, 5)
    before = lab.nft_list()
    fresh = Host(str(root), netns=lab.host)
    assert fresh.bind(_clean(vm)).changed is False  # converted, found in force, nothing to do
    assert (root / "version").read_text() == "6\n" and not (root / "index.json").exists()
    assert Store(str(root)).index().all() == index and lab.nft_list() == before
    assert fresh.bind(Binding("vnet9", "52:54:00:00:00:99", FilterRef("no-mac-spoofing"))).rebuilt == ["vnet9"]
    assert not _spoofed_passes(lab) and all(report["in_force"] for report in fresh.report().values())


def test_the_layer3_warning_names_only_ports_with_layer3_rules(lab, host):
    """From the index: a port with bridge rules only is not named."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.define_filter(filter_from_xml("<filter name='web'><filterref filter='clean-traffic'/><rule action='accept' "
                                       "direction='in'><tcp dstportstart='22'/></rule></filter>"))
    host.bind(Binding(vm.port, vm.mac, FilterRef("web", {"IP": (vm.ip,)})))
    host.bind(Binding(peer.port, peer.mac, FilterRef("no-mac-spoofing")))
    lab.sh(lab.host, "sysctl -qw net.bridge.bridge-nf-call-iptables=0")
    try:
        warning = host.layer3_warning()
    finally:
        lab.sh(lab.host, "sysctl -qw net.bridge.bridge-nf-call-iptables=1")
    assert warning.startswith(f"the layer-3/4 rules of {vm.port} see no bridged traffic")
