# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Import the collection's module_utils from an AnsiballZ payload compiling
each file once.

A module runs from the zip that Ansible sends with every task, where Python
caches no bytecode, and zipimport compiles a module's source twice: once to
name its file while it builds the module's spec, and again to run it
(CPython gh-141276, open for 3.13 to 3.15). For the engine that was about
0.05 s of every task. This finder names the file itself and leaves loading
to zipimport; outside a zip (tests, the learner, the controller) it is not
installed."""

from __future__ import annotations

import sys
import zipimport
from importlib.machinery import ModuleSpec
from typing import Optional, Sequence

PACKAGE = __name__.rpartition(".")[0] + "."


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
            spec = ModuleSpec(name, importer, origin=f"{location}/__init__.py" if package else f"{location}.py",
                              is_package=package)
            spec.has_location = True  # sets __file__, as zipimport's own spec does
            if package:
                spec.submodule_search_locations = [location]
            return spec
        return None


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
