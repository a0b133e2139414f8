# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's bytecode, kept on the managed host between module runs.

A module arrives as a zip (Ansible's AnsiballZ payload) and Python compiles
every source it imports from a zip on every run, since it cannot write
bytecode there: for the engine about 35 ms of CPU on every task of every
host. Imported before the engine, this keeps the compiled code of the engine's
files in a directory of the user's own (``~/.cache/vmguard.nwfilter``, mode
0700), named by a hash of the source, so a run compiles only files that
changed. Files imported from a directory (tests, the learner service) keep
Python's own caching: the hook only serves zip imports.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.abc
import importlib.machinery
import marshal
import os
import stat
import sys
import tempfile
import zipimport
from types import CodeType, ModuleType
from typing import Optional, Sequence

PACKAGE = __name__.rsplit(".", 1)[0] + ".engine"
DIRECTORY = os.path.join("~", ".cache", "vmguard.nwfilter", f"bytecode-{sys.implementation.cache_tag}")


@functools.lru_cache(maxsize=None)
def _directory() -> Optional[str]:
    """The cache directory, if it is ours alone (anyone else who could write
    there could make us run their code); None when it cannot be used."""
    path = os.path.expanduser(DIRECTORY)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return None
    return path


def _code(source: bytes, filename: str) -> CodeType:
    directory = _directory()
    key = hashlib.sha256(filename.encode() + b"\0" + source).hexdigest()
    cached = os.path.join(directory, key) if directory else None
    if cached:
        try:
            with open(cached, "rb") as handle:
                return marshal.load(handle)
        except (OSError, EOFError, ValueError, TypeError):
            pass  # not there yet (or damaged): compile it
    code = compile(source, filename, "exec", dont_inherit=True)
    if cached and directory:
        try:
            handle, temporary = tempfile.mkstemp(dir=directory)
        except OSError:
            return code  # a cache that cannot be written costs only the compile
        try:
            with os.fdopen(handle, "wb") as out:
                marshal.dump(code, out)
            os.replace(temporary, cached)  # whole or not at all, for a run at the same time
        except OSError:
            os.unlink(temporary)
    return code


class _Loader(importlib.abc.Loader):
    """Runs one engine file read from the payload zip, compiled through the cache."""

    def __init__(self, source: bytes, inside: str) -> None:
        self.source = source
        self.inside = inside  # its path inside the zip: the zip's own path differs on every run

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        exec(_code(self.source, self.inside), module.__dict__)  # pylint: disable=exec-used


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the engine's files in the payload zip itself: zipimport would
    compile each one twice (once to name its file, once to run it)."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]],
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if not fullname.startswith(PACKAGE + ".") or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path:
            if os.path.isdir(entry):
                return None  # imported from files: Python caches their bytecode itself
            try:
                zipped = zipimport.zipimporter(entry)
                filename = os.path.join(entry, leaf + ".py")
                source = zipped.get_data(filename)
            except (OSError, zipimport.ZipImportError):
                continue
            spec = importlib.machinery.ModuleSpec(fullname, _Loader(source, os.path.relpath(filename, zipped.archive)),
                                                  origin=filename)
            spec.has_location = True
            return spec
        return None


def _install() -> None:
    """Just before Python's own path finder, which would find the engine's
    files first (the front of the list is left alone, as ansible-test asks)."""
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return
    place = next((i for i, finder in enumerate(sys.meta_path) if finder is importlib.machinery.PathFinder),
                 len(sys.meta_path))
    sys.meta_path.insert(max(place, 1), _Finder())


_install()
