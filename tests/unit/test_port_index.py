"""The index read and written in part: its totals always equal a count of its
entries, a change writes only the shards it changed, and lost totals are
counted again; lazy maps list their keys only when all are wanted."""

import json
import os

from hypothesis import given, settings, strategies as st

from engine.lazy_map import LazyMap
from engine.port_index import BY, TOTALS, PortIndex, owner_key, shard_of
from engine.store import atomic_write_many

PORTS = [f"vnet{n}" for n in range(12)]


ADDRESSES = ["MAC 52:54:00:00:00:01", "IP 192.0.2.1", "IP 192.0.2.2"]


def _entry(port_id, rules=3, layer3=False, root="clean-traffic", shape="s1", addresses=(), owner=None):
    return [port_id, rules, layer3, root, "d", list(addresses), owner, shape]


def _recount(entries):
    fresh = PortIndex.of(entries)
    return {**fresh.totals, "shapes": {name: count for name, (count, _port) in fresh.totals["shapes"].items()}}


def _counts(index):
    return {**index.totals, "shapes": {name: count for name, (count, _port) in index.totals["shapes"].items()}}


operations = st.lists(st.tuples(st.sampled_from(PORTS), st.one_of(st.none(), st.tuples(
    st.integers(1, 200), st.booleans(), st.sampled_from(["a", "b", None]), st.sampled_from(["s1", "s2", None]),
    st.lists(st.sampled_from(ADDRESSES), unique=True), st.sampled_from([None, "u1", "u2"])))),
    max_size=30)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_the_totals_are_a_count_of_the_entries(tmp_path_factory, changes):
    directory = str(tmp_path_factory.mktemp("index"))
    stored = PortIndex(directory, _read)
    index = stored.copy()
    entries = {}
    for port, change in changes:
        if change is None:
            index.pop(port)
            entries.pop(port, None)
        else:
            rules, layer3, root, shape, addresses, owner = change
            entries[port] = _entry(index.free_id() if port not in index else index.id(port), rules, layer3, root, shape,
                                   addresses, owner)
            index.set(port, entries[port])
    assert index.all() == entries and _counts(index) == _recount(entries)
    assert {name: index.get(port)[7] for name, port in index.shapes().items()} == {n: n for n in _recount(entries)["shapes"]}
    atomic_write_many(index.writes(stored))
    again = PortIndex(directory, _read)
    assert again.all() == entries and _counts(again) == _recount(entries)
    assert again.holding(ADDRESSES) == {a: sorted(p for p, e in entries.items() if a in e[5]) for a in ADDRESSES}
    assert again.holding([owner_key("u1")]) == {owner_key("u1"): sorted(p for p, e in entries.items() if e[6] == "u1")}
    ids = sorted(entry[0] for entry in entries.values())
    assert len(ids) == len(set(ids)) and again.free_id() == min(set(range(1, 20)) - set(ids))


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _stored_ports(directory):
    """An index of PORTS (ids 1, 2, ...) written to ``directory``, as read back."""
    stored = PortIndex(str(directory), _read)
    index = stored.copy()
    for number, port in enumerate(PORTS, 1):
        index.set(port, _entry(number))
    atomic_write_many(index.writes(stored))
    return PortIndex(str(directory), _read)


def test_a_change_writes_its_shard_and_the_totals_only(tmp_path):
    stored = _stored_ports(tmp_path)
    index = stored.copy()
    index.set("vnet3", _entry(4))  # as it was
    assert index.writes(stored) == []
    index.set("vnet3", _entry(4, rules=9))
    assert [os.path.basename(path) for path, _text in index.writes(stored)] == [f"{shard_of('vnet3')}.json", TOTALS]
    assert index.totals["rules"] == 3 * 11 + 9


def test_lost_totals_are_counted_again_and_written_with_the_next_change(tmp_path):
    stored = PortIndex(str(tmp_path), _read)
    index = stored.copy()
    index.set("vnet0", _entry(1, shape="s1", addresses=ADDRESSES[:1]))
    index.set("vnet1", _entry(2, shape="s1", addresses=ADDRESSES[:1]))
    atomic_write_many(index.writes(stored))
    (tmp_path / TOTALS).write_text('{"ports": "many"}')
    (tmp_path / f"{BY}{shard_of(ADDRESSES[0])}.json").unlink()
    stored = PortIndex(str(tmp_path), _read)
    assert stored.holding(ADDRESSES[:1]) == {ADDRESSES[0]: ["vnet0", "vnet1"]}
    assert len(stored) == 2 and stored.free_id() == 3 and stored.shapes() == {"s1": "vnet0"}
    index = stored.copy()
    index.pop("vnet0")  # the port the totals named for its shape: another is found
    assert index.shapes() == {"s1": "vnet1"}
    atomic_write_many(index.writes(stored))
    assert json.loads((tmp_path / TOTALS).read_text())["ports"] == 1
    assert PortIndex(str(tmp_path), _read).holding(ADDRESSES[:1]) == {ADDRESSES[0]: ["vnet1"]}


