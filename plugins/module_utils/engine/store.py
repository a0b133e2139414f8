# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The on-host store: filters and bindings as libvirt XML under one root
directory, plus the port ids and learned addresses the host keeps.

Every file is replaced atomically (write, fsync, rename, fsync the directory),
and one lock serialises whole read-change-apply-write cycles, so concurrent
Ansible runs and the learner never lose each other's updates.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar

from .errors import NwfilterError
from .model import Binding, Filter
from .network_forms import network_from_xml, network_to_xml
from .network_model import Network
from .xml_form import binding_from_xml, binding_to_xml, filter_from_xml, filter_to_xml

DEFAULT_ROOT = "/etc/vmguard"
# The store's format, in the file "version": the modules run the controller's
# copy of this code and the learner service the copy the role deployed, so each
# refuses a store newer than it reads. A store without the file is version 1
# (the format before the file existed); a format change adds its conversion in
# Store.check_version.
STORE_VERSION = 1
T = TypeVar("T")
# parsed objects by file text: a change reads every file, parsing only what changed
_PARSED: Dict[str, object] = {}


def _parse_cached(text: str, parse) -> object:
    found = _PARSED.get(text)
    if found is None:
        if len(_PARSED) > 100000:
            _PARSED.clear()
        found = _PARSED[text] = parse(text)
    return found


def fsync_dir(directory: str) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_many(files: Sequence[Tuple[str, str]]) -> None:
    """Replace each ``(path, text)``: never a half-written file. Every file is
    written first and then fsynced: the first fsync commits the journal for
    all of them, where fsyncing as each is written would commit once per file
    (seconds for a thousand bindings). Then the renames, then each directory's fsync."""
    staged: List[Tuple[str, str]] = []
    try:
        for path, text in files:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            staged.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)
        for tmp, _path in staged:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _path in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for directory in sorted({os.path.dirname(path) for _tmp, path in staged}):
        fsync_dir(directory)


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
    if len(_TEXTS) > 100000:
        _TEXTS.clear()
    _TEXTS[path] = (identity, text)
    return text


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Store:
    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root
        self.dirs = {name: os.path.join(root, name) for name in ("filters", "bindings", "learned", "networks")}

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
                for path in self.dirs.values():
                    os.makedirs(path, mode=0o755, exist_ok=True)
            handle = open(lock, "a" if create else "r", encoding="utf-8")  # pylint: disable=consider-using-with
        except OSError as exc:
            raise NwfilterError(f"cannot use the store {self.root}: {exc.strerror}") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self.check_version(stamp=create)
            yield

    def check_version(self, stamp: bool = False) -> None:
        """Refuse a store newer than this code reads; with ``stamp`` (under the
        lock, about to write) bring an older one to this version: today only
        the version 1 store without the file, which gets it."""
        path = os.path.join(self.root, "version")
        text = _text_of(path)
        if text is not None and not re.fullmatch(r"[0-9]{1,6}\n?", text):
            raise NwfilterError(f"unreadable format version {text.strip()[:20]!r}", f"store {self.root}")
        version = int(text) if text is not None else 1
        if version > STORE_VERSION:
            raise NwfilterError(f"format version {version} is newer than this copy of vmguard.nwfilter reads "
                                f"({STORE_VERSION}): upgrade the collection and the learner role first "
                                "(docs/upgrading.md)", f"store {self.root}")
        if stamp and text is None:
            atomic_write(path, f"{STORE_VERSION}\n")

    def _read_all(self, kind: str) -> List[tuple]:
        self.check_version()
        directory = self.dirs[kind]
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            text = _text_of(entry.path, entry)
            if text is not None:
                found.append((entry.path, text))
        return found

    def _parsed(self, kind: str, parse: Callable[[str], T]) -> Iterator[T]:
        for path, text in self._read_all(kind):
            try:
                yield _parse_cached(text, parse)
            except NwfilterError as exc:
                raise exc.within(f"stored file {path}") from None

    def filters(self) -> Dict[str, Filter]:
        return {flt.name: flt for flt in self._parsed("filters", filter_from_xml)}

    def bindings(self) -> Dict[str, Binding]:
        return {binding.portdev: binding for binding in self._parsed("bindings", binding_from_xml)}

    def networks(self) -> Dict[str, Network]:
        return {network.name: network for network in self._parsed("networks", network_from_xml)}

    def save_networks(self, before: Dict[str, Network], after: Dict[str, Network]) -> None:
        """Write the networks that change and remove those that go."""
        directory = self.dirs["networks"]
        atomic_write_many([(os.path.join(directory, f"{name}.xml"), network_to_xml(network))
                           for name, network in sorted(after.items()) if before.get(name) != network])
        gone = set(before) - set(after)
        for name in gone:
            _remove(os.path.join(directory, f"{name}.xml"))
        if gone:
            fsync_dir(directory)

    def learned(self) -> Dict[str, Dict[str, List[str]]]:
        return {os.path.basename(path)[:-5]: json.loads(text) for path, text in self._read_all("learned")}

    def ports(self) -> Dict[str, dict]:
        """Per port: its id and what of it was installed (``chains``, ``elements``)."""
        self.check_version()
        text = _text_of(os.path.join(self.root, "ports.json"))
        return json.loads(text) if text else {}

    def save(self, old: tuple, new: tuple) -> None:
        """Go from the stored state ``old`` to ``new`` (filters, bindings,
        learned, ports), writing only the files that change; the port
        records last, once the files they describe are in place."""
        renders = ((lambda n, f: (f"{n}.xml", filter_to_xml(f))),
                   (lambda p, b: (f"{p}.xml", binding_to_xml(b))),
                   (lambda p, v: (f"{p}.json", json.dumps(v, sort_keys=True) + "\n")))
        writes: List[Tuple[str, str]] = []
        removed: Set[str] = set()
        for kind, render, before, after in zip(("filters", "bindings", "learned"), renders, old, new):
            directory = self.dirs[kind]
            for key, value in after.items():
                if key not in before or before[key] != value:
                    name, text = render(key, value)
                    writes.append((os.path.join(directory, name), text))
            for key in set(before) - set(after):
                _remove(os.path.join(directory, render(key, before[key])[0]))
                removed.add(directory)
        if old[3] != new[3]:
            writes.append((os.path.join(self.root, "ports.json"), json.dumps(new[3], sort_keys=True) + "\n"))
        atomic_write_many(writes)  # renamed in order: ports.json last
        for directory in sorted(removed - {os.path.dirname(path) for path, _text in writes}):
            fsync_dir(directory)
