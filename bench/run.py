"""`make bench`: bind N clean-traffic bindings and redefine the filter they
all use, for vmguard (N=30 and N=1000) and libvirt 9.0 (N=30, in its own lab
namespace); what checking the kernel costs a run that changes nothing (N=1000);
and the data-plane cost with 1 versus 1000 bindings.

    python -m bench.run [--quick] [--no-libvirt]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from engine.xml_form import filter_from_xml  # noqa: E402  pylint: disable=wrong-import-position
from lab.libvirt_oracle import Oracle  # noqa: E402  pylint: disable=wrong-import-position
from lab.netns import PEER, VM, Lab, inside, run  # noqa: E402  pylint: disable=wrong-import-position

REDEFINES = 5
FILTER = """<filter name='bench-vm'>
  <filterref filter='clean-traffic'/>
  <rule action='accept' direction='in'><tcp dstportstart='{port}'/></rule>
</filter>"""


def _ports(n: int) -> List[tuple]:
    return [(f"bv{i}", f"52:54:00:10:{i >> 8:02x}:{i & 0xff:02x}", f"10.{i >> 8}.{i & 0xff}.2") for i in range(n)]


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def ours(n: int, lab: Lab, bulk: bool) -> Dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        host = Host(root, netns=lab.host)
        host.define_filter(filter_from_xml(FILTER.format(port=22)))
        bindings = [Binding(p, mac, FilterRef("bench-vm", {"IP": (ip,)})) for p, mac, ip in _ports(n)]
        if bulk:
            bind = _timed(lambda: host.set_bindings(bindings))
        else:
            bind = _timed(lambda: [host.bind(b) for b in bindings])
        # the median of REDEFINES changes of the tcp port (one redefine is at the mercy of the disk's fsyncs)
        redefines = [_timed(lambda port=port: host.define_filter(filter_from_xml(FILTER.format(port=port))))
                     for port in range(23, 23 + REDEFINES)]
        report_all = _timed(host.report)  # what nwfilter_info does: one load, one nft listing
        report_one = _timed(lambda: host.report([bindings[0].portdev]))
        figures = {"bind": bind, "redefine": statistics.median(redefines), "redefine min": min(redefines),
                   "redefine max": max(redefines), "report all": report_all, "report one": report_one}
        if bulk:
            figures.update(_checks(host, lab, bindings))
        host.set_bindings([], exclusive=True)
    return figures


def _checks(host: Host, lab: Lab, bindings: List[Binding]) -> Dict[str, float]:
    """What checking the kernel costs a run that changes nothing (medians of
    5): nothing happened since our last commit (the generation matches),
    someone else committed (one listing of our tables), and the repair after
    ``nft flush ruleset``."""
    noop = [_timed(lambda: host.set_bindings(bindings)) for _round in range(REDEFINES)]
    foreign = []
    for number in range(REDEFINES):
        lab.nft(f"add table inet bench{number}\n")
        foreign.append(_timed(lambda: host.set_bindings(bindings)))
    repairs = []
    for _round in range(REDEFINES):
        lab.nft("flush ruleset\n")
        repairs.append(_timed(host.converge))
    return {"no-op": statistics.median(noop), "no-op after a foreign commit": statistics.median(foreign),
            "repair after flush ruleset": statistics.median(repairs)}


def _plug_ports(lab: Lab, ports: List[tuple]) -> None:
    """Real bridge ports: libvirt "binds" a missing device without creating any rule."""
    script = "".join(f"link add {p} type veth peer name {p}x\nlink set {p} master br0 up\nlink set {p}x up\n"
                     for p, _mac, _ip in ports)
    run(["ip", "netns", "exec", lab.host, "ip", "-batch", "-"], stdin=script)


def libvirt(n: int) -> Dict[str, float]:
    with Lab("lb") as lab, Oracle(lab) as oracle:
        oracle.define_filter("bench-vm", FILTER.format(port=22))
        ports = _ports(n)
        _plug_ports(lab, ports)
        bind = _timed(lambda: [oracle.bind(p, mac, "bench-vm", {"IP": [ip]}) for p, mac, ip in ports])
        redefine = _timed(lambda: oracle.define_filter("bench-vm", FILTER.format(port=23)))
        for portdev, _mac, _ip in ports:
            oracle.unbind(portdev)
    return {"bind": bind, "redefine": redefine}


def _echo_server(ns: str, stop: threading.Event) -> threading.Thread:
    with inside(ns):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 7777))
    server.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                data, address = server.recvfrom(2048)
            except socket.timeout:
                continue
            server.sendto(data, address)
        server.close()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def round_trips(lab: Lab, count: int) -> float:
    """Median UDP round trip VM -> peer -> VM through the bridge, in microseconds."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    stop = threading.Event()
    server = _echo_server(peer.name, stop)
    with inside(vm.name):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(1.0)
    samples = []
    try:
        for _warmup in range(200):
            client.sendto(b"x" * 64, (peer.ip, 7777))
            client.recvfrom(2048)
        for _sample in range(count):
            start = time.perf_counter()
            client.sendto(b"x" * 64, (peer.ip, 7777))
            client.recvfrom(2048)
            samples.append(time.perf_counter() - start)
    finally:
        stop.set()
        client.close()
        server.join()
    return statistics.median(samples) * 1e6


