"""The store's robustness: a damaged file is a one-line error naming it and
why, what the store writes it can always read back, and its root is absolute."""

import itertools
import json
import os

import pytest

from engine.errors import NwfilterError
from engine.model import Binding, FilterRef
from engine.port_index import shard_of
from engine import store as store_module
from engine.store import Store
from engine.xml_form import MAX_DOCUMENT, binding_to_xml, filter_from_xml

BINDING = Binding("vnet0", "52:54:00:00:00:01", FilterRef("clean-traffic"))


@pytest.fixture
def store(tmp_path):
    made = Store(str(tmp_path / "store"))
    with made.locked():
        pass  # creates the directories
    return made


def _write(store, relative, data):
    path = os.path.join(store.root, relative)
    with open(path, "wb") as handle:
        handle.write(data if isinstance(data, bytes) else data.encode())
    return path


READERS = {"bindings": lambda store: dict(store.bindings()), "learned": lambda store: dict(store.learned()),
           "index": lambda store: store.index().get("vnet0")}
SHARD = f"index/{shard_of('vnet0')}.json"  # where vnet0's index entry is kept


@pytest.mark.parametrize("relative,data,reader,words", [
    ("bindings/vnet0.xml", b"<filterbinding>\xff\xfe</filterbinding>", "bindings", "not UTF-8 text"),
    ("bindings/vnet1.xml", binding_to_xml(BINDING), "bindings", "holds the binding of 'vnet0', not of 'vnet1'"),
    ("bindings/vnet0.xml", "<filterbinding><portdev name='vnet0'/>", "bindings", "malformed XML"),
    (SHARD, "garbage", "index", "not valid JSON"),
    (SHARD, '{"vnet0": [1, 2', "index", "not valid JSON"),
    (SHARD, '{"vnet0": {"chains": [], "elements": []}}', "index", "not a map of ports to [id, rules"),
    (SHARD, '{"vnet0": [1, 2, "yes", "f", null, null, null]}', "index", "not a map of ports to [id, rules"),
    (SHARD, '[]', "index", "not a map of ports to [id, rules"),
    (SHARD, '{"vnet1": [1, 2, true, "f", null, null, null]}', "index", "holds a port of another shard"),
    ("learned/vnet0.json", "", "learned", "not valid JSON"),
    ("learned/vnet0.json", '{"IP": "192.0.2.1"}', "learned", "not a map of IP/IPV6 to addresses"),
])
def test_a_damaged_file_is_named_with_the_reason(store, relative, data, reader, words):
    path = _write(store, relative, data)
    with pytest.raises(NwfilterError) as caught:
        READERS[reader](store)
    message = str(caught.value)
    assert message.startswith(f"stored file {path}: ") and words in message and "\n" not in message


@pytest.mark.parametrize("data", ["", '{"id": 1, "chai', '{"chains": {}}'])
def test_a_damaged_port_record_counts_as_lost(store, data):
    """Port records are not fsynced (a power cut may empty them): the kernel check reinstalls such a port."""
    _write(store, "ports/vnet0.json", data)
    assert dict(store.records(["vnet0"])) == {"vnet0": None}


def test_unreadable_bindings_can_be_skipped_and_named(store):
    _write(store, "bindings/vnet0.xml", binding_to_xml(BINDING))
    _write(store, "bindings/vnet1.xml", b"\xff")
    unreadable = {}
    assert list(store.bindings(unreadable)) == ["vnet0"]
    assert list(unreadable) == ["vnet1"] and "not UTF-8" in unreadable["vnet1"]


def test_what_is_accepted_can_be_read_back(store):
    """A filter just under the input limit whose canonical form is larger is refused before anything is written."""
    rule = "<rule action='drop' direction='in'><tcp dstportstart='1'/></rule>"
    text = f"<filter name='big'>{rule * ((MAX_DOCUMENT - 100) // len(rule))}</filter>"
    flt = filter_from_xml(text)
    with pytest.raises(NwfilterError, match=r"^filter 'big': its stored form would be \d+ bytes, more than the 1048576"):
        store.plan(({}, {}, {}, {}, {}), ({"big": flt}, {}, {}, {}, {}), [])
    assert os.listdir(store.dirs["filters"]) == []


@pytest.mark.parametrize("root", ["relative/store", "", "./store"])
def test_the_root_must_be_absolute(root):
    with pytest.raises(NwfilterError, match="must be an absolute path"):
        Store(root)


