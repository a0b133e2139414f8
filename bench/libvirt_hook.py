"""`python -m bench.libvirt_hook`: how long the libvirt hook holds up a
domain start (and a stop) on a host with 1000 bindings: the whole hook
process, as libvirt runs it, interpreter start-up included (goal: < 100 ms).

    python -m bench.libvirt_hook [--bindings 1000] [--runs 15] [--python /usr/bin/python3] [--service]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.libvirt_domain import NAMESPACE  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from engine.xml_form import filter_from_xml  # noqa: E402  pylint: disable=wrong-import-position
from lab.netns import Lab, inside  # noqa: E402  pylint: disable=wrong-import-position
from lab.service import Service  # noqa: E402  pylint: disable=wrong-import-position

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
UUID = "0b7e2c4a-5d1f-4e3a-9c8b-7a6f5e4d3c2b"
FILTER = """<filter name='bench-vm'>
  <filterref filter='clean-traffic'/>
  <rule action='accept' direction='in'><tcp dstportstart='22'/></rule>
</filter>"""


def _domain(taps: int) -> str:
    macs = [f"52:54:00:30:00:{i:02x}" for i in range(taps)]
    devices = "".join(f"<interface type='bridge'><mac address='{mac}'/><source bridge='br0'/>"
                      f"<target dev='hk{i}'/></interface>" for i, mac in enumerate(macs))
    ours = "".join(f"<v:interface mac='{mac}'><v:filterref filter='bench-vm'>"
                   f"<v:parameter name='IP' value='10.200.0.{i + 1}'/></v:filterref></v:interface>"
                   for i, mac in enumerate(macs))
    return (f"<domain type='qemu'><name>bench</name><uuid>{UUID}</uuid><metadata>"
            f"<v:nwfilter xmlns:v='{NAMESPACE}'>{ours}</v:nwfilter></metadata><devices>{devices}</devices></domain>")


def install(target: str, python: str) -> None:
    """The engine and the hook as the role deploys them, byte-compiled."""
    shutil.copytree(os.path.join(REPO, "plugins", "module_utils", "engine"), os.path.join(target, "engine"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(REPO, "libvirt_hook"), os.path.join(target, "libvirt_hook"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([python, "-m", "compileall", "-q", target], check=True)


def _hook(python: List[str], lab: Lab, root: str, operation: str, xml: str) -> Tuple[float, float]:
    """(wall, CPU) seconds of one hook run; CPU (user + system of the process
    and its children) is the figure a busy machine disturbs least."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.path.join(root, "lib"), "VMGUARD_ROOT": root}
    argv = python + ["-m", "libvirt_hook", "bench", operation, "begin", "-"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with inside(lab.host):  # started from a thread in the namespace, as libvirtd starts it: no ip netns exec
        start = time.perf_counter()
        done = subprocess.run(argv, input=xml, capture_output=True, text=True, env=env, check=False)
        elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return elapsed, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def measure(bindings: int, runs: int, python: List[str], taps: int,
            service: bool) -> Dict[str, List[Tuple[float, float]]]:
    with Lab("k") as lab, tempfile.TemporaryDirectory() as root, contextlib.ExitStack() as stack:
        install(os.path.join(root, "lib"), python[0])
        host = Host(root, netns=lab.host)
        host.define_filter(filter_from_xml(FILTER))
        host.set_bindings([Binding(f"bk{i}", f"52:54:00:31:{i >> 8:02x}:{i & 0xff:02x}",
                                   FilterRef("bench-vm", {"IP": (f"10.201.{i >> 8}.{i & 0xff}",)}))
                           for i in range(bindings)])
        xml = _domain(taps)
        if service:  # the learner service runs: the hook hands the change to it
            stack.enter_context(Service(lab, root))
        noop = [_hook(python, lab, root, "started", xml) for _run in range(runs)]
        start, stop = [], []
        for _run in range(runs):
            start.append(_hook(python, lab, root, "start", xml))
            stop.append(_hook(python, lab, root, "stopped", xml))
        if len(host.bindings()) != bindings:
            raise SystemExit("the hook left bindings behind")
    return {"start": start, "stopped": stop, "other phase (no work)": noop}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bindings", type=int, default=1000, help="bindings already on the host")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--taps", type=int, default=2, help="interfaces of the domain")
    parser.add_argument("--python", default=sys.executable, help="the interpreter the hook runs with")
    parser.add_argument("--service", action="store_true", help="with the learner service running (the fast path)")
    args = parser.parse_args()
    python = [args.python, "-S"]  # as the role's hook runs it: no site-packages to scan
    figures = measure(args.bindings, args.runs, python, args.taps, args.service)
    print(f"# libvirt hook, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, {args.bindings} bindings, "
          f"a domain with {args.taps} interfaces, {args.runs} runs, {' '.join(python)}, "
          f"{'the service running' if args.service else 'no service'}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("\n| hook phase | wall median (min-max) | CPU median (min-max) |\n| --- | --- | --- |")
    for phase, pairs in figures.items():
        cells = []
        for values in ([wall for wall, _cpu in pairs], [cpu for _wall, cpu in pairs]):
            cells.append(f"{statistics.median(values) * 1000:.0f} ms ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})")
        print(f"| {phase} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
