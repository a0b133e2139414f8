"""One change on a host that already has N bindings, each in a fresh process
as a module run is: bind one more port, change its binding, unbind it, and
define a filter no binding uses; and the report of one binding
(``nwfilter_info portdev=``), which should cost what it shows. Engine time (wall and CPU of the call) and,
apart, the engine's imports. Goal: under 30 ms, and no more at the largest
N than at 1,000 beyond noise.

    python -m bench.change [--bindings 1000 10000] [--runs 7]

N tops out at 16,383: a port's id is 14 bits of the packet mark (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from engine.xml_form import filter_from_xml  # noqa: E402  pylint: disable=wrong-import-position

from bench.run import FILTER, _ports  # noqa: E402  pylint: disable=wrong-import-position
from lab.netns import Lab  # noqa: E402  pylint: disable=wrong-import-position

ENGINE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))
# what each fresh process runs: {root} {netns} {operation}
CHILD = """
import json, sys, time
started = time.perf_counter()
sys.path.insert(0, {engine!r})
from engine.host import Host
from engine.model import Binding, FilterRef
from engine.xml_form import filter_from_xml
imported = time.perf_counter()
root, netns, operation = sys.argv[1:4]
host = Host(root, netns=netns)
wall, cpu = time.perf_counter(), time.process_time()
if operation == "bind":
    result = host.bind(Binding("xnew", "52:54:00:99:00:01", FilterRef("bench-vm", {{"IP": ("10.99.0.1",)}})))
elif operation == "change":
    result = host.bind(Binding("xnew", "52:54:00:99:00:01", FilterRef("bench-vm", {{"IP": ("10.99.0.2",)}})))
elif operation == "unbind":
    result = host.unbind("xnew")
elif operation == "report one":
    result = host.report(["bv0"])["bv0"]["in_force"]
else:
    result = host.define_filter(filter_from_xml("<filter name='unused-" + sys.argv[4] + "'>"
                                                "<rule action='drop' direction='in'><tcp dstportstart='9'/></rule></filter>"))
print(json.dumps({{"changed": getattr(result, "changed", result), "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "imports": imported - started}}))
"""
OPERATIONS = ("bind", "change", "unbind", "define unused filter", "report one")


def _child(root: str, netns: str, operation: str, run: int, pycache: str) -> Dict[str, float]:
    """One operation in a fresh interpreter that reads the engine's bytecode
    from ``pycache`` (as the learner, the hook and a CLI do from their
    installed files): compiling the engine's sources is not the engine's work."""
    code = CHILD.format(engine=ENGINE)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([sys.executable, "-X", f"pycache_prefix={pycache}", "-c", code, root, netns, operation,
                           str(run)], capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    found = json.loads(done.stdout)
    if not found["changed"]:  # a report's: in force
        raise SystemExit(f"{operation} changed nothing")
    return found


def measure(bindings: int, runs: int) -> Dict[str, List[Dict[str, float]]]:
    figures: Dict[str, List[Dict[str, float]]] = {operation: [] for operation in OPERATIONS}
    with Lab("c") as lab, tempfile.TemporaryDirectory() as root, tempfile.TemporaryDirectory() as pycache:
        host = Host(root, netns=lab.host)
        host.define_filter(filter_from_xml(FILTER.format(port=22)))
        host.set_bindings([Binding(p, mac, FilterRef("bench-vm", {"IP": (ip,)})) for p, mac, ip in _ports(bindings)])
        for run in range(runs + 1):  # the first round writes the bytecode: not counted
            for operation in OPERATIONS:
                found = _child(root, lab.host, operation, run, pycache)
                if run:
                    figures[operation].append(found)
    return figures


def _cell(values: List[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bindings", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"# one change in a fresh process, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, median (min-max) of {args.runs}")
    print("\n| bindings | change | engine wall | engine CPU | imports |\n| --- | --- | --- | --- | --- |")
    for bindings in args.bindings:
        for operation, found in measure(bindings, args.runs).items():
            print(f"| {bindings} | {operation} | {_cell([f['wall'] for f in found])} | "
                  f"{_cell([f['cpu'] for f in found])} | {_cell([f['imports'] for f in found])} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
