"""`python -m bench.repair`: how fast the service puts our rules back after
someone else damaged them, with N bindings (clean-traffic, each with its IP).
Every kind of damage in turn, repeated; latency is measured from the start
of the damaging `nft` command (so it includes starting that command, a few
ms) to the service's log line that follows the repair's commit.

    python -m bench.repair [--ports 1,100,1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from lab.netns import Lab  # noqa: E402  pylint: disable=wrong-import-position
from lab.service import Service  # noqa: E402  pylint: disable=wrong-import-position


# each builds its nft script (before the clock starts) for the port it damages
def _shape(lab: Lab) -> str:
    """The shape clean-traffic's ports share (they are all of one here)."""
    found = re.search(r"chain (s/[0-9a-f]+)/o ", lab.nft_list())
    return found.group(1) if found else ""


DAMAGES: Dict[str, Callable[[Lab, str], str]] = {
    "flush ruleset": lambda lab, port: "flush ruleset",
    "delete table bridge vmguard": lambda lab, port: "delete table bridge vmguard",
    "delete table inet vmguard": lambda lab, port: "delete table inet vmguard",
    "delete a shape's chain": lambda lab, port: (
        f"delete rule bridge vmguard {_shape(lab)}/o handle "
        f"{lab.rule_handle(f'{_shape(lab)}/o', f'jump {_shape(lab)}/o/ipv4-ip')}\n"
        f"delete chain bridge vmguard {_shape(lab)}/o/ipv4-ip"),
    "flush a shape's chain": lambda lab, port: f"flush chain bridge vmguard {_shape(lab)}/o/ipv4-ip",
    "take a port out of its shape": lambda lab, port: f'delete element bridge vmguard {_shape(lab)}/ports {{ "{port}" }}',
    "replace a shape's rule": lambda lab, port: (
        f"replace rule bridge vmguard {_shape(lab)}/o/ipv4-ip handle "
        f"{lab.rule_handle(f'{_shape(lab)}/o/ipv4-ip', 'drop')} accept"),
    "make a table dormant": lambda lab, port: "add table bridge vmguard { flags dormant; }",
}


def _repaired(service: Service, before: int, timeout: float = 60.0) -> None:
    """Wait for the service's next "repaired in" log line (written once the repair is committed)."""
    deadline = time.monotonic() + timeout
    while sum("repaired in" in line for line in service.log) == before:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no repair within {timeout:.0f} s: {service.log[-3:]}")
        time.sleep(0.001)


def measure(count: int, rounds: int) -> Dict[str, List[float]]:
    samples: Dict[str, List[float]] = {name: [] for name in DAMAGES}
    with Lab("br") as lab, tempfile.TemporaryDirectory() as root:
        host = Host(root, netns=lab.host)
        host.set_bindings([Binding(f"rp{i}", f"52:54:00:30:{i >> 8:02x}:{i & 0xff:02x}",
                                   FilterRef("clean-traffic", {"IP": (f"10.30.{i >> 8}.{i & 0xff}",)}))
                           for i in range(count)])
        with Service(lab, root) as service:
            for turn in range(rounds):
                for name, build in DAMAGES.items():
                    script = build(lab, f"rp{turn % count}")  # built before the clock starts
                    repairs = sum("repaired in" in line for line in service.log)
                    start = time.perf_counter()
                    lab.nft(script)
                    _repaired(service, repairs)
                    samples[name].append(time.perf_counter() - start)
                    problems = host.converge(check=True).repaired
                    if problems:
                        raise RuntimeError(f"after repairing {name}: {problems[:3]}")
    return samples


def _line(label: str, values: List[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return (f"  {label}: p50 {statistics.median(values) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {values[-1] * 1000:.0f} ms ({len(values)} repairs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ports", default="1,100,1000", help="numbers of bindings, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="times each kind of damage is done")
    args = parser.parse_args()
    print(f"# vmguard repair benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores: "
          "damage -> repair committed")
    for count in (int(n) for n in args.ports.split(",")):
        samples = measure(count, args.rounds)
        print(f"{count} bindings:")
        print(_line("all damages", [v for values in samples.values() for v in values]))
        for name, values in samples.items():
            print(_line(name, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
