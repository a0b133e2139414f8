"""The engine's bytecode cache for module runs: the engine imported from a
zip, as a module's payload carries it, is compiled once and then read from
the cache; a changed file gets its own entry; a cache directory others could
write to is not used."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
PACKAGE = "ansible_collections/vmguard/nwfilter/plugins/module_utils"
PROBE = """
import sys
from ansible_collections.vmguard.nwfilter.plugins.module_utils import common
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine import dict_form, host, model
engine = [name for name in sys.modules if name.startswith(host.__package__ + ".")]
print(type(host.__spec__.loader).__name__, host.__file__.startswith(sys.argv[1]), model.Binding.__name__, len(engine))
"""


def payload(path, extra=""):
    """Our module_utils in a zip, with the package markers a payload has."""
    with zipfile.ZipFile(path, "w") as out:
        base = os.path.join(ROOT, "plugins", "module_utils")
        for folder, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(".py"):
                    source = os.path.join(folder, name)
                    text = open(source, encoding="utf-8").read()
                    if name == "errors.py":
                        text += extra
                    out.writestr(os.path.join(PACKAGE, os.path.relpath(source, base)), text)
        parts = PACKAGE.split("/")
        for depth in range(1, len(parts) + 1):
            out.writestr("/".join(parts[:depth]) + "/__init__.py", "")
    return str(path)


def run(zip_path, home):
    done = subprocess.run([sys.executable, "-c", PROBE, zip_path], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=zip_path, HOME=str(home)))
    return done.stdout.split()


def entries(home):
    found = []
    for folder, _dirs, files in os.walk(home / ".cache" / "vmguard.nwfilter"):
        found += [os.path.join(folder, name) for name in files]
    return sorted(found)


def test_compiled_once_then_read_from_the_cache(tmp_path):
    zipped = payload(tmp_path / "payload.zip")
    loader, inside, name, imported = run(zipped, tmp_path)
    assert (loader, inside, name) == ("_Loader", "True", "Binding")
    first = entries(tmp_path)
    assert len(first) == int(imported)  # one entry per engine file imported
    mtimes = [os.stat(path).st_mtime_ns for path in first]
    assert run(zipped, tmp_path)[:3] == ["_Loader", "True", "Binding"]
    assert entries(tmp_path) == first and [os.stat(path).st_mtime_ns for path in first] == mtimes
    changed = payload(tmp_path / "changed.zip", extra="\nCHANGED = True\n")
    assert run(changed, tmp_path)[:3] == ["_Loader", "True", "Binding"]
    assert len(entries(tmp_path)) == len(first) + 1  # only errors.py differs


def test_a_directory_others_can_write_is_not_used(tmp_path):
    cache = tmp_path / ".cache" / "vmguard.nwfilter" / f"bytecode-{sys.implementation.cache_tag}"
    cache.mkdir(parents=True)
    cache.chmod(0o777)
    assert run(payload(tmp_path / "payload.zip"), tmp_path)[:3] == ["_Loader", "True", "Binding"]
    assert not entries(tmp_path)
