"""The store's format version: an unversioned store (every store before the
file existed) is version 1 and gets the file on its next change; a newer one
is refused clearly, for reading and for changing; check mode creates nothing."""

import json
import os
import re

import pytest

from engine.errors import NwfilterError
from engine.store import STORE_VERSION, Store, binding_digest
from engine.model import Binding, FilterRef
from engine.xml_form import binding_to_xml


BINDING = Binding("vnet0", "52:54:00:00:00:01", FilterRef("clean-traffic"))


@pytest.fixture
def unversioned(tmp_path):
    """A store as the release before the version file wrote it."""
    root = tmp_path / "store"
    for name in ("filters", "bindings", "learned"):
        (root / name).mkdir(parents=True)
    (root / "bindings" / "vnet0.xml").write_text(binding_to_xml(BINDING))
    (root / ".lock").write_text("")
    return root


def test_unversioned_store_is_version_1_and_stamped_on_change(unversioned):
    store = Store(str(unversioned))
    assert list(store.bindings()) == ["vnet0"] and not (unversioned / "version").exists()
    with store.locked(create=False):  # check mode: read, but write nothing
        pass
    assert not (unversioned / "version").exists()
    with store.locked():
        pass
    assert (unversioned / "version").read_text() == f"{STORE_VERSION}\n" == "6\n"
    assert list(store.bindings()) == ["vnet0"]


@pytest.mark.parametrize("text,words", [("7\n", "format version 7 is newer than this copy of vmguard.nwfilter reads (6)"),
                                        ("two", "unreadable format version 'two'")])
def test_newer_or_unreadable_store_is_refused(unversioned, text, words):
    (unversioned / "version").write_text(text)
    store = Store(str(unversioned))
    for read in (store.bindings, store.filters, store.learned, store.index):
        with pytest.raises(NwfilterError, match=re.escape(f"store {unversioned}: {words}")):
            read()
    with pytest.raises(NwfilterError, match=re.escape(words)):
        with store.locked():
            pass
    assert (unversioned / "version").read_text() == text


def test_check_mode_creates_nothing_on_a_fresh_root(tmp_path):
    store = Store(str(tmp_path / "fresh"))
    with store.locked(create=False):
        assert store.bindings() == {} and store.index().all() == {}
    assert not os.path.exists(tmp_path / "fresh")


def _v1_store(root, records):
    """A version 1 store as the previous release wrote it: every port record in ports.json."""
    (root / "version").write_text("1\n")
    (root / "ports.json").write_text(json.dumps(records))


RECORD = {"chains": [["bridge", "p/vnet0/o", "0123456789abcdef", 3], ["inet", "p/vnet0/fi", "fedcba9876543210", 1]],
          "elements": [["bridge", "from_vm", '"vnet0"']], "rules": 4}


def test_a_version_1_store_is_read_as_it_is_and_converted_on_the_first_change(unversioned):
    _v1_store(unversioned, {"vnet0": {"id": 7, **RECORD}})
    store = Store(str(unversioned))
    expected = {"vnet0": [7, 4, True, None, None, None, None, None]}
    assert store.index().all() == expected and dict(store.records(["vnet0"])) == {"vnet0": RECORD}
    with store.locked(create=False):  # check mode reads it, converts nothing
        assert store.index().all() == expected
    assert (unversioned / "version").read_text() == "1\n" and (unversioned / "ports.json").exists()
    with store.locked():
        pass
    assert (unversioned / "version").read_text() == "6\n" and not (unversioned / "ports.json").exists()
    assert store.index()["vnet0"][:5] == [7, 4, True, "clean-traffic", binding_digest(BINDING)]  # from the binding
    # its rules are in the old mark layout: no record, so the next kernel check reinstalls the port
    assert dict(store.records(["vnet0"])) == {"vnet0": None} and store.converted_from == 1


