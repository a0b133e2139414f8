"""libvirt 9.0's real nwfilter driver as an oracle: libvirtd runs inside a
lab's host namespace, so its ebtables/iptables rules land there and nowhere
else. Its sockets live in /run/libvirt (shared with the machine), so one
oracle at a time."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import tempfile
import time
from typing import Mapping, Optional, Sequence

from .netns import Lab, run

QEMU_CONF = "/etc/libvirt/qemu.conf"
PIDFILE = "/run/libvirtd.pid"
# one libvirtd per machine: concurrent test runs queue here instead of failing
MACHINE_LOCK = "/run/vmguard-libvirtd.lock"


def prepare_machine() -> None:
    """What libvirtd needs before it starts here (idempotent)."""
    os.makedirs("/var/log/libvirt", exist_ok=True)
    if run(["getent", "group", "kvm"], check=False).returncode != 0:
        run(["groupadd", "-r", "kvm"])
    if run(["id", "libvirt-qemu"], check=False).returncode != 0:
        run(["useradd", "-r", "-g", "kvm", "-s", "/usr/sbin/nologin", "libvirt-qemu"])
    with open(QEMU_CONF, encoding="utf-8") as handle:
        conf = handle.read()
    if 'user = "root"' not in conf.splitlines():
        with open(QEMU_CONF, "a", encoding="utf-8") as handle:
            handle.write('\nuser = "root"\ngroup = "root"\n')
    # guests' consoles to plain files: no virtlogd daemon to run beside the oracle
    if 'stdio_handler = "file"' not in conf.splitlines():
        with open(QEMU_CONF, "a", encoding="utf-8") as handle:
            handle.write('stdio_handler = "file"\n')


class Oracle:
    """``with Oracle(lab) as oracle: oracle.bind(...)``"""

    def __init__(self, lab: Lab, hooks: Optional[str] = None) -> None:
        """``hooks``: a directory this libvirtd alone sees as /etc/libvirt/hooks
        (a private mount namespace), so a test's hooks never reach the machine's."""
        self.lab = lab
        self.hooks = hooks
        self.defined: list = []
        self.bound: set = set()
        self.networks: list = []
        self._lock = None

    @staticmethod
    def busy() -> bool:
        """A libvirtd of the machine's own runs: its sockets are the ones we would need."""
        return run(["pgrep", "-x", "libvirtd"], check=False).returncode == 0

    def __enter__(self) -> "Oracle":
        self._lock = open(MACHINE_LOCK, "a", encoding="utf-8")  # pylint: disable=consider-using-with
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        if self.busy():
            self._release()
            raise RuntimeError("a libvirtd is already running; the oracle needs its own")
        prepare_machine()
        self._start()
        return self

    def _start(self) -> None:
        start = ["ip", "netns", "exec", self.lab.host, "libvirtd", "-d", "-p", PIDFILE]
        if self.hooks:
            start = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     'mount --bind "$0" /etc/libvirt/hooks && exec "$@"', self.hooks] + start
        run(start)
        deadline = time.monotonic() + 20
        while self.virsh(["nwfilter-list"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("libvirtd did not answer within 20 s")
            time.sleep(0.2)

    def restart(self) -> None:
        """libvirtd stopped and started again (as at a host's reboot, its tap
        names start again from vnet0), keeping the machine-wide lock."""
        self._stop()
        self._start()

    def __exit__(self, *exc: object) -> None:
        # libvirt keeps networks, bindings and filters under /etc and /run: leave them as found
        for name in list(self.networks):
            self.undefine_network(name)
        for portdev in sorted(self.bound):
            self.virsh(["nwfilter-binding-delete", portdev], check=False)
        for name in self.defined:
            self.virsh(["nwfilter-undefine", name], check=False)
        self._stop()
        self._release()

    def _stop(self) -> None:
        try:
            with open(PIDFILE, encoding="utf-8") as handle:
                os.kill(int(handle.read().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            run(["pkill", "-x", "libvirtd"], check=False)
        for _wait in range(50):
            if run(["pgrep", "-x", "libvirtd"], check=False).returncode != 0:
                break
            time.sleep(0.1)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def virsh(self, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.lab.host, "virsh", "-q", "-c", "qemu:///system"] + list(args),
                   check=check)

    def _with_file(self, command: str, xml: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".xml") as handle:
            handle.write(xml)
            handle.flush()
            self.virsh([command, handle.name])

    def define_filter(self, name: str, xml: str) -> None:
        """Define or redefine: libvirt takes a redefinition only with the filter's uuid."""
        for line in self.virsh(["nwfilter-list"]).stdout.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1] == name and "<uuid>" not in xml:
                xml = xml.replace(">", f"><uuid>{fields[0]}</uuid>", 1)
        self._with_file("nwfilter-define", xml)
        if name not in self.defined:
            self.defined.append(name)

    def bind(self, portdev: str, mac: str, filter_name: str, params: Mapping[str, Sequence[str]]) -> None:
        parameters = "".join(f"<parameter name='{name}' value='{value}'/>"
                             for name, values in params.items() for value in values)
        self._with_file("nwfilter-binding-create", f"""<filterbinding>
  <owner><name>vm-{portdev}</name><uuid>{_uuid(portdev)}</uuid></owner>
  <portdev name='{portdev}'/><mac address='{mac}'/>
  <filterref filter='{filter_name}'>{parameters}</filterref>
</filterbinding>""")
        self.bound.add(portdev)

    def unbind(self, portdev: str) -> None:
        self.virsh(["nwfilter-binding-delete", portdev])
        self.bound.discard(portdev)

    def define_network(self, name: str, xml: str) -> None:
        """net-define and net-start: libvirt makes the bridge, its iptables rules
        and dnsmasq, all in the lab's host namespace."""
        self._with_file("net-define", xml)
        self.networks.append(name)
        self.virsh(["net-start", name])

    def undefine_network(self, name: str) -> None:
        """net-destroy (the bridge and the rules go) and net-undefine."""
        self.virsh(["net-destroy", name], check=False)
        self.virsh(["net-undefine", name], check=False)
        self.networks.remove(name)


def _uuid(portdev: str) -> str:
    digits = portdev.encode().hex()[:12].ljust(12, "0")
    return f"00000000-0000-4000-8000-{digits}"
