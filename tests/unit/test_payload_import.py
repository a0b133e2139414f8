"""A module imports the engine from the zip Ansible sends (an AnsiballZ
payload) compiling each file once (payload_import), and the finder stays
out of imports from files."""

import json
import os
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
print(json.dumps({{"compiled": ours, "finders": [repr(f) for f in sys.meta_path],
                  "host": sys.modules["ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.host"].__file__}}))
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


def _probe(path):
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_the_engine_is_compiled_once_per_file_from_a_payload(tmp_path):
    payload = tmp_path / "payload.zip"
    _payload(payload)
    found = _probe(str(payload))
    engine = {name: count for name, count in found["compiled"].items() if "/engine/" in name}
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