def frame_cost(lab: Lab, frames: int) -> float:
    """CPU time per UDP frame sent from ``vm`` to ``peer`` through the bridge,
    in µs: the sending process's time (veth hands a frame on in the sender's
    context, so the bridge, nftables and the peer's socket are in it). Far
    steadier than round trips on a shared VM."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    with inside(peer.name):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((peer.ip, 7778))
    with inside(vm.name):
        source = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload, target = b"x" * 64, (peer.ip, 7778)
    try:
        for _warmup in range(1000):
            source.sendto(payload, target)
        start = time.process_time()
        for _frame in range(frames):
            source.sendto(payload, target)
        return (time.process_time() - start) / frames * 1e6
    finally:
        source.close()
        sink.close()


def data_plane(count: int, many: int) -> Dict[str, Dict[str, float]]:
    with Lab("dp") as lab, tempfile.TemporaryDirectory() as root:
        vm = lab.add_vm("vm", *VM)
        lab.add_vm("peer", *PEER)
        host = Host(root, netns=lab.host)
        host.define_filter(filter_from_xml(FILTER.format(port=22)))
        mine = Binding(vm.port, vm.mac, FilterRef("bench-vm", {"IP": (vm.ip,)}))
        others = [Binding(p, mac, FilterRef("bench-vm", {"IP": (ip,)})) for p, mac, ip in _ports(many - 1)]
        host.set_bindings([mine])
        results: Dict[str, Dict[str, List[float]]] = {"1 binding": {"rtt": [], "cpu": []},
                                                      f"{many} bindings": {"rtt": [], "cpu": []}}
        for _round in range(3):  # interleaved, so drift hits both alike
            for name, bindings in (("1 binding", [mine]), (f"{many} bindings", [mine] + others)):
                host.set_bindings(bindings, exclusive=True)
                results[name]["rtt"].append(round_trips(lab, count))
                results[name]["cpu"].append(frame_cost(lab, count * 10))
        return {name: {kind: statistics.median(values) for kind, values in found.items()}
                for name, found in results.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small N, fewer packets")
    parser.add_argument("--no-libvirt", action="store_true", help="skip libvirt (it takes minutes)")
    args = parser.parse_args()
    small, large, packets = (5, 100, 500) if args.quick else (30, 1000, 3000)
    print(f"# vmguard.nwfilter benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    with Lab("b") as lab:
        _plug_ports(lab, _ports(small))  # the same real ports libvirt gets
        us_small = ours(small, lab, bulk=False)
        us_large = ours(large, lab, bulk=False)
        us_large_bulk = ours(large, lab, bulk=True)
    them = None if args.no_libvirt else libvirt(small)
    print("\n| case | vmguard | libvirt 9.0 | ratio |\n| --- | --- | --- | --- |")
    for what in ("bind", "redefine"):
        theirs = f"{them[what]:.2f} s" if them else "-"
        ratio = f"{them[what] / us_small[what]:.0f}x" if them else "-"
        print(f"| {what} N={small} (one by one) | {us_small[what]:.3f} s | {theirs} | {ratio} |")
    print(f"| bind N={large}, one by one | {us_large['bind']:.2f} s | | |")
    print(f"| bind N={large}, bulk (one transaction) | {us_large_bulk['bind']:.2f} s | | |")
    for what in ("no-op", "no-op after a foreign commit", "repair after flush ruleset"):
        print(f"| {what}, N={large} | {us_large_bulk[what] * 1000:.1f} ms | | |")
    spread = f"{us_large['redefine min']:.2f}-{us_large['redefine max']:.2f} s"
    print(f"| redefine a filter used by N={large} (median of {REDEFINES}: {spread}) | {us_large['redefine']:.2f} s | | |")
    print(f"| report every binding of N={large} (nwfilter_info) | {us_large['report all']:.2f} s | | |")
    print(f"| report one binding of N={large} (nwfilter_info portdev) | {us_large['report one']:.3f} s | | |")
    plane = data_plane(packets, large)
    base = plane["1 binding"]
    print(f"\n| data plane, median of 3 interleaved rounds | UDP round trip VM-peer ({packets} samples) | vs 1 binding "
          f"| CPU per frame sent VM -> peer ({packets * 10} frames) | vs 1 binding |\n| --- | --- | --- | --- | --- |")
    for name, value in plane.items():
        print(f"| {name} | {value['rtt']:.1f} µs | {100 * (value['rtt'] - base['rtt']) / base['rtt']:+.1f}% "
              f"| {value['cpu']:.2f} µs | {100 * (value['cpu'] - base['cpu']) / base['cpu']:+.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