@pytest.mark.parametrize("version", [2, 3, 4])
def test_a_store_before_version_5_forgets_its_records_and_marker_on_the_first_change(unversioned, version):
    """Version 3 widened the port ids in the packet mark, version 4 records
    what the kernel holds of each chain, version 5 shares chains: every port
    is reinstalled by the next kernel check, our base chains included."""
    store = Store(str(unversioned))
    with store.locked():
        pass
    (unversioned / "version").write_text(f"{version}\n")
    (unversioned / "ports" / "vnet0.json").write_text(json.dumps(RECORD))
    store.set_marker(["boot", 1, 5])
    store.set_kernel_contents("base", {"bridge prerouting": "0123456789abcdef"})
    with store.locked(create=False):  # check mode converts nothing
        assert dict(store.records(["vnet0"])) == {"vnet0": RECORD} and store.marker() == ["boot", 1, 5]
    with store.locked():
        pass
    assert (unversioned / "version").read_text() == "6\n" and store.converted_from == version
    assert dict(store.records(["vnet0"])) == {"vnet0": None} and store.marker() is None
    assert store.kernel_contents("base") is None


def test_an_interrupted_version_1_change_is_undone_before_converting(unversioned):
    """The journal of a version 1 change names ports.json: its files are put
    back first, and the ports stay named for the kernel to be put right."""
    old = {"vnet0": {"id": 7, **RECORD}}
    _v1_store(unversioned, {"vnet0": {"id": 7, **RECORD}, "vnet1": {"id": 8, **RECORD}})  # the change half done
    (unversioned / "journal.json").write_text(json.dumps({"ports": ["vnet1"], "undo": {
        str(unversioned / "ports.json"): json.dumps(old), str(unversioned / "bindings" / "vnet1.xml"): None}}))
    (unversioned / "bindings" / "vnet1.xml").write_text(binding_to_xml(Binding("vnet1", "52:54:00:00:00:02",
                                                                               FilterRef("clean-traffic"))))
    store = Store(str(unversioned))
    with store.locked():
        assert store.journal() == ["vnet1"]
    assert store.index()["vnet0"][:4] == [7, 4, True, "clean-traffic"] and list(store.bindings()) == ["vnet0"]
    store.undo()  # what the next change does with the journal: no file of version 1 comes back
    assert not (unversioned / "ports.json").exists() and store.index()["vnet0"][:4] == [7, 4, True, "clean-traffic"]


def test_an_unreadable_version_1_ports_json_converts_to_no_records(unversioned):
    (unversioned / "version").write_text("1\n")
    (unversioned / "ports.json").write_text("{garbage")
    store = Store(str(unversioned))
    with store.locked():
        pass
    assert store.index().all() == {} and not (unversioned / "ports.json").exists()


ENTRIES = {"vnet0": [7, 4, True, "clean-traffic", "d0", ["52:54:00:00:00:01"], None, "s0"],
           "vnet1": [9, 2, False, "no-mac-spoofing", "d1", [], "u1", None]}


def _v5_store(root, entries):
    store = Store(str(root))
    with store.locked():
        pass
    (root / "version").write_text("5\n")
    (root / "index.json").write_text(json.dumps(entries))
    (root / "ports" / "vnet0.json").write_text(json.dumps(RECORD))
    return store


def test_a_version_5_index_is_split_into_shards_and_nothing_is_reinstalled(unversioned):
    store = _v5_store(unversioned, ENTRIES)
    with store.locked(create=False):  # check mode reads index.json as it is
        assert store.index().all() == ENTRIES
    with store.locked():
        pass
    assert (unversioned / "version").read_text() == "6\n" and not (unversioned / "index.json").exists()
    index = store.index()
    assert index.all() == ENTRIES and len(index) == 2 and index.totals["rules"] == 6 and index.free_id() == 1
    assert index.shapes() == {"s0": "vnet0"} and index.roots() == {"clean-traffic": 1, "no-mac-spoofing": 1}
    assert dict(store.records(["vnet0"])) == {"vnet0": RECORD}  # the kernel's rules are as version 5 made them
    assert store.converted_from == 5


def test_an_interrupted_version_5_change_is_undone_before_splitting(unversioned):
    """The journal names index.json: the old one is put back and split, not the half-changed one."""
    store = _v5_store(unversioned, ENTRIES)
    (unversioned / "journal.json").write_text(json.dumps({"ports": ["vnet1"], "undo": {
        str(unversioned / "index.json"): json.dumps({"vnet0": ENTRIES["vnet0"]})}}))
    with store.locked():
        assert store.journal() == ["vnet1"]  # the ports stay named for the kernel to be put right
    assert store.index().all() == {"vnet0": ENTRIES["vnet0"]} and not (unversioned / "index.json").exists()
