"""A real guest for end-to-end tests: Debian's cloud kernel and a busybox
initramfs built here, booted by QEMU (TCG) under libvirt. Its init brings
eth0 up with the address given on the kernel command line and then, for
ever, pings the host from that address and from a spoofed one (held as a
second local address, with the host's MAC pinned so no ARP is needed)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from typing import Mapping, Optional, Tuple

BUSYBOX = "/bin/busybox"
# virtio_net and what it needs, in load order (the cloud kernel has them as modules)
MODULES = ("kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
           "kernel/drivers/virtio/virtio_pci_legacy_dev.ko", "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
           "kernel/drivers/virtio/virtio_pci.ko", "kernel/net/core/failover.ko",
           "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko")
INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in {modules}; do insmod /lib/$module; done
for word in $(cat /proc/cmdline); do
  case "$word" in vmg.*=*) key=${{word%%=*}}; eval "${{key#vmg.}}=${{word#*=}}";; esac
done
sysctl -qw net.ipv4.conf.all.arp_announce=2
ip link set lo up
ip link set eth0 up
ip addr add "$ip/24" dev eth0
ip addr add "$spoof/32" dev eth0
arp -s "$gw" "$gwmac"
echo "vmguard guest $ip up"
while true; do
  ping -q -c 1 -W 1 -I "$ip" "$gw" >/dev/null 2>&1
  ping -q -c 1 -W 1 -I "$spoof" "$gw" >/dev/null 2>&1
  sleep 0.3
done
"""


def kernel() -> Tuple[str, str]:
    """(vmlinuz, modules directory) of the newest installed cloud kernel."""
    found = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if found:
        modules = f"/lib/modules/{os.path.basename(found[-1])[len('vmlinuz-'):]}"
        if os.path.isdir(modules):
            return found[-1], modules
    raise FileNotFoundError("no Debian cloud kernel (linux-image-cloud-amd64) is installed")


def available() -> Optional[str]:
    """Why no guest can be booted here, or None."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86 is not installed"
    if not os.path.exists(BUSYBOX):
        return "busybox-static is not installed"
    try:
        kernel()
    except FileNotFoundError as exc:
        return str(exc)
    return None


def build(directory: str) -> Tuple[str, str]:
    """Kernel and initramfs, copied and built under ``directory``."""
    vmlinuz, modules = kernel()
    tree = os.path.join(directory, "initramfs")
    os.makedirs(os.path.join(tree, "bin"))
    os.makedirs(os.path.join(tree, "lib"))
    shutil.copy(BUSYBOX, os.path.join(tree, "bin", "busybox"))
    names = []
    for module in MODULES:
        names.append(os.path.basename(module))
        shutil.copy(os.path.join(modules, module), os.path.join(tree, "lib", names[-1]))
    with open(os.path.join(tree, "init"), "w", encoding="utf-8") as handle:
        handle.write(INIT.format(modules=" ".join(names)))
    os.chmod(os.path.join(tree, "init"), 0o755)
    initrd = os.path.join(directory, "initrd.gz")
    subprocess.run(f"cd {tree} && find . | {BUSYBOX} cpio -o -H newc 2>/dev/null | gzip -1 > {initrd}", shell=True,
                   check=True)
    # libvirt may relabel what it boots: a copy, not the machine's /boot
    kernel_copy = os.path.join(directory, "vmlinuz")
    shutil.copy(vmlinuz, kernel_copy)
    return kernel_copy, initrd


def domain_xml(name: str, uuid: str, mac: str, boot: Tuple[str, str], cmdline: Mapping[str, str],
               metadata: str = "", console: str = "") -> str:
    """A domain: 1 vCPU (TCG), direct kernel boot, one virtio NIC on br0."""
    args = " ".join(f"vmg.{key}={value}" for key, value in cmdline.items())
    serial = (f"<serial type='file'><source path='{console}'/><target port='0'/></serial>" if console else "")
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <metadata>{metadata}</metadata>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{boot[0]}</kernel>
    <initrd>{boot[1]}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 {args}</cmdline>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    {serial}
    <memballoon model='none'/>
  </devices>
</domain>
"""
