"""`python -m bench.learner`: the IP-learning service's latency from the first
revealing packet to the full rules applied (100 ports, p50/p99), and its
resident memory and idle CPU with 1000 ports waiting.

    python -m bench.learner [--ports 100] [--waiting 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from scapy.all import IP, UDP, Ether, Raw  # noqa: E402  pylint: disable=wrong-import-position,no-name-in-module

from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from lab.libvirt_oracle import Oracle  # noqa: E402  pylint: disable=wrong-import-position
from lab.netns import Lab, run  # noqa: E402  pylint: disable=wrong-import-position
from lab.ports import add_ports, vm_socket  # noqa: E402  pylint: disable=wrong-import-position

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _mac(i: int) -> str:
    return f"52:54:00:20:{i >> 8:02x}:{i & 0xff:02x}"


def _service(lab: Lab, root: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.path.join(REPO, 'plugins', 'module_utils')}")
    return subprocess.Popen(["ip", "netns", "exec", lab.host, sys.executable, "-m", "learner", "--root", root,
                             "--leases", os.path.join(root, "leases.json"), "--rescan", "1.0"],
                            env=env, stderr=subprocess.DEVNULL)


def latency(count: int) -> list:
    with Lab("bl") as lab, tempfile.TemporaryDirectory() as root:
        add_ports(lab, count)
        host = Host(root, netns=lab.host)
        host.set_bindings([Binding(f"lp{i}", _mac(i), FilterRef("clean-traffic")) for i in range(count)])
        service = _service(lab, root)
        samples = []
        try:
            time.sleep(2.0)  # the service opens its captures
            for i in range(count):
                learned = os.path.join(root, "learned", f"lp{i}.json")
                frame, sock = _frame(i), vm_socket(lab, f"lq{i}")  # built before the clock starts
                start = time.perf_counter()
                sock.send(frame)
                while not os.path.exists(learned):  # written once nft has accepted the full rules
                    if time.perf_counter() - start > 5:
                        raise RuntimeError(f"lp{i} not learned within 5 s")
                    time.sleep(0.0005)
                samples.append(time.perf_counter() - start)
                sock.close()  # after the clock: closing an AF_PACKET socket waits about 16 ms
        finally:
            service.terminate()
            service.wait()
        return samples


def _frame(i: int) -> bytes:
    return bytes(Ether(src=_mac(i), dst="52:54:00:99:99:99") / IP(src=f"10.9.{i >> 8}.{i & 0xff}", dst="10.9.255.254")
                 / UDP(dport=9) / Raw(b"x" * 16))


def libvirt_latency(count: int) -> list:
    """The same traffic against libvirt 9.0's learning (its rules show the address once learned)."""
    with Lab("bo") as lab, Oracle(lab) as oracle:
        add_ports(lab, count)
        for i in range(count):
            oracle.bind(f"lp{i}", _mac(i), "clean-traffic", {})
        time.sleep(2.0)
        samples = []
        for i in range(count):
            frame, sock = _frame(i), vm_socket(lab, f"lq{i}")
            start = time.perf_counter()
            sock.send(frame)
            wanted = f"ip saddr 10.9.{i >> 8}.{i & 0xff} "
            while wanted not in run(["ip", "netns", "exec", lab.host, "nft", "list", "table", "bridge", "nat"]).stdout:
                if time.perf_counter() - start > 30:
                    raise RuntimeError(f"libvirt did not learn lp{i} within 30 s")
                time.sleep(0.01)
            samples.append(time.perf_counter() - start)
            sock.close()
        return samples


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ports", type=int, default=100)
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="covers two periodic full rescans")
    parser.add_argument("--libvirt-ports", type=int, default=10, help="ports for libvirt's side (0: skip)")
    args = parser.parse_args()
    print(f"# vmguard learner benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    runs = [("vmguard", args.ports, latency)]
    if args.libvirt_ports:
        runs.append(("libvirt 9.0", args.libvirt_ports, libvirt_latency))
    for name, count, measure in runs:
        samples = sorted(measure(count))
        p50 = statistics.median(samples) * 1000
        p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))] * 1000
        print(f"{name}: learn latency over {count} ports (first packet -> full rules in force): "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {samples[-1] * 1000:.1f} ms")
    rss, cpu = idle(args.waiting, args.idle_seconds)
    print(f"{args.waiting} ports waiting: resident memory {rss:.1f} MB, idle CPU {cpu:.2f}% of a core "
          f"over {args.idle_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
