"""Many cheap VM ports for learner tests and benchmarks: veth pairs whose
bridge end ``<prefix><i>`` is in br0 and whose VM end ``<vm_prefix><i>``
stays in the lab's host namespace, where a raw socket sends the VM's frames."""

from __future__ import annotations

import socket

from .netns import Lab, inside, run


def add_ports(lab: Lab, count: int, prefix: str = "lp", vm_prefix: str = "lq") -> None:
    script = "".join(f"link add {prefix}{i} type veth peer name {vm_prefix}{i}\n"
                     f"link set {prefix}{i} master br0 up\nlink set {vm_prefix}{i} up\n" for i in range(count))
    run(["ip", "netns", "exec", lab.host, "ip", "-batch", "-"], stdin=script)


def vm_socket(lab: Lab, ifname: str) -> socket.socket:
    """A raw socket on a VM's end of its port (in the lab's host namespace)."""
    with inside(lab.host):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sock.bind((ifname, 0))
    return sock
