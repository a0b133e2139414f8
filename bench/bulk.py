"""Where a bulk bind of N ports goes: one set_bindings call of N bench-vm
bindings in a fresh store, split into the engine's own work (resolve,
compile, the script), nft (libnftables, one transaction) and the store
(files written and fsynced), as wall and CPU time; then a redefine of the
filter they all use. Each step runs in a fresh process, as a module run
does: the compiler's caches start empty (a second bulk of the same ports
in one process reuses them).

    python -m bench.bulk [--ports N] [--rounds R]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from engine.xml_form import filter_from_xml  # noqa: E402  pylint: disable=wrong-import-position

from bench.run import FILTER, _ports  # noqa: E402  pylint: disable=wrong-import-position


def _timing(parts: Dict[str, List[float]], name: str, call: Callable) -> Callable:
    def timed(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return call(*args, **kwargs)
        finally:
            parts[f"{name} wall"].append(time.perf_counter() - wall)
            parts[f"{name} CPU"].append(time.process_time() - cpu)
    return timed


def _workers_cpu() -> float:
    """CPU time of the forked compile workers (engine.parallel) this process has reaped."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def bulk(root: str, netns: str, ports: int) -> Dict[str, float]:
    """Bind ``ports`` bench-vm ports to an empty store in one call."""
    parts: Dict[str, List[float]] = {f"{name} {kind}": [] for name in ("nft", "store") for kind in ("wall", "CPU")}
    host = Host(root, netns=netns)
    host.define_filter(filter_from_xml(FILTER.format(port=22)))
    bindings = [Binding(p, mac, FilterRef("bench-vm", {"IP": (ip,)})) for p, mac, ip in _ports(ports)]
    host.nft.apply = _timing(parts, "nft", host.nft.apply)
    host.store.finish = _timing(parts, "store", host.store.finish)
    wall, cpu, workers = time.perf_counter(), time.process_time(), _workers_cpu()
    host.set_bindings(bindings)
    figures = {"total wall": time.perf_counter() - wall, "total CPU": time.process_time() - cpu,
               "forked workers' CPU": _workers_cpu() - workers}
    figures.update({name: sum(values[:1]) for name, values in parts.items()})  # the bind's own calls
    figures["engine wall"] = figures["total wall"] - figures["nft wall"] - figures["store wall"]
    return figures


def redefine(root: str, netns: str) -> Dict[str, float]:
    """Change the filter every port of the store uses: all of them are compiled again."""
    host = Host(root, netns=netns)
    wall = time.perf_counter()
    host.define_filter(filter_from_xml(FILTER.format(port=23)))
    return {"redefine wall (all ports)": time.perf_counter() - wall}


def _child(operation: str, root: str, netns: str, ports: int) -> Dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "bench.bulk", "--ports", str(ports), "--child", operation, root, netns],
                          capture_output=True, text=True, check=True, cwd=os.path.join(os.path.dirname(__file__), ".."))
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ports", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # operation, store, namespace: one step, here
    args = parser.parse_args()
    if args.child:
        gc.disable()  # as a module run does (module_utils/common.py: host_for)
        operation, root, netns = args.child
        print(json.dumps(bulk(root, netns, args.ports) if operation == "bind" else redefine(root, netns)))
        return 0
    from lab.netns import Lab  # pylint: disable=import-outside-toplevel
    runs = []
    # Each round's store is kept until the end and the kernel reset by a flush: deleting the previous round's
    # files would make this round's creations slow on an ext4 without a journal (this VM's), which scans past
    # every inode deleted in the last 60 s, 360 s while its inode table block is dirty (recently_deleted); a
    # host's bulk bind does not follow such churn.
    with Lab("bb") as lab, tempfile.TemporaryDirectory() as stores:
        for number in range(args.rounds):
            root = os.path.join(stores, str(number))
            found = _child("bind", root, lab.host, args.ports)
            found.update(_child("redefine", root, lab.host, args.ports))
            lab.nft("flush ruleset\n")
            runs.append(found)
    print(f"# bulk bind of {args.ports} ports, then a redefine of their filter, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} cores, median of {args.rounds}, each step in a fresh process "
          "(CPU: the process, libnftables included; nft's kernel work is system time; the compile workers apart)")
    print("\n| part | median | runs |\n| --- | --- | --- |")
    for name in runs[0]:
        values = [run[name] for run in runs]
        print(f"| {name} | {statistics.median(values):.3f} s | {' '.join(f'{v:.2f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
