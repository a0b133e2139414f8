"""`python -m bench.learner`: over 100 ports, the time from a VM's first
packet to the kernel's lock of its address and to the full rules in force
(p50/p99), whether a spoofed packet sent right after the first gets through,
the time from a binding call returning to the capture open (mode dhcp), and
the service's resident memory and idle CPU with 1000 ports waiting.

    python -m bench.learner [--ports 100] [--waiting 1000]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from scapy.all import IP, UDP, Ether, Raw  # noqa: E402  pylint: disable=wrong-import-position,no-name-in-module

from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from lab.libvirt_oracle import Oracle  # noqa: E402  pylint: disable=wrong-import-position
from lab.netns import Lab, inside, run  # noqa: E402  pylint: disable=wrong-import-position
from lab.ports import add_ports, vm_socket  # noqa: E402  pylint: disable=wrong-import-position
from lab.service import clone_env  # noqa: E402  pylint: disable=wrong-import-position

BR0_MAC = "52:54:00:ff:00:01"


def _mac(i: int) -> str:
    return f"52:54:00:20:{i >> 8:02x}:{i & 0xff:02x}"


def _service(lab: Lab, root: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", lab.host, sys.executable, "-m", "learner", "--root", root,
                             "--leases", os.path.join(root, "leases.json"), "--rescan", "1.0"],
                            env=clone_env(), stderr=subprocess.DEVNULL)


def latency(count: int) -> Tuple[Dict[str, list], int]:
    """Per port: the VM's first packet, then at once one from a spoofed source.
    Samples from the first packet to (lock) the spoofed one sent, which the
    kernel's lock must already hold, (full) the full rules in force; and how
    many of the spoofed packets got through."""
    with Lab("bl") as lab, tempfile.TemporaryDirectory() as root:
        add_ports(lab, count)
        host = Host(root, netns=lab.host)
        host.set_bindings([Binding(f"lp{i}", _mac(i), FilterRef("clean-traffic")) for i in range(count)])
        service = _service(lab, root)
        samples: Dict[str, list] = {"lock": [], "full": []}
        observer = _observer(lab)
        try:
            time.sleep(2.0)  # the service opens its captures
            for i in range(count):
                learned = os.path.join(root, "learned", f"lp{i}.json")
                frames, sock = (_frame(i), _frame(i, spoofed=True)), vm_socket(lab, f"lq{i}")  # before the clock
                start = time.perf_counter()
                sock.send(frames[0])
                sock.send(frames[1])
                samples["lock"].append(time.perf_counter() - start)  # the spoofed one is sent: locked by then?
                while not os.path.exists(learned):  # written once nft has accepted the full rules
                    if time.perf_counter() - start > 5:
                        raise RuntimeError(f"lp{i} not learned within 5 s")
                    time.sleep(0.0005)
                samples["full"].append(time.perf_counter() - start)
                sock.close()  # after the clock: closing an AF_PACKET socket waits about 16 ms
        finally:
            service.terminate()
            service.wait()
        return samples, _spoofed_passed(observer)


def _observer(lab: Lab) -> socket.socket:
    """A capture on br0 in the lab's host: frames the VMs' rules let through to the host."""
    lab.sh(lab.host, f"ip link set br0 address {BR0_MAC}")
    with inside(lab.host):
        observer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        observer.bind(("br0", 0))
    observer.setblocking(False)
    return observer


def _spoofed_passed(observer: socket.socket) -> int:
    spoofed = 0
    while True:
        try:
            spoofed += observer.recv(2048).endswith(b"spoofed!")
        except BlockingIOError:
            break
    observer.close()
    return spoofed


def capture_latency(count: int) -> list:
    """Mode dhcp: from the binding call returning to the service's capture on
    the port being open (seen in the namespace's /proc/net/packet)."""
    with Lab("bc") as lab, tempfile.TemporaryDirectory() as root:
        add_ports(lab, count)
        host = Host(root, netns=lab.host)
        with inside(lab.host):
            indexes = [socket.if_nametoindex(f"lp{i}") for i in range(count)]
        service = _service(lab, root)
        samples = []
        try:
            time.sleep(2.0)  # started and idle
            for i in range(count):
                host.bind(Binding(f"lp{i}", _mac(i), FilterRef("clean-traffic", {"CTRL_IP_LEARNING": ("dhcp",)})))
                start = time.perf_counter()
                while not _capturing(service.pid, indexes[i]):
                    if time.perf_counter() - start > 5:
                        raise RuntimeError(f"no capture on lp{i} within 5 s")
                    time.sleep(0.0002)  # leave the CPU to the service
                samples.append(time.perf_counter() - start)
        finally:
            service.terminate()
            service.wait()
        return samples


def _capturing(pid: int, index: int) -> bool:
    with open(f"/proc/{pid}/net/packet", encoding="ascii") as handle:
        return any(line.split()[4] == str(index) for line in handle.readlines()[1:])


def _frame(i: int, spoofed: bool = False) -> bytes:
    return bytes(Ether(src=_mac(i), dst=BR0_MAC) / IP(src=f"10.{8 if spoofed else 9}.{i >> 8}.{i & 0xff}",
                                                      dst="10.9.255.254")
                 / UDP(dport=9) / Raw(b"spoofed!" if spoofed else b"x" * 16))


def libvirt_latency(count: int) -> Tuple[list, int]:
    """The same traffic against libvirt 9.0's learning (its rules show the address once learned)."""
    with Lab("bo") as lab, Oracle(lab) as oracle:
        add_ports(lab, count)
        observer = _observer(lab)
        for i in range(count):
            oracle.bind(f"lp{i}", _mac(i), "clean-traffic", {})
        time.sleep(2.0)
        samples = []
        for i in range(count):
            frames, sock = (_frame(i), _frame(i, spoofed=True)), vm_socket(lab, f"lq{i}")
            start = time.perf_counter()
            sock.send(frames[0])
            sock.send(frames[1])
            wanted = f"ip saddr 10.9.{i >> 8}.{i & 0xff} "
            while wanted not in run(["ip", "netns", "exec", lab.host, "nft", "list", "table", "bridge", "nat"]).stdout:
                if time.perf_counter() - start > 30:
                    raise RuntimeError(f"libvirt did not learn lp{i} within 30 s")
                time.sleep(0.01)
            samples.append(time.perf_counter() - start)
            sock.close()
        return samples, _spoofed_passed(observer)


def idle(count: int, seconds: float) -> tuple:
    with Lab("bi") as lab, tempfile.TemporaryDirectory() as root:
        add_ports(lab, count)
        host = Host(root, netns=lab.host)
        host.set_bindings([Binding(f"lp{i}", _mac(i), FilterRef("clean-traffic")) for i in range(count)])
        service = _service(lab, root)
        try:
            ticks = os.sysconf("SC_CLK_TCK")

            def cpu() -> float:  # `ip netns exec` execs the service: same pid
                with open(f"/proc/{service.pid}/stat", encoding="utf-8") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / ticks
            # settle: start-up (loading 1000 bindings, opening 1000 captures) is over
            # once a whole second passes without CPU use
            deadline, before = time.monotonic() + 60, cpu()
            while time.monotonic() < deadline:
                time.sleep(1.0)
                now = cpu()
                if now == before:
                    break
                before = now
            time.sleep(seconds)
            used = cpu() - before
            with open(f"/proc/{service.pid}/status", encoding="utf-8") as handle:
                rss = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS"))
        finally:
            service.terminate()
            service.wait()
        return rss / 1024, 100 * used / seconds


def _report(what: str, samples: list) -> None:
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1000
    p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))] * 1000
    print(f"{what}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {samples[-1] * 1000:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ports", type=int, default=100)
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="covers two periodic full rescans")
    parser.add_argument("--libvirt-ports", type=int, default=10, help="ports for libvirt's side (0: skip)")
    args = parser.parse_args()
    print(f"# vmguard learner benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    samples, spoofed = latency(args.ports)
    print(f"vmguard over {args.ports} ports: spoofed packets sent right after the first one that got through: "
          f"{spoofed} of {args.ports}")
    _report(f"vmguard: first packet -> spoofed packet sent (and held by the lock), {args.ports} ports",
            samples["lock"])
    _report(f"vmguard: first packet -> full rules in force, {args.ports} ports", samples["full"])
    _report(f"vmguard: binding call returned -> capture open (mode dhcp), {args.ports} ports",
            capture_latency(args.ports))
    if args.libvirt_ports:
        samples, spoofed = libvirt_latency(args.libvirt_ports)
        print(f"libvirt 9.0 over {args.libvirt_ports} ports: spoofed packets sent right after the first one that "
              f"got through: {spoofed} of {args.libvirt_ports}")
        _report(f"libvirt 9.0: first packet -> full rules in force, {args.libvirt_ports} ports", samples)
    rss, cpu = idle(args.waiting, args.idle_seconds)
    print(f"{args.waiting} ports waiting: resident memory {rss:.1f} MB, idle CPU {cpu:.2f}% of a core "
          f"over {args.idle_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
