"""Where a module task's time goes through ansible-playbook: task times
(start to result, as profile_tasks shows them) of ping and of
nwfilter_binding tasks in one play, and the module's own process on the
target (interpreter, imports, engine) measured apart, so the rest is the
controller's (payload build, transfer, result handling). Modules run as on
a managed host, with the engine's bytecode cache (a directory per version
under the bench's own temporary one) even when the caller's environment has
PYTHONDONTWRITEBYTECODE.

    python -m bench.ansible_overhead [--rounds N] [--plays N] [--bindings N] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from engine.xml_form import filter_from_xml  # noqa: E402  pylint: disable=wrong-import-position

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.dirname(sys.executable)
FILTER = "<filter name='bench-vm'><filterref filter='clean-traffic'/></filter>"
# Ansible's own cost of an argument: a module that takes nwfilter_binding's bulk options and does nothing,
# added to the bench's copy of the collection only
NOOP_MODULE = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
module = AnsibleModule(argument_spec=dict(bindings=dict(type="list", elements="dict"),
                                          exclusive=dict(type="bool", default=False), root=dict(type="path")),
                       supports_check_mode=True)
module.exit_json(changed=False)
"""


def _bindings(count: int, prefix: str) -> List[dict]:
    return [{"portdev": f"{prefix}{i}", "mac": f"52:54:00:20:{i >> 8:02x}:{i & 0xff:02x}", "filter": "bench-vm",
             "parameters": {"IP": f"10.{i >> 8}.{i & 0xff}.2"}} for i in range(count)]


def _store(root: str, netns: str, bindings: List[dict]) -> None:
    host = Host(root, netns=netns)
    host.define_filter(filter_from_xml(FILTER))
    host.set_bindings([Binding(b["portdev"], b["mac"], FilterRef(b["filter"], {"IP": (b["parameters"]["IP"],)}))
                       for b in bindings])


def _collection(base: str, source: str = REPO) -> str:
    target = os.path.join(base, "ansible_collections", "vmguard", "nwfilter")
    for part in ("meta", "plugins"):
        shutil.copytree(os.path.join(source, part), os.path.join(target, part),
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(source, "galaxy.yml"), target)
    with open(os.path.join(target, "plugins", "modules", "bench_noop.py"), "w", encoding="utf-8") as out:
        out.write(NOOP_MODULE)
    return base