def test_an_interrupted_change_is_undone(store):
    """The journal holds the old text of every file a change writes, until the change is complete."""
    entry = [1, 0, False, "clean-traffic", None, None, None, None]
    empty = store.index()
    index = empty.copy()
    index.set("vnet0", entry)
    old = ({}, {"vnet0": BINDING}, {}, {"vnet0": {"chains": [], "elements": []}}, index)
    store.finish(store.with_records(store.plan(({}, {}, {}, {}, empty), old, ["vnet0"]), old[3], {}))
    moved = Binding("vnet1", "52:54:00:00:00:02", FilterRef("clean-traffic"))
    after = index.copy()
    after.pop("vnet0")
    after.set("vnet1", [2, 0, False, "clean-traffic", None, None, None, None])
    plan = store.plan(old, ({}, {"vnet1": moved}, {"vnet1": {"IP": ["192.0.2.9"]}}, {}, after), ["vnet0", "vnet1"])
    store.begin(plan)
    for path, text in plan[0][:2]:  # killed half way through the renames
        if text is None:
            os.unlink(path)
        else:
            _write(store, os.path.relpath(path, store.root), text)
    assert store.journal() == ["vnet0", "vnet1"]
    store.undo()
    store.end()
    assert store.journal() is None
    assert store.bindings() == {"vnet0": BINDING} and store.learned() == {}
    assert store.index().all() == {"vnet0": entry} and len(store.index()) == 1
    # port records are not journaled: the change's ports are reinstalled after the undo, which rewrites them
    assert dict(store.records(["vnet0"])) == {"vnet0": None}
    with open(os.path.join(store.root, SHARD), encoding="utf-8") as handle:
        assert json.load(handle) == {"vnet0": entry}


def test_many_files_are_each_fsynced_before_any_replaces_its_target(tmp_path, monkeypatch):
    """atomic_write_many fsyncs many files a few at a time (store.fsync_all); a
    failed fsync leaves every target as it was and no temporary file behind."""
    targets = [str(tmp_path / f"f{number}") for number in range(100)]
    for target in targets:
        (tmp_path / os.path.basename(target)).write_text("old")
    synced, real = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    store_module.atomic_write_many([(target, "new") for target in targets])
    staged = [path for path in synced if "/.tmp-" in path]
    assert len(staged) == len(set(staged)) == 100 and str(tmp_path) in synced  # then the directory's
    assert {open(target, encoding="utf-8").read() for target in targets} == {"new"}

    calls = itertools.count(1)

    def failing(fd):
        if "/.tmp-" in os.readlink(f"/proc/self/fd/{fd}") and next(calls) == 57:
            raise OSError(5, "Input/output error")
        real(fd)
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError):
        store_module.atomic_write_many([(target, "newer") for target in targets])
    assert {open(target, encoding="utf-8").read() for target in targets} == {"new"}
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(target) for target in targets)


def test_staged_files_appear_only_when_the_change_finishes(store, monkeypatch):
    """Store.stage writes and fsyncs a change's files beside the kernel's
    transaction: nothing is visible before finish, discard leaves nothing,
    and a failed staging is raised by finish with no file left behind."""
    plan = (
        [(os.path.join(store.root, "bindings", f"vnet{number}.xml"), binding_to_xml(BINDING)) for number in range(20)]
        + [(os.path.join(store.root, "ports", "vnet0.json"), '{"chains": [], "elements": []}\n')], ["vnet0"])

    def listing():
        return sorted(name for base in ("bindings", "ports") for name in os.listdir(os.path.join(store.root, base)))
    staged = store.stage(plan)
    assert len(staged.wait()) == 20  # the port record is written by finish, in place
    assert all(name.startswith(".tmp-") for name in listing())
    staged.discard()
    assert listing() == []

    store.begin(plan)
    store.finish(plan, store.stage(plan))
    assert listing() == sorted([f"vnet{number}.xml" for number in range(20)] + ["vnet0.json"])
    assert store.journal() is None

    changed = ([(path, "<filterbinding/>" if path.endswith(".xml") else text) for path, text in plan[0]], plan[1])
    store.begin(changed)

    def full(paths):
        raise OSError(28, "No space left")
    monkeypatch.setattr(store_module, "fsync_all", full)
    staged = store.stage(changed)
    with pytest.raises(OSError, match="No space left"):
        store.finish(changed, staged)
    assert listing() == sorted([f"vnet{number}.xml" for number in range(20)] + ["vnet0.json"])
    assert store.bindings()["vnet0"] == BINDING
