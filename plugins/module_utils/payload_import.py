# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Import the collection's module_utils from an AnsiballZ payload compiling
each file at most once, and once per version rather than per run where the
host has a cache directory of ours.

A module runs from the zip that Ansible sends with every task, where Python
caches no bytecode, and zipimport compiles a module's source twice: once to
name its file while it builds the module's spec, and again to run it
(CPython gh-141276, open for 3.13 to 3.15). This finder names the file
itself and compiles it once, and keeps the code in ``/var/cache/vmguard/bytecode``
(root; other users ``$XDG_CACHE_HOME/vmguard/bytecode``, or wherever
``VMGUARD_BYTECODE_CACHE`` says, "" for nowhere), a file per module checked
against a digest of the source, so that later runs load it instead of
compiling it: about 40 ms of every task. As Python's own bytecode cache it
is read but not written under PYTHONDONTWRITEBYTECODE. Outside a zip (tests,
the learner, the controller) the finder is not installed."""

from __future__ import annotations

import _imp
import contextlib
import functools
import hashlib
import marshal
import os
import stat
import sys
import zipimport
from importlib.machinery import ModuleSpec
from importlib.util import MAGIC_NUMBER
from types import CodeType, ModuleType
from typing import Optional, Sequence

PACKAGE = __name__.rpartition(".")[0] + "."
DIGEST = hashlib.sha256().digest_size


class ZipSpecFinder:
    """A meta path finder for the collection's module_utils inside a zip."""

    @staticmethod
    def find_spec(name: str, path: Optional[Sequence[str]] = None, target: object = None) -> Optional[ModuleSpec]:
        if not name.startswith(PACKAGE) or not path:
            return None
        tail = name.rpartition(".")[2]
        for entry in path:
            importer = _zip_importer(entry)
            if importer is None:
                continue
            try:
                package = importer.is_package(name)
            except zipimport.ZipImportError:
                continue
            location = f"{entry}/{tail}"
            origin = f"{location}/__init__.py" if package else f"{location}.py"
            spec = ModuleSpec(name, CachedLoader(importer, origin), origin=origin, is_package=package)
            spec.has_location = True  # sets __file__, as zipimport's own spec does
            if package:
                spec.submodule_search_locations = [location]
            return spec
        return None


class CachedLoader:
    """Runs a file of the zip with its code from the cache, or compiled and cached."""

    def __init__(self, importer: zipimport.zipimporter, origin: str) -> None:
        self.importer = importer
        self.origin = origin

    @staticmethod
    def create_module(spec: ModuleSpec) -> Optional[ModuleType]:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        exec(self.get_code(module.__name__), module.__dict__)  # pylint: disable=exec-used

    def get_code(self, name: str) -> CodeType:
        source = self.importer.get_data(self.origin)
        return _cached_code(name, source, self.origin)

    def get_source(self, name: str) -> Optional[str]:  # for tracebacks (linecache)
        return self.importer.get_source(name)

    def is_package(self, name: str) -> bool:
        return self.importer.is_package(name)


def _cached_code(name: str, source: bytes, origin: str) -> CodeType:
    """The code of ``source``: loaded when the cache holds it for this very
    source and Python, else compiled and written there (whole or not at all:
    other runs may read it at the same time)."""
    directory = _cache_directory()
    path = os.path.join(directory, f"{name}.{sys.implementation.cache_tag}") if directory else None
    header = MAGIC_NUMBER + hashlib.sha256(source).digest()
    if path:
        try:
            with open(path, "rb") as cached:
                data = cached.read()
        except OSError:
            data = b""  # not cached yet
        blob = data[len(header) + DIGEST:]
        if data.startswith(header) and data[len(header):len(header) + DIGEST] == hashlib.sha256(blob).digest():
            code = marshal.loads(blob)
            # the file names of this run's zip, for tracebacks, as Python does for a .pyc
            _imp._fix_co_filename(code, origin)  # pylint: disable=protected-access
            return code
    code = compile(source, origin, "exec", dont_inherit=True)
    if path and not sys.dont_write_bytecode:
        blob = marshal.dumps(code)
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
            with os.fdopen(os.open(temporary, flags, 0o600), "wb") as out:
                out.write(header + hashlib.sha256(blob).digest() + blob)
            os.replace(temporary, path)
        except OSError:  # a cache that cannot be written costs only the compile
            with contextlib.suppress(OSError):
                os.unlink(temporary)  # a disk that filled up, say: leave no part behind
    return code


@functools.lru_cache(maxsize=None)
def _cache_directory() -> Optional[str]:
    """Our cache directory, made if need be; None when it is turned off, is
    not an absolute path, cannot be made, or anyone but us could write there
    (they could make a module run their code)."""
    path = os.environ.get("VMGUARD_BYTECODE_CACHE")
    if path is None:
        base = "/var/cache" if os.geteuid() == 0 else os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        path = os.path.join(base, "vmguard", "bytecode")
    if not os.path.isabs(path):  # "" turns it off; a relative path would depend on the task's directory
        return None
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return None
    return path


def _zip_importer(entry: str) -> Optional[zipimport.zipimporter]:
    importer = sys.path_importer_cache.get(entry)
    if importer is None:
        try:
            importer = sys.path_importer_cache[entry] = zipimport.zipimporter(entry)
        except zipimport.ZipImportError:
            return None
    return importer if isinstance(importer, zipimport.zipimporter) else None


def install() -> None:
    if isinstance(__loader__, zipimport.zipimporter) and ZipSpecFinder not in sys.meta_path:
        sys.meta_path.insert(0, ZipSpecFinder)