def test_a_shape_whose_named_port_left_is_found_in_the_first_shards(tmp_path):
    """With many ports in a shape, naming another reads a shard or two, not all 64."""
    stored = PortIndex(str(tmp_path), _read)
    index = stored.copy()
    for number in range(1000):
        index.set(f"vnet{number}", _entry(number + 1))
    atomic_write_many(index.writes(stored))
    read = []
    stored = PortIndex(str(tmp_path), lambda path: read.append(os.path.basename(path)) or _read(path))
    named = stored.shapes()["s1"]
    index = stored.copy()
    index.pop(named)
    read.clear()
    assert index.shapes()["s1"] not in (None, named)
    assert len([name for name in read if name != TOTALS]) <= 2, read


def _vnet0_at_an_address(tmp_path):
    """An index of vnet0 bound to the first address, written; the path of that address's lookup shard."""
    stored = PortIndex(str(tmp_path), _read)
    index = stored.copy()
    index.set("vnet0", _entry(1, addresses=ADDRESSES[:1]))
    atomic_write_many(index.writes(stored))
    return tmp_path / f"{BY}{shard_of(ADDRESSES[0])}.json"


def test_a_lookup_shard_put_back_from_a_backup_is_counted_again_by_the_full_check(tmp_path):
    shard = _vnet0_at_an_address(tmp_path)
    backup = shard.read_text()
    stored = PortIndex(str(tmp_path), _read)
    index = stored.copy()
    index.pop("vnet0")
    index.set("vnet1", _entry(2, addresses=ADDRESSES[:1]))
    atomic_write_many(index.writes(stored))
    shard.write_text(backup)  # valid JSON, but of a port that left
    stored = PortIndex(str(tmp_path), _read)
    assert stored.holding(ADDRESSES[:1]) == {ADDRESSES[0]: ["vnet0"]}
    stored.recount()  # what the full kernel check and restore do
    assert stored.holding(ADDRESSES[:1]) == {ADDRESSES[0]: ["vnet1"]}
    index = stored.copy()
    index.set("vnet2", _entry(3))
    atomic_write_many(index.writes(stored))
    assert json.loads(shard.read_text()) == {ADDRESSES[0]: ["vnet1"]}


def test_a_lost_address_shard_is_written_by_a_change_of_any_port(tmp_path):
    lost = _vnet0_at_an_address(tmp_path)
    lost.write_text("[")
    stored = PortIndex(str(tmp_path), _read)
    assert stored.holding(ADDRESSES[:1]) == {ADDRESSES[0]: ["vnet0"]}
    index = stored.copy()
    index.set("vnet1", _entry(2))
    atomic_write_many(index.writes(stored))
    assert json.loads(lost.read_text()) == {ADDRESSES[0]: ["vnet0"]}


def test_a_lost_shard_is_counted_out_of_the_totals(tmp_path):
    """The full kernel check recounts: ids of the lost ports are free again, the counts are right."""
    _stored_ports(tmp_path)
    (tmp_path / f"{shard_of('vnet0')}.json").unlink()
    stored = PortIndex(str(tmp_path), _read)
    lost = [port for port in PORTS if shard_of(port) == shard_of("vnet0")]
    assert len(stored) == len(PORTS) and stored.free_id() == len(PORTS) + 1  # as the totals say
    stored.recount()
    assert len(stored) == len(PORTS) - len(lost) and stored.free_id() == min(PORTS.index(p) for p in lost) + 1
    index = stored.copy()
    index.set("vnet99", _entry(99))
    atomic_write_many(index.writes(stored))
    assert len(PortIndex(str(tmp_path), _read)) == len(PORTS) - len(lost) + 1


def test_a_lazy_map_lists_its_keys_only_when_all_are_wanted():
    listed, asked = [], []

    def listing():
        listed.append(True)
        return ["a", "b"]

    def exists(key):
        asked.append(key)
        return key in ("a", "b")
    found = LazyMap(listing, str.upper, exists=exists)
    assert "a" in found and "z" not in found and found["b"] == "B" and not listed
    changed = found.copy()
    changed["c"] = "C"
    del changed["a"]
    assert "c" in changed and "a" not in changed and not listed
    assert list(changed.changes(found)) == ["c"] and changed.gone(found) == ["a"] and not listed
    assert list(changed) == ["b", "c"] and listed and sorted(asked) == ["a", "b", "c", "z"]
