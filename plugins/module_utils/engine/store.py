# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The on-host store: filters and bindings as libvirt XML under one root
directory, plus the port ids and learned addresses the host keeps.

A change reads and writes what it touches, not the whole store: bindings,
learned addresses and port records are one file each, read on first use
(``LazyMap``), and the index (``port_index``) holds what a change needs of
each port (its id, its rule count, its binding's root filter, whether it has
layer-3 rules) in shards, with totals over all ports.

Every file is replaced atomically (write, fsync, rename, fsync the directory),
and one lock serialises whole read-change-apply-write cycles, so concurrent
Ansible runs and the learner never lose each other's updates.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import threading
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import NwfilterError
from .lazy_map import LazyMap
from .model import Binding, Filter
from .overlaps import binding_addresses
from .port_index import PortIndex, entries_text, is_count, parse_entries
from .xml_form import MAX_DOCUMENT, binding_from_xml, binding_to_xml, filter_from_xml, filter_to_xml

if TYPE_CHECKING:  # the networks' code is imported when networks are read: a binding's change never needs it
    from .network_model import Network

DEFAULT_ROOT = "/etc/vmguard"
# The store's format, in the file "version": the modules run the controller's
# copy of this code and the learner service the copy the role deployed, so each
# refuses a store newer than it reads. A store without the file is version 1
# (the format before the file existed); a format change adds its conversion in
# Store.check_version.
# Version 2 split version 1's ports.json into index.json and ports/<port>.json.
# Version 3 widened port ids from 12 to 14 bits of the packet mark
# (nft_layout): the files are the same, but every port's rules in the kernel
# use the old layout, so converting forgets the port records, and the next
# kernel check reinstalls every port and our base chains in one transaction.
# Version 4 records what the kernel holds of each chain of ours (its rules'
# content, read back after our commit: integrity, rule_content) in the port
# records, base.json and network-table.json; converting forgets them, as for version 3.
# Version 5 shares chains among ports of one shape (nft_compile.Shape): the
# index names each port's shape, our base chains changed; converting forgets
# the records, as for version 3.
# Version 6 split index.json into the shards and totals of index/
# (port_index): a change reads and writes its ports' shards only. The kernel's
# rules are as for version 5: converting splits the file and reinstalls nothing.
STORE_VERSION = 6
# why a conversion to each version reinstalls every port (Host._verified says it); a
# conversion from a version after these reinstalls nothing
REINSTALLED_FOR = {3: "port ids of 14 bits in the packet mark",
                   4: "what the kernel holds of each chain is read back and recorded",
                   5: "ports alike share chains"}
# what the kernel held in our base chains and our network table (Store.kernel_contents)
CONTENTS_FILES = {"base": "base.json", "networks": "network-table.json"}
# parsed objects by file text: a change reads every file, parsing only what changed
_PARSED: Dict[str, object] = {}


def _parse_cached(text: str, parse) -> object:
    found = _PARSED.get(text)
    if found is None:
        if len(_PARSED) > 100000:
            _PARSED.clear()
        found = _PARSED[text] = parse(text)
    return found


