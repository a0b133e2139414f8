"""Build and tear down the lab: host namespace H with bridge br0; each VM or
peer is a namespace whose eth0 is a veth pair's end, the other end (named like
a tap, vnetN) enslaved to br0 in H."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

CLONE_NEWNET = 0x40000000
# (mac, ipv4, ipv6) of the standard lab's VM and of its unfiltered peer
VM = ("52:54:00:00:00:01", "192.0.2.10", "2001:db8::10")
PEER = ("52:54:00:00:00:02", "192.0.2.20", "2001:db8::20")
_libc = ctypes.CDLL(None, use_errno=True)


def run(argv: Sequence[str], check: bool = True, stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def remove_stale() -> None:
    """Remove the namespaces of labs whose process is gone: one killed outright
    (SIGKILL, a timeout) never ran its cleanup. Names carry the pid modulo 100000."""
    alive = {int(entry) % 100000 for entry in os.listdir("/proc") if entry.isdigit()}
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        found = re.match(r"(vmg\D*(\d+)\S*)", line)
        if found and int(found.group(2)) not in alive:
            run(["ip", "netns", "del", found.group(1)], check=False)


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block with this thread in namespace ``ns`` (sockets made here stay there)."""
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"/run/netns/{ns}", "rb") as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            yield
        finally:
            _libc.setns(home.fileno(), CLONE_NEWNET)


@dataclass
class Guest:
    name: str      # its namespace
    port: str      # the bridge port in H
    mac: str
    ip: str
    ipv6: str


class Lab:
    """``with Lab() as lab: lab.add_vm(...)``; every namespace is removed on exit."""

    def __init__(self, tag: str = "") -> None:
        self.prefix = f"vmg{tag}{os.getpid() % 100000}"
        self.host = f"{self.prefix}h"
        self.guests: Dict[str, Guest] = {}
        self.namespaces: List[str] = []
        self._next = 0

    def __enter__(self) -> "Lab":
        remove_stale()
        try:
            self._netns(self.host)
            self.sh(self.host, "ip link add br0 type bridge stp_state 0 forward_delay 0",
                    "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
                    "ip link set br0 up", "ip link set lo up",
                    "ip addr add 192.0.2.1/24 dev br0", "ip addr add 2001:db8::1/64 dev br0 nodad")
            # br_netfilter hands bridged IP packets to the inet table (per namespace)
            self.sh(self.host, *(f"sysctl -qw net.bridge.bridge-nf-call-{name}=1"
                                 for name in ("iptables", "ip6tables", "arptables")))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()

    def _netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)

    def sh(self, ns: str, *commands: str) -> None:
        for command in commands:
            run(["ip", "netns", "exec", ns] + command.split())

    def add_vm(self, name: str, mac: str, ip: str, ipv6: str = "", port: Optional[str] = None) -> Guest:
        """A namespace ``<prefix><name>`` whose eth0 (mac, ip/24, ipv6/64) is plugged into br0 as ``port``."""
        port = port or f"vnet{self._next}"
        self._next += 1
        guest = Guest(f"{self.prefix}{name}", port, mac, ip, ipv6)
        self._netns(guest.name)
        self.guests[name] = guest
        self.sh(guest.name, "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
        self.plug(name)
        self.sh(guest.name, "ip link set lo up", f"ip addr add {ip}/24 dev eth0")
        if ipv6:
            self.sh(guest.name, f"ip addr add {ipv6}/64 dev eth0 nodad")
        return guest

    def plug(self, name: str) -> None:
        """(Re-)create the guest's veth pair: port in H, eth0 in the guest."""
        guest = self.guests[name]
        self.sh(self.host, f"ip link add {guest.port} type veth peer name eth0 netns {guest.name}",
                f"ip link set {guest.port} master br0", f"ip link set {guest.port} up")
        self.sh(guest.name, f"ip link set eth0 address {guest.mac}", "ip link set eth0 up")

    def unplug(self, name: str) -> None:
        self.sh(self.host, f"ip link del {self.guests[name].port}")

    def nft(self, script: str) -> None:
        run(["ip", "netns", "exec", self.host, "nft", "-f", "-"], stdin=script)

    def nft_list(self) -> str:
        return run(["ip", "netns", "exec", self.host, "nft", "list", "ruleset"]).stdout

    def rule_handle(self, chain: str, containing: str, family: str = "bridge", table: str = "vmguard") -> str:
        """The handle of the first rule of that chain whose listing contains ``containing``."""
        listing = run(["ip", "netns", "exec", self.host, "nft", "-a", "list", "chain", family, table, chain]).stdout
        return next(line for line in listing.splitlines() if containing in line).rsplit("handle ", 1)[1].strip()
