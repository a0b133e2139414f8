"""A module imports the engine from the zip Ansible sends (an AnsiballZ
payload) compiling each file at most once, and not at all when the bytecode
cache holds it (payload_import); the finder stays out of imports from files."""

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile

import ansible

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLLECTION = os.path.join("ansible_collections", "vmguard", "nwfilter")
MODULE = "ansible_collections.vmguard.nwfilter.plugins.modules.nwfilter_binding"
# counts compile() calls by file (the audit event Python raises for each), then imports the module
PROBE = f"""
import collections, json, sys
compiled = collections.Counter()
sys.addaudithook(lambda event, args: event == "compile" and compiled.update([args[1]]))
import {MODULE}
ours = {{name: count for name, count in compiled.items() if "vmguard" in str(name)}}
host = sys.modules["ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.host"]
print(json.dumps({{"compiled": ours, "finders": [repr(f) for f in sys.meta_path], "host": host.__file__,
                  "code_file": host.Host.set_bindings.__code__.co_filename}}))
"""


def _payload(path):
    """The collection's module_utils and module and ansible's module_utils, zipped as AnsiballZ zips them."""
    ansible_root = os.path.dirname(os.path.dirname(ansible.__file__))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as payload:
        packages = ["ansible_collections", "ansible_collections/vmguard", COLLECTION, f"{COLLECTION}/plugins"]
        for part in ("plugins/module_utils", "plugins/modules"):
            for folder, _dirs, files in os.walk(os.path.join(REPO, part)):
                for name in files:
                    if name.endswith(".py"):
                        full = os.path.join(folder, name)
                        payload.write(full, os.path.join(COLLECTION, os.path.relpath(full, REPO)))
            if not os.path.exists(os.path.join(REPO, part, "__init__.py")):
                packages.append(f"{COLLECTION}/{part}")
        for package in packages:  # the empty markers AnsiballZ adds
            payload.writestr(f"{package}/__init__.py", "")
        for folder, _dirs, files in os.walk(os.path.join(ansible_root, "ansible", "module_utils")):
            for name in files:
                if name.endswith(".py"):
                    full = os.path.join(folder, name)
                    payload.write(full, os.path.relpath(full, ansible_root))
        payload.writestr("ansible/__init__.py", "")


def _probe(path, cache="", cwd=None, **env):
    """Import the module from ``path`` in a fresh interpreter, with ``cache``
    as the bytecode cache ("": none); what it compiled and where its code says it is."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    environment.update(env, PYTHONPATH=path, VMGUARD_BYTECODE_CACHE=cache)
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=False, env=environment,
                          cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _engine(found):
    return {name: count for name, count in found["compiled"].items() if "/engine/" in name}


def test_the_engine_is_compiled_once_per_file_from_a_payload(tmp_path):
    payload = tmp_path / "payload.zip"
    _payload(payload)
    found = _probe(str(payload))
    engine = _engine(found)
    assert len(engine) > 20
    assert set(engine.values()) == {1}, engine
    assert any("ZipSpecFinder" in finder for finder in found["finders"])
    # __file__ names the file inside the zip, as zipimport's own spec does
    assert found["host"] == os.path.join(str(payload), COLLECTION, "plugins/module_utils/engine/host.py")


def test_imports_from_files_are_left_to_python(tmp_path):
    os.makedirs(tmp_path / "ansible_collections" / "vmguard")
    os.symlink(REPO, tmp_path / COLLECTION)
    found = _probe(f"{tmp_path}{os.pathsep}{os.path.dirname(os.path.dirname(ansible.__file__))}")
    assert not any("ZipSpecFinder" in finder for finder in found["finders"])
    assert found["host"] == os.path.join(str(tmp_path), COLLECTION, "plugins/module_utils/engine/host.py")


def test_a_later_run_loads_the_engine_from_the_cache_instead_of_compiling(tmp_path):
    cache = tmp_path / "cache"
    first = tmp_path / "first.zip"
    _payload(first)
    assert len(_engine(_probe(str(first), str(cache)))) > 20
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert len(os.listdir(cache)) > 20
    # each task's payload is a new zip elsewhere: the code loaded from the cache names this run's files
    later = tmp_path / "later.zip"
    shutil.copy(first, later)
    found = _probe(str(later), str(cache))
    assert _engine(found) == {}
    assert found["host"] == found["code_file"] == os.path.join(str(later), COLLECTION,
                                                               "plugins/module_utils/engine/host.py")


def test_cached_code_of_other_source_or_damaged_is_compiled_again(tmp_path):
    cache = tmp_path / "cache"
    payload = tmp_path / "payload.zip"
    _payload(payload)
    _probe(str(payload), str(cache))
    prefix = "ansible_collections.vmguard.nwfilter.plugins.module_utils.engine."
    store, model, host = (next(cache.glob(f"{prefix}{name}.*")) for name in ("store", "model", "host"))
    shutil.copy(store, model)  # another file's code under this name
    damaged = bytearray(host.read_bytes())
    damaged[-10] ^= 0xFF
    host.write_bytes(bytes(damaged))
    engine = _engine(_probe(str(payload), str(cache)))
    assert sorted(os.path.basename(name) for name in engine) == ["host.py", "model.py"]
    assert _engine(_probe(str(payload), str(cache))) == {}  # both written again


def test_a_cache_directory_others_could_write_to_is_not_used(tmp_path):
    payload = tmp_path / "payload.zip"
    _payload(payload)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o770)
    os.chmod(shared, 0o770)
    os.symlink(shared, tmp_path / "link")
    for cache in (shared, tmp_path / "link"):
        for _run in range(2):
            assert len(_engine(_probe(str(payload), str(cache)))) > 20
    assert os.listdir(shared) == []
    # nor one named relative to wherever the task runs
    assert len(_engine(_probe(str(payload), "cache", cwd=shared))) > 20
    assert os.listdir(shared) == []


def test_no_bytecode_is_written_when_python_is_told_not_to(tmp_path):
    payload = tmp_path / "payload.zip"
    _payload(payload)
    cache = tmp_path / "cache"
    for _run in range(2):
        assert len(_engine(_probe(str(payload), str(cache), PYTHONDONTWRITEBYTECODE="1"))) > 20
    assert os.listdir(cache) == []


def test_a_cache_file_that_cannot_be_written_leaves_nothing_behind(tmp_path):
    payload = tmp_path / "payload.zip"
    _payload(payload)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    blocked = cache / f"ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.host.{sys.implementation.cache_tag}"
    blocked.mkdir()  # the file's place is taken: its replacement fails
    assert len(_engine(_probe(str(payload), str(cache)))) > 20
    assert _engine(_probe(str(payload), str(cache))) == {os.path.join(str(payload), COLLECTION,
                                                                      "plugins/module_utils/engine/host.py"): 1}
    assert not [name for name in os.listdir(cache) if name.endswith(".tmp")]