def fsync_path(path: str) -> None:
    """fsync a file or a directory by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# fsyncs at once when a change writes many files: each waits for the disk's
# flush, and the disk takes several at a time (1,000 files here: 0.18-0.24 s
# one after another, 0.09-0.10 s eight at a time)
PARALLEL_FSYNCS = 8


def fsync_all(paths: Sequence[str]) -> None:
    """fsync every file, up to PARALLEL_FSYNCS at once when there are many;
    returns once all are done, raising the first error."""
    if len(paths) < 2 * PARALLEL_FSYNCS:
        for path in paths:
            fsync_path(path)
        return
    todo, errors = list(paths), []

    def work() -> None:
        while not errors:
            try:
                path = todo.pop()  # atomic: no two threads take one file
            except IndexError:
                return
            try:
                fsync_path(path)
            except OSError as exc:
                errors.append(exc)
    threads = [threading.Thread(target=work) for _number in range(PARALLEL_FSYNCS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


# numbers the temporary files of this process: a change's files may be written by a thread of
# their own (Staging) while another write runs
_SERIAL = itertools.count()


def _stage(files: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """Write each ``(path, text)`` to a temporary file beside it, then fsync
    them all (``fsync_all``): the first fsync commits the file system's
    journal for all of them, where fsyncing as each is written would commit
    once per file. Returns ``(temporary, path)``; on any error none is left."""
    staged: List[Tuple[str, str]] = []
    try:
        for path, text in files:
            # named by process and number: a file of that name is a leftover of a killed process with the same
            # pid (tempfile's import alone costs more)
            tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{next(_SERIAL)}")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                os.unlink(tmp)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            staged.append((tmp, path))
            os.fchmod(fd, 0o644)  # whatever the umask
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        fsync_all([tmp for tmp, _path in staged])
    except BaseException:
        _discard(staged)
        raise
    return staged


def _discard(staged: Sequence[Tuple[str, str]]) -> None:
    for tmp, _path in staged:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _put_in_place(staged: Sequence[Tuple[str, str]]) -> None:
    """Rename staged files over their paths, then fsync each directory."""
    try:
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        _discard(staged)  # those already renamed are gone from their temporary names
        raise
    for directory in sorted({os.path.dirname(path) for _tmp, path in staged}):
        fsync_path(directory)


def atomic_write_many(files: Sequence[Tuple[str, str]]) -> None:
    """Replace each ``(path, text)``: never a half-written file. All are
    written and fsynced first (``_stage``), then renamed."""
    _put_in_place(_stage(files))


class Staging:
    """A change's files staged (``_stage``) by a thread of its own, while the
    kernel takes the change's transaction: on this VM the fsyncs of a
    1,000-port change cost as much as nft's work. Nothing is visible before
    they are renamed (``Store.finish``), so a crash in between leaves the old files (and
    temporary ones that the next change's undo sweeps)."""

    def __init__(self, files: List[Tuple[str, str]]) -> None:
        self._staged: Optional[List[Tuple[str, str]]] = None
        self._error: Optional[BaseException] = None
        # daemon: a process that ends on an error does not wait for the disk; the journal undoes its change
        self._thread: Optional[threading.Thread] = threading.Thread(target=self._run, args=(files,),
                                                                    name="vmguard store writes", daemon=True)
        try:
            self._thread.start()
        except RuntimeError:  # no thread to be had: staged here and now
            self._thread = None
            self._run(files)

    def _run(self, files: List[Tuple[str, str]]) -> None:
        try:
            self._staged = _stage(files)
        except BaseException as exc:  # pylint: disable=broad-except  # raised again by wait
            self._error = exc

    def wait(self) -> List[Tuple[str, str]]:
        """``(temporary, path)`` of the staged files, or what staging raised."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._staged or []

    def discard(self) -> None:
        """The change is not made: remove the staged files."""
        if self._thread is not None:
            self._thread.join()
        _discard(self._staged or [])


def write_rebuildable(files: Sequence[Tuple[str, str]]) -> None:
    """Write each ``(path, text)`` in place, without fsync: for files whose
    loss costs only their rebuilding (port records). A kill or a power cut
    may leave one torn or empty; it then counts as lost. Creating a file
    costs far more than rewriting one (250-550 µs here), and a redefine
    rewrites the record of every port using the filter."""
    for path, text in files:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)


def atomic_write(path: str, text: str) -> None:
    atomic_write_many([(path, text)])


# file texts by path and identity: every change reads the whole store, and
# files are only ever replaced (a new inode), so a stat spares most reads
_TEXTS: Dict[str, Tuple[tuple, str]] = {}


def _text_of(path: str, entry: Optional[os.DirEntry] = None) -> Optional[str]:
    try:
        info = entry.stat() if entry is not None else os.stat(path)
        identity = (info.st_ino, info.st_dev, info.st_mtime_ns, info.st_ctime_ns, info.st_size)
        cached = _TEXTS.get(path)
        if cached is not None and cached[0] == identity:
            return cached[1]
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise NwfilterError(f"not UTF-8 text (byte {exc.start})", f"stored file {path}") from None
    except OSError as exc:
        raise NwfilterError(f"cannot read it: {exc.strerror}", f"stored file {path}") from None
    if len(_TEXTS) > 100000:
        _TEXTS.clear()
    _TEXTS[path] = (identity, text)
    return text


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _json_of(path: str, text: str, valid: Callable[[object], bool], shape: str) -> object:
    """The JSON document of a stored file, or a one-line error naming the file."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise NwfilterError(f"not valid JSON ({exc})", f"stored file {path}") from None
    if not valid(value):
        raise NwfilterError(f"not {shape}", f"stored file {path}")
    return value


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _learned_valid(value: object) -> bool:
    return isinstance(value, dict) and all(name in ("IP", "IPV6") and _strings(v) for name, v in value.items())


def _identity(path: str) -> Optional[list]:
    """What changes when a file is added to, removed from or replaced in a directory."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return [info.st_ino, info.st_mtime_ns, info.st_ctime_ns]


def _record_valid(record: object) -> bool:
    return isinstance(record, dict) and all(
        isinstance(record.get(key), list) and all(isinstance(item, list) for item in record[key])
        for key in ("chains", "elements"))


def _ports_valid(value: object) -> bool:  # version 1's ports.json
    return isinstance(value, dict) and all(_record_valid(record) and is_count(record.get("id"))
                                           for record in value.values())


def binding_digest(binding: Binding) -> str:
    """Equal for equal bindings: an unchanged binding is found without reading it."""
    fields = [binding.portdev, binding.mac, binding.filterref.filter, sorted(binding.filterref.parameters.items()),
              binding.owner_name, binding.owner_uuid, binding.linkdev]
    return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:20]


def index_entry(port_id: int, record: dict, binding: Optional[Binding]) -> list:
    """A port's entry in the index (``port_index``), what a change needs of
    every port without reading it: [id, nft rules, has layer-3 chains, its binding's root filter,
    the binding's digest, its addresses (``binding_addresses``), its owner's
    UUID, its shape (nft_compile.Shape) or None]; the binding's four are
    None when the binding could not be read."""
    shape = record.get("shape")
    chains = record["chains"] + (shape["chains"] if shape else [])
    entry = [port_id, record.get("rules", 0), any(chain[0] == "inet" for chain in chains)]
    found = [binding.filterref.filter, binding_digest(binding), binding_addresses(binding), binding.owner_uuid] \
        if binding is not None else [None, None, None, None]
    return entry + found + [shape["name"] if shape else None]


def _record_text(record: dict) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


# A plan of store writes: (path, new text or None to remove), and the ports it touches
Plan = Tuple[List[Tuple[str, Optional[str]]], List[str]]


class Store:
    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        if not isinstance(root, str) or not os.path.isabs(root):
            raise NwfilterError(f"the store's root {root!r} must be an absolute path")
        self.root = root
        self.dirs = {name: os.path.join(root, name) for name in ("filters", "bindings", "learned", "networks")}
        self.records_dir = os.path.join(root, "ports")  # what each port has in the kernel
        self.index_dir = os.path.join(root, "index")
        self.old_index_path = os.path.join(root, "index.json")  # versions 2-5
        self.converted_from: Optional[int] = None  # the version the current lock's holder converted from

    @contextlib.contextmanager
    def locked(self, create: bool = True) -> Iterator[None]:
        """The store's lock. ``create=False`` (check mode) creates nothing: with
        no lock file yet nothing is stored, so there is nothing to wait for."""
        lock = os.path.join(self.root, ".lock")
        if not create and not os.path.exists(lock):
            yield
            return
        try:
            if create:
                for path in [*self.dirs.values(), self.records_dir, self.index_dir]:
                    os.makedirs(path, mode=0o755, exist_ok=True)
            handle = open(lock, "a" if create else "r", encoding="utf-8")  # pylint: disable=consider-using-with
        except OSError as exc:
            raise NwfilterError(f"cannot use the store {self.root}: {exc.strerror}") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self.converted_from = None
            self.check_version(stamp=create)
            yield

    def check_version(self, stamp: bool = False) -> int:
        """The store's format version; a store newer than this code reads is
        refused. With ``stamp`` (under the lock, about to write) an older one
        is converted to this version first. Without it (check mode, reading)
        a version 1 store is read as it is."""
        path = os.path.join(self.root, "version")
        text = _text_of(path)
        if text is not None and not re.fullmatch(r"[0-9]{1,6}\n?", text):
            raise NwfilterError(f"unreadable format version {text.strip()[:20]!r}", f"store {self.root}")
        version = int(text) if text is not None else 1
        if version > STORE_VERSION:
            raise NwfilterError(f"format version {version} is newer than this copy of vmguard.nwfilter reads "
                                f"({STORE_VERSION}): upgrade the collection and the learner role first "
                                "(docs/upgrading.md)", f"store {self.root}")
        if stamp and version < STORE_VERSION:
            ports = self.journal()
            if ports is not None:  # the old files back now, while the journal names them as that version kept them
                self.undo()
                atomic_write(self._journal_path, json.dumps({"ports": ports, "undo": {}}))
            if version == 1:
                self._convert_from_v1()
            if version < max(REINSTALLED_FOR):
                self._forget_records()
            self._split_index()
            atomic_write(path, f"{STORE_VERSION}\n")
            _remove(os.path.join(self.root, "ports.json"))
            _remove(self.old_index_path)
            self.converted_from = version
            return STORE_VERSION
        return version

    def _split_index(self) -> None:
        """Version 6: index.json's entries into the shards of index/ (any
        shard already there is a leftover of an interrupted conversion)."""
        for name in os.listdir(self.index_dir):
            _remove(os.path.join(self.index_dir, name))
        text = _text_of(self.old_index_path)
        try:
            entries = parse_entries(self.old_index_path, text) if text else {}
        except NwfilterError:  # as an unreadable index: the kernel check adopts the ids the kernel holds
            entries = {}
        empty = PortIndex(self.index_dir, _text_of)
        split = empty.copy()
        for port, entry in entries.items():
            split.set(port, entry)
        atomic_write_many(split.writes(empty))

    def _forget_records(self) -> None:
        """Versions 3 to 5 (``REINSTALLED_FOR``). With no record and no
        generation marker, the next kernel check finds every port to
        reinstall, base chains included (Host._verified), all in one
        transaction; an interrupted conversion forgets them again."""
        self.set_marker(None)
        for of in CONTENTS_FILES:
            self.set_kernel_contents(of, None)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.records_dir):
                _remove(entry.path)

    def _convert_from_v1(self) -> None:
        """Version 1 kept every port's record in ports.json: the index is built
        from it (reading every binding once for its root filter); the records
        themselves are forgotten, as in any conversion since version 3. ports.json
        is removed only after the version is stamped, so an interrupted
        conversion is done again. An unreadable ports.json converts to no
        index: the next change's kernel check adopts the ids the kernel holds
        and reinstalls those ports, as for a lost record."""
        try:
            records = self._v1_records()
        except NwfilterError:
            records = {}
        bindings = self.bindings({})
        index = {port: index_entry(record["id"], record, bindings.get(port)) for port, record in records.items()}
        atomic_write(self.old_index_path, entries_text(index))

    def _v1_records(self) -> Dict[str, dict]:
        path = os.path.join(self.root, "ports.json")
        text = _text_of(path)
        return _json_of(path, text, _ports_valid, "a map of port records with id, chains and elements") if text else {}

    def _read_all(self, kind: str, parse: Callable[[str, str], object],
                  unreadable: Optional[Dict[str, str]]) -> Dict[str, object]:
        """Every file of ``kind`` parsed, by name without its extension. A file
        that cannot be read or parsed is a one-line error naming it; with
        ``unreadable``, it is skipped and its error kept there by name."""
        self.check_version()
        directory = self.dirs[kind]
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except FileNotFoundError:
            return {}
        found = {}
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name = os.path.splitext(entry.name)[0]
            try:
                text = _text_of(entry.path, entry)
                if text is not None:
                    found[name] = parse(name, text)
            except NwfilterError as exc:
                error = exc if str(exc).startswith("stored file") else exc.within(f"stored file {entry.path}")
                if unreadable is None:
                    raise error from None
                unreadable[name] = str(error)
        return found

    def filters(self, unreadable: Optional[Dict[str, str]] = None) -> Dict[str, Filter]:
        parsed = self._read_all("filters", lambda _name, text: _parse_cached(text, filter_from_xml), unreadable)
        return {flt.name: flt for flt in parsed.values()}

    def _lazy(self, kind: str, parse: Callable[[str, str], object]) -> LazyMap:
        """The files of ``kind`` by name, each read and parsed on first use;
        the directory is listed only when all are wanted."""
        self.check_version()
        directory = self.dirs[kind]
        extension = ".json" if kind == "learned" else ".xml"

        def names() -> List[str]:
            try:
                return sorted(name[:-len(extension)] for name in os.listdir(directory)
                              if name.endswith(extension) and not name.startswith("."))
            except FileNotFoundError:
                return []

        def exists(name: str) -> bool:
            return not name.startswith(".") and "/" not in name and \
                os.path.exists(os.path.join(directory, name + extension))

        def load(name: str) -> object:
            path = os.path.join(directory, name + extension)
            try:
                text = _text_of(path)
                if text is None:
                    raise NwfilterError("was removed while it was being read", f"stored file {path}")
                return parse(name, text)
            except NwfilterError as exc:
                raise (exc if str(exc).startswith("stored file") else exc.within(f"stored file {path}")) from None
        return LazyMap(names, load, exists=exists)

    def bindings(self, unreadable: Optional[Dict[str, str]] = None) -> LazyMap:
        """Every binding by port, read on first use; with ``unreadable``, all
        read now and those that cannot be are left out and named there."""
        def parse(name: str, text: str) -> Binding:
            binding = _parse_cached(text, binding_from_xml)
            if binding.portdev != name:
                raise NwfilterError(f"holds the binding of {binding.portdev!r}, not of {name!r}")
            return binding
        if unreadable is not None:
            return LazyMap.of(self._read_all("bindings", parse, unreadable))
        return self._lazy("bindings", parse)

    def networks(self) -> Dict[str, "Network"]:
        from .network_forms import network_from_xml  # pylint: disable=import-outside-toplevel
        parsed = self._read_all("networks", lambda _name, text: _parse_cached(text, network_from_xml), None)
        return {network.name: network for network in parsed.values()}

    def save_networks(self, before: Dict[str, "Network"], after: Dict[str, "Network"]) -> None:
        """Write the networks that change and remove those that go."""
        from .network_forms import network_to_xml  # pylint: disable=import-outside-toplevel
        directory = self.dirs["networks"]
        atomic_write_many([(os.path.join(directory, f"{name}.xml"), network_to_xml(network))
                           for name, network in sorted(after.items()) if before.get(name) != network])
        gone = set(before) - set(after)
        for name in gone:
            _remove(os.path.join(directory, f"{name}.xml"))
        if gone:
            fsync_path(directory)

    def learned(self, unreadable: Optional[Dict[str, str]] = None) -> LazyMap:
        path = self.dirs["learned"]

        def parse(name: str, text: str) -> object:
            return _json_of(os.path.join(path, f"{name}.json"), text, _learned_valid, "a map of IP/IPV6 to addresses")
        if unreadable is not None:
            return LazyMap.of(self._read_all("learned", parse, unreadable))
        return self._lazy("learned", parse)

    def index(self) -> PortIndex:
        """Per port with a record: its ``index_entry``, each shard read on first use."""
        version = self.check_version()
        if version == 1:
            return PortIndex.of({port: index_entry(record["id"], record, None)
                                 for port, record in self._v1_records().items()})
        if version < 6:  # read as it is (check mode); converted by the next change
            text = _text_of(self.old_index_path)
            return PortIndex.of(parse_entries(self.old_index_path, text) if text else {})
        return PortIndex(self.index_dir, _text_of)

    def records(self, ports: Union[Iterable[str], Callable[[], Iterable[str]]],
                exists: Optional[Callable[[str], bool]] = None) -> LazyMap:
        """What each of these ports has in the kernel as last installed
        (``chains``, ``elements``, ``rules``, ``sets``), read on first use.
        A record is rebuilt when lost (they are not fsynced): one missing or
        unreadable is None, and the kernel check reinstalls its port."""
        if self.check_version() == 1:
            v1 = self._v1_records()
            known = ports() if callable(ports) else ports
            return LazyMap.of({port: {k: v for k, v in v1[port].items() if k != "id"} for port in known if port in v1})

        def load(port: str) -> Optional[dict]:
            # read afresh, not through _text_of's cache: a record is rewritten in place, and two
            # writes within one clock tick may leave it the same size and times
            path = os.path.join(self.records_dir, f"{port}.json")
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
                return _json_of(path, text, _record_valid, "a port record")
            except (OSError, UnicodeDecodeError, NwfilterError):
                return None
        return LazyMap(ports, load, exists=exists)

    def _rebuildable(self, path: str) -> bool:
        return os.path.dirname(path) == self.records_dir

    def plan(self, old: tuple, new: tuple, ports: List[str]) -> Plan:
        """What going from the stored state ``old`` to ``new`` (filters,
        bindings, learned, port records, index) writes: only the files that
        change, the index last, once the files it describes are in place.
        Every file is checked to be one the store can read back. Of the port
        records, only those removed: the others are added once the kernel's
        rules are read back (``with_records``)."""
        renders = ((lambda n, f: (f"{n}.xml", filter_to_xml(f))),
                   (lambda p, b: (f"{p}.xml", binding_to_xml(b))),
                   (lambda p, v: (f"{p}.json", json.dumps(v, sort_keys=True) + "\n")))
        directories = [self.dirs["filters"], self.dirs["bindings"], self.dirs["learned"], self.records_dir]
        writes: List[Tuple[str, Optional[str]]] = []
        for directory, kind, render, before, after in zip(directories, ("filter", "binding", "learned", "port record"),
                                                          renders + (None,), old, new):
            changed = [] if render is None else after.changes(before) if isinstance(after, LazyMap) else \
                [key for key, value in after.items() if key not in before or before[key] != value]
            for key in changed:
                name, text = render(key, after[key])
                if len(text) > MAX_DOCUMENT:
                    raise NwfilterError(f"its stored form would be {len(text)} bytes, more than the "
                                        f"{MAX_DOCUMENT} the store reads back", f"{kind} {key!r}")
                writes.append((os.path.join(directory, name), text))
            extension = ".json" if directory in (self.dirs["learned"], self.records_dir) else ".xml"
            for key in after.gone(before) if isinstance(after, LazyMap) else [k for k in before if k not in after]:
                writes.insert(0, (os.path.join(directory, key + extension), None))
        writes += new[4].writes(old[4])  # the index last
        return writes, ports

    def with_records(self, plan: Plan, records: Dict[str, dict], before: Mapping[str, Optional[dict]]) -> Plan:
        """``plan`` writing these port records too, except those the same as
        ``before`` (what the store holds): what the kernel holds is read back
        after it changed, and ``begin`` journals no port record."""
        changed = [(os.path.join(self.records_dir, f"{port}.json"), _record_text(record))
                   for port, record in records.items() if before.get(port) != record]
        return changed + plan[0], plan[1]

    # The journal makes a change all or nothing across the kernel and the
    # files: before the kernel changes, it records the old text of every
    # file the change writes; it is removed once every file is in place. A
    # journal found later means a change was interrupted: ``undo`` puts the
    # old files back, and the caller puts the kernel back for its ports.
    @property
    def _journal_path(self) -> str:
        return os.path.join(self.root, "journal.json")

    def begin(self, plan: Plan) -> None:
        writes, ports = plan
        # port records are left out: the ports of an interrupted change are reinstalled, which rewrites them
        undo = {path: _text_of(path) for path, _text in writes if not self._rebuildable(path)}
        atomic_write(self._journal_path, json.dumps({"ports": ports, "undo": undo}))

    def _durable(self, plan: Plan) -> List[Tuple[str, str]]:
        """The files of the plan written atomically: all it writes but the port records."""
        return [(path, text) for path, text in plan[0] if text is not None and not self._rebuildable(path)]

    def stage(self, plan: Plan) -> Staging:
        """The plan's durable files, staged while the caller changes the kernel."""
        return Staging(self._durable(plan))

    def finish(self, plan: Plan, staged: Optional[Staging] = None) -> None:
        """Make the plan's writes; ``staged``: its durable files as ``stage``
        staged them (``with_records`` changes only the port records)."""
        writes, _ports = plan
        in_place = staged.wait() if staged is not None else _stage(self._durable(plan))
        try:
            removed = {os.path.dirname(path) for path, text in writes if text is None}
            for path, text in writes:
                if text is None:
                    _remove(path)
            # port records first (rebuilt when lost: the kernel check reinstalls their ports), the index last
            write_rebuildable([(path, text) for path, text in writes if text is not None and self._rebuildable(path)])
        except BaseException:
            _discard(in_place)
            raise
        _put_in_place(in_place)
        for directory in sorted(removed):
            fsync_path(directory)
        self.end()

    def end(self) -> None:
        """Forget the journal: the change is complete (or was never made)."""
        _remove(self._journal_path)
        fsync_path(self.root)

    def journal(self) -> Optional[List[str]]:
        """The ports of an interrupted change (its journal is renamed into place whole or not at all)."""
        text = _text_of(self._journal_path)
        if text is None:
            return None
        return _json_of(self._journal_path, text, lambda v: isinstance(v, dict) and _strings(v.get("ports"))
                        and isinstance(v.get("undo"), dict), "a journal of ports and files")["ports"]

    def sweep(self) -> None:
        """Remove the temporary files of writes that were interrupted."""
        for directory in [self.root, *self.dirs.values(), self.records_dir, self.index_dir]:
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(directory):
                    if entry.name.startswith(".tmp-"):
                        _remove(entry.path)

    def undo(self) -> None:
        """Put back the files of the interrupted change (the journal stays until ``end``)."""
        self.sweep()
        undo = json.loads(_text_of(self._journal_path) or "{}").get("undo", {})
        for path, text in undo.items():
            if text is None:
                _remove(path)
        atomic_write_many([(path, text) for path, text in undo.items() if text is not None])
        for directory in sorted({os.path.dirname(path) for path in undo}):
            fsync_path(directory)

    def kernel_contents(self, of: str) -> Optional[Dict[str, str]]:
        """What the kernel held, read back when we last installed them, in our
        base chains (``of`` "base": ``integrity.base_contents``) or our network
        table (``of`` "networks": per chain); None when not known (a lost or
        torn file: the next kernel check puts them back and reads them again)."""
        try:  # not _text_of: rewritten in place, a file's identity may not change
            with open(os.path.join(self.root, CONTENTS_FILES[of]), encoding="utf-8") as handle:
                found = json.load(handle)
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) and all(isinstance(v, str) for v in found.values()) else None

    def set_kernel_contents(self, of: str, contents: Optional[Dict[str, str]]) -> None:
        """Rebuildable, as the port records are."""
        path = os.path.join(self.root, CONTENTS_FILES[of])
        if contents is None:
            _remove(path)
        else:
            write_rebuildable([(path, json.dumps(contents, sort_keys=True) + "\n")])

    # The kernel's ruleset generation after our last commit (nft_generation):
    # a hint that spares listing the ruleset, so it is written without fsync.
    # It holds while the bindings and the index directories are as we left
    # them: a binding file added or removed by anyone else, or an index shard
    # lost, makes the next change compare the kernel with every binding.
    @property
    def _marker_path(self) -> str:
        return os.path.join(self.root, "kernel.json")

    def _directories(self) -> list:
        return [_identity(self.dirs["bindings"]), _identity(self.index_dir)]

    def marker(self) -> Optional[list]:
        try:
            with open(self._marker_path, encoding="utf-8") as handle:
                found = json.load(handle)
        except (OSError, ValueError):
            return None
        if not isinstance(found, dict) or found.get("directories") != self._directories():
            return None
        return found.get("kernel")

    def set_marker(self, marker: Optional[Sequence[object]]) -> None:
        if marker is None:
            _remove(self._marker_path)
            return
        tmp = os.path.join(self.root, f".tmp-kernel-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"kernel": list(marker), "directories": self._directories()}, handle)
        os.replace(tmp, self._marker_path)