def _play(work: str, netns: str, tasks: List[dict], keep: bool = False,
          collections: str = "collections") -> Tuple[List[dict], float]:
    """Run the tasks on localhost inside ``netns``: their times, in order, and
    the CPU time (user + system) of the whole run, controller and modules:
    on this shared 2-core machine wall times swing with the load, CPU time much less."""
    times = os.path.join(work, "times.jsonl")
    if os.path.exists(times):
        os.remove(times)
    # not beside the collections: Ansible prefers a playbook's adjacent collections/ to ANSIBLE_COLLECTIONS_PATH,
    # which made every version run this tree's code
    book = os.path.join(work, "plays", "play.yml")
    os.makedirs(os.path.dirname(book), exist_ok=True)
    with open(book, "w", encoding="utf-8") as out:
        json.dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}], out)
    env = _target_env(work, collections)
    env.update(ANSIBLE_COLLECTIONS_PATH=os.path.join(work, collections),
               ANSIBLE_CALLBACK_PLUGINS=os.path.join(REPO, "bench", "callback_plugins"),
               ANSIBLE_CALLBACKS_ENABLED="task_times", VMGUARD_TASK_TIMES=times,
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_HOME=os.path.join(work, "home"),
               ANSIBLE_REMOTE_TMP=os.path.join(work, "remote"), ANSIBLE_KEEP_REMOTE_FILES="1" if keep else "0")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(["ip", "netns", "exec", netns, os.path.join(BIN, "ansible-playbook"), "-i", "localhost,",
                           "-c", "local", book], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if not os.path.exists(times):
        return [], cpu
    with open(times, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines], cpu


def _target_env(work: str, collections: str) -> Dict[str, str]:
    """The environment as on a managed host: the engine's bytecode cached
    between runs (payload_import), in a cache of each version's own."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["VMGUARD_BYTECODE_CACHE"] = os.path.join(work, "bytecode", os.path.basename(os.path.normpath(collections)))
    return env


def _kept_payload(work: str, netns: str, task: dict, index: int) -> str:
    """The AnsiballZ payload of ``task``, run once in a play and kept (copied out of the remote directory)."""
    _play(work, netns, [task], keep=True)
    payload = sorted(glob.glob(os.path.join(work, "remote", "ansible-tmp-*", "AnsiballZ_*.py")),
                     key=os.path.getmtime)[-1]
    kept = os.path.join(work, "payloads", f"{index}.py")
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    shutil.copy(payload, kept)
    shutil.rmtree(os.path.join(work, "remote"))
    return kept


def _module_process(work: str, netns: str, payload: str) -> Tuple[float, float]:
    """Wall and CPU time of a kept AnsiballZ payload run alone on the target:
    interpreter start, unzip, imports and the engine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, payload], capture_output=True, check=True,
                   env=_target_env(work, "collections"))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _imports(work: str, module: str, path: str) -> float:
    """Median time of a fresh interpreter that imports ``module`` from ``path`` and exits
    (from the zip: the engine's bytecode cached, after the first run)."""
    samples = []
    for _run in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True,
                       env=dict(_target_env(work, "imports"), PYTHONPATH=path))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _zipped(work: str) -> str:
    """The collection and ansible's module_utils in one zip, as an AnsiballZ
    payload carries them: imported from a zip, every source is compiled again
    on every run (no bytecode is cached)."""
    import ansible  # pylint: disable=import-outside-toplevel
    path = os.path.join(work, "payload.zip")
    with zipfile.ZipFile(path, "w") as payload:
        written, packages = set(), set()
        for base in (os.path.join(work, "collections"), os.path.dirname(os.path.dirname(ansible.__file__))):
            for name in glob.glob(os.path.join(base, "ansible*", "**", "*.py"), recursive=True):
                inside = os.path.relpath(name, base)
                if "module_utils" in inside or "ansible_collections" in inside:
                    payload.write(name, inside)
                    written.add(inside)
                    parts = inside.split(os.sep)[:-1]
                    packages.update(os.sep.join(parts[:i]) for i in range(1, len(parts) + 1))
        for package in packages:  # empty markers where the payload has them (ansible's own would import more)
            if os.path.join(package, "__init__.py") not in written:
                payload.writestr(os.path.join(package, "__init__.py"), "")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bindings", type=int, default=1000)
    parser.add_argument("--plays", type=int, default=3, help="plays per kind and version")
    parser.add_argument("--baseline", help="a directory with another version's plugins/, meta/ and galaxy.yml "
                        "(for example from git archive), measured interleaved with this tree")
    args = parser.parse_args()
    from lab.netns import Lab  # pylint: disable=import-outside-toplevel
    print(f"# Ansible overhead, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    # a namespace per store: two stores in one would each find the other's rules in our tables and repair them
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as work:
        spaces = {name: stack.enter_context(Lab(f"ao{name}")).host for name in ("one", "big", "fleet")}
        _collection(os.path.join(work, "collections"))
        many = _bindings(args.bindings, "bm")
        roots = {name: os.path.join(work, name) for name in spaces}
        _store(roots["one"], spaces["one"], [])
        _store(roots["big"], spaces["big"], _bindings(args.bindings, "bb"))
        _store(roots["fleet"], spaces["fleet"], many)
        single = {"portdev": "vone", "mac": "52:54:00:30:00:01", "filter": "bench-vm"}
        kinds = {  # each task, and the namespace of its store
            "ping": (lambda i: {"ansible.builtin.ping": {}}, spaces["one"]),
            "bind one, changed (store of 1)": (lambda i: {"vmguard.nwfilter.nwfilter_binding": dict(
                single, parameters={"IP": f"192.0.2.{10 + i}"}, root=roots["one"])}, spaces["one"]),
            f"bind one, changed (store of {args.bindings})": (lambda i: {"vmguard.nwfilter.nwfilter_binding": dict(
                single, parameters={"IP": f"192.0.2.{10 + i}"}, root=roots["big"])}, spaces["big"]),
            f"bindings: {args.bindings}, exclusive, unchanged": (lambda i: {"vmguard.nwfilter.nwfilter_binding": {
                "bindings": many, "exclusive": True, "root": roots["fleet"]}}, spaces["fleet"]),
            f"a module that does nothing, given the same {args.bindings} bindings": (lambda i: {
                "vmguard.nwfilter.bench_noop": {"bindings": many, "exclusive": True, "root": roots["fleet"]}},
                spaces["fleet"]),
        }
        versions = {"this tree": "collections"}
        if args.baseline:
            versions["baseline"] = _collection(os.path.join(work, "baseline"), args.baseline)
        empty = statistics.median(_play(work, spaces["one"], [])[1] for _run in range(3))
        # A play's first task of a module also builds its payload (once per module and run, for all hosts),
        # and every third task or so of a big argument meets the controller's garbage collection: the medians
        # of all tasks, of the first tasks and of the later ones are shown apart. Kinds and versions take turns
        # in every round: this VM's speed drifts over minutes, which would otherwise favour the kind run first.
        walls: Dict[Tuple[str, str], List[List[float]]] = {}
        cpus: Dict[Tuple[str, str], List[float]] = {}
        for _play_round in range(args.plays):
            for name, (task, netns) in kinds.items():
                for version, path in versions.items():
                    times, cpu = _play(work, netns, [task(i) for i in range(args.rounds)], collections=path)
                    walls.setdefault((name, version), []).append([t["seconds"] for t in times])
                    cpus.setdefault((name, version), []).append((cpu - empty) / args.rounds)
        print(f"\n| {args.rounds} tasks of one kind in a play, {args.plays} plays per kind and version, interleaved "
              "| version | wall per task, median | first tasks | later tasks | later tasks above ping | CPU per task "
              "| CPU above ping |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in kinds:
            for version in versions:
                plays = walls[(name, version)]
                per_task = statistics.median(cpus[(name, version)])
                later = statistics.median(seconds for play in plays for seconds in play[1:])
                ping_later = statistics.median(seconds for play in walls[("ping", version)] for seconds in play[1:])
                print(f"| {name} | {version} | {statistics.median(s for play in plays for s in play):.3f} s "
                      f"| {statistics.median(play[0] for play in plays):.3f} s | {later:.3f} s "
                      f"| {later - ping_later:+.3f} s | {per_task:.3f} s "
                      f"| {per_task - statistics.median(cpus[('ping', version)]):+.3f} s |")
        # the controller's garbage collection walks the whole play (with a 1,000-item argument, every third
        # task or so): by position in the play, the slow tasks show where it falls
        print("\n| median wall per task by position in the play | version | tasks 1, 2, 3... |\n| --- | --- | --- |")
        for (name, version), plays in walls.items():
            positions = [statistics.median(play[i] for play in plays) for i in range(args.rounds)]
            print(f"| {name} | {version} | {' '.join(f'{seconds:.3f}' for seconds in positions)} |")
        print("\n| the module's process on the target, run alone (reruns: unchanged), interleaved | wall | CPU |"
              "\n| --- | --- | --- |")
        payloads = {name: (_kept_payload(work, netns, task(99), index), netns)
                    for index, (name, (task, netns)) in enumerate(kinds.items())}
        runs: Dict[str, List[Tuple[float, float]]] = {name: [] for name in kinds}
        for _run in range(7):
            for name, (payload, netns) in payloads.items():
                runs[name].append(_module_process(work, netns, payload))
        for name, samples in runs.items():
            print(f"| {name}: AnsiballZ payload, fresh interpreter | {statistics.median(w for w, _c in samples):.3f} s "
                  f"| {statistics.median(c for _w, c in samples):.3f} s |")
        module = "ansible_collections.vmguard.nwfilter.plugins.modules.nwfilter_binding"
        payload, plain = _zipped(work), os.path.join(work, "collections")
        print(f"| python -c pass | {_imports(work, 'sys', plain):.3f} s |")
        for name, path in (("from the zip", payload), ("from files, bytecode cached", plain)):
            print(f"| import ansible.module_utils.basic, {name} | {_imports(work, 'ansible.module_utils.basic', path):.3f} s |")
            print(f"| import nwfilter_binding (basic + engine), {name} | {_imports(work, module, path):.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
