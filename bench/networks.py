"""`make bench` (networks): apply one virtual network, then change it, while
1,000 clean-traffic port bindings exist; the engine's time for each change,
and proof that no port chain was rewritten (every rule handle of the per-port
tables is the same before and after).

    python -m bench.networks [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from engine.network_forms import network_from_dict  # noqa: E402  pylint: disable=wrong-import-position
from lab.netns import Lab, run  # noqa: E402  pylint: disable=wrong-import-position

CHANGES = 9


def _port_tables(lab: Lab) -> str:
    """The per-port tables with every rule's handle: a rewritten chain gets new handles."""
    return "".join(run(["ip", "netns", "exec", lab.host, "nft", "-a", "list", "table", family, "vmguard"]).stdout
                   for family in ("bridge", "inet"))


def _network(mode: str, ports: str = "1024-65535"):
    data = {"name": "default", "bridge": "br0", "forward": {"mode": mode, "dev": "ext0"},
            "ipv4": ["192.0.2.1/24"], "ipv6": ["2001:db8::1/64"]}
    if mode == "nat":
        data["nat"] = {"ports": ports}
    return network_from_dict(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 bindings instead of 1000")
    count = 100 if parser.parse_args().quick else 1000
    with Lab("bn") as lab, tempfile.TemporaryDirectory() as root:
        host = Host(root, netns=lab.host)
        host.set_bindings([Binding(f"bv{i}", f"52:54:00:20:{i >> 8:02x}:{i & 0xff:02x}",
                                   FilterRef("clean-traffic", {"IP": (f"10.{i >> 8}.{i & 0xff}.2",)}))
                           for i in range(count)])
        ports_before = _port_tables(lab)
        applies, changes = [], []
        for index in range(CHANGES):
            start = time.perf_counter()
            host.networks.define([_network("nat")])
            applies.append(time.perf_counter() - start)
            start = time.perf_counter()
            host.networks.define([_network("nat", f"{2000 + index}-3000")])  # a change of its rules
            changes.append(time.perf_counter() - start)
            host.networks.undefine(["default"])
        untouched = _port_tables(lab) == ports_before
    print(f"# vmguard.nwfilter network benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"{count} port bindings")
    print("\n| case (median of %d, min-max) | engine time |\n| --- | --- |" % CHANGES)
    for name, values in (("apply one nat network", applies), ("change it (nat ports)", changes)):
        print(f"| {name} | {1000 * statistics.median(values):.1f} ms "
              f"({1000 * min(values):.1f}-{1000 * max(values):.1f}) |")
    print(f"\nper-port chains rewritten: {'none' if untouched else 'SOME (rule handles changed)'}")
    return 0 if untouched else 1


if __name__ == "__main__":
    sys.exit(main())
