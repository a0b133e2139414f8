"""End to end with the real libvirt 9.0 and real guests: QEMU (TCG) boots
Debian's cloud kernel with a busybox initramfs (lab.qemu_guest) under a
libvirtd in the lab's host namespace, with the role's hook installed where
only that libvirtd sees it. Each guest pings the host from its own address
and from its neighbour's; what it sent is seen on its tap, what got through
on br0. Slow: two guests booted twice (about 2-3 minutes on 2 busy cores)."""

import json
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time

import jinja2
import pytest
import yaml

from engine.host import Host
from engine.libvirt_domain import NAMESPACE, Domain
from engine.model import FilterRef
from lab import qemu_guest
from lab.libvirt_oracle import Oracle
from lab.netns import Lab, inside

pytestmark = pytest.mark.oracle

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ROLE = os.path.join(REPO, "roles", "learner")
GATEWAY, GATEWAY_MAC = "192.0.2.1", "02:00:00:00:00:01"
# name: (uuid, mac, own address, the neighbour's address it spoofs)
GUESTS = {"vmg-a": ("0d9c1a52-7b1e-4c55-9e0a-00000000000a", "52:54:00:00:0a:01", "192.0.2.11", "192.0.2.12"),
          "vmg-b": ("0d9c1a52-7b1e-4c55-9e0a-00000000000b", "52:54:00:00:0b:01", "192.0.2.12", "192.0.2.11")}
PROBE_HOOK = """#!/usr/bin/python3 -S
# runs after vmguard's hook (qemu.d/ is run in name order): what is in force at each phase
import json, os, re, subprocess, sys
xml = sys.stdin.read()
taps = re.findall(r"<target dev='([^']+)'", xml)
def chain(tap):  # the tap among our elements: its shape's ports, or its own chains' map elements
    table = subprocess.run(["nft", "list", "table", "bridge", "vmguard"], capture_output=True, text=True).stdout
    return f'"{tap}"' in table
record = {"domain": sys.argv[1], "op": sys.argv[2], "taps": taps, "bound": [t for t in taps if chain(t)],
          "tap_exists": [t for t in taps if os.path.exists(f"/sys/class/net/{t}")],
          "qemu_running": subprocess.run(["pgrep", "-f", f"guest={sys.argv[1]},"], capture_output=True).returncode == 0}
with open(%r, "a") as log:
    log.write(json.dumps(record) + "\\n")
"""


def _metadata(mac, ip):
    return (f"<vmguard:nwfilter xmlns:vmguard='{NAMESPACE}'><vmguard:interface mac='{mac}'>"
            f"<vmguard:filterref filter='clean-traffic'><vmguard:parameter name='IP' value='{ip}'/>"
            "</vmguard:filterref></vmguard:interface></vmguard:nwfilter>")


def _install_hooks(tmp):
    """The role's hook, rendered and deployed as the role does, plus the probe."""
    with open(os.path.join(ROLE, "defaults", "main.yml"), encoding="utf-8") as handle:
        variables = yaml.safe_load(handle)
    variables.update(vmguard_learner_root=str(tmp / "store"), vmguard_learner_install_dir=str(tmp / "lib"),
                     vmguard_learner_python="/usr/bin/python3", ansible_managed="managed by test")
    for package, source in (("engine", "plugins/module_utils/engine"), ("libvirt_hook", "libvirt_hook")):
        shutil.copytree(os.path.join(REPO, source), tmp / "lib" / package, ignore=shutil.ignore_patterns("__pycache__"))
    hooks = tmp / "hooks"
    (hooks / "qemu.d").mkdir(parents=True)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(ROLE, "templates")),
                             undefined=jinja2.StrictUndefined)
    env.filters["quote"] = shlex.quote  # as Ansible's
    (hooks / "qemu.d" / "vmguard").write_text(env.get_template("vmguard-libvirt-hook.j2").render(**variables))
    (hooks / "qemu.d" / "zz-probe").write_text(PROBE_HOOK % str(tmp / "probe.log"))
    for script in ("vmguard", "zz-probe"):
        os.chmod(hooks / "qemu.d" / script, 0o755)
    return str(hooks)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    missing = qemu_guest.available()
    if missing:
        pytest.skip(missing)
    tmp = tmp_path_factory.mktemp("e2e")
    boot = qemu_guest.build(str(tmp))
    hooks = _install_hooks(tmp)
    with Lab("e") as lab, Oracle(lab, hooks=hooks) as oracle:
        lab.sh(lab.host, f"ip link set br0 address {GATEWAY_MAC}")
        yield lab, oracle, boot, tmp
        for name in GUESTS:
            oracle.virsh(["destroy", name], check=False)


def _start(oracle, boot, tmp, name):
    uuid, mac, ip, spoof = GUESTS[name]
    xml = qemu_guest.domain_xml(name, uuid, mac, boot, {"ip": ip, "spoof": spoof, "gw": GATEWAY, "gwmac": GATEWAY_MAC},
                                _metadata(mac, ip), console=str(tmp / f"{name}.console"))
    path = tmp / f"{name}.xml"
    path.write_text(xml)
    return oracle.virsh(["create", str(path)], check=False)


def _tap(oracle, name):
    return oracle.virsh(["domiflist", name]).stdout.split()[0]


def _pings(lab, taps, timeout=240.0, settle=4.0):
    """Echo requests to the gateway seen in the host namespace, as
    {(interface, source MAC, source IP)}, until every guest's own pings
    were seen on br0 (then ``settle`` seconds more)."""
    with inside(lab.host):
        # every protocol: a bridge port's frames reach only such sockets (before the bridge takes them)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    seen = set()
    wanted = {("br0", mac, ip) for _uuid, mac, ip, _spoof in GUESTS.values() if _uuid and mac in taps}
    deadline, done_at = time.monotonic() + timeout, None
    try:
        while time.monotonic() < (done_at or deadline):
            ready, _w, _x = select.select([sock], [], [], 0.5)
            if ready:
                data, address = sock.recvfrom(2048)
                if (len(data) >= 35 and data[12:14] == b"\x08\x00" and data[23] == 1 and data[34] == 8
                        and data[30:34] == socket.inet_aton(GATEWAY)):
                    seen.add((address[0], ":".join(f"{b:02x}" for b in data[6:12]), socket.inet_ntoa(data[26:30])))
            if done_at is None and wanted <= seen:
                done_at = time.monotonic() + settle
    finally:
        sock.close()
    return seen


def _judge(lab, oracle, names):
    """Each running guest's own pings pass, its spoofed ones (sent: seen on its tap) are dropped."""
    taps = {GUESTS[n][1]: _tap(oracle, n) for n in names}
    seen = _pings(lab, taps)
    for name in names:
        _uuid, mac, ip, spoof = GUESTS[name]
        assert ("br0", mac, ip) in seen, f"{name}'s own traffic did not pass ({sorted(seen)})"
        assert (taps[mac], mac, spoof) in seen, f"{name} sent no spoofed ping ({sorted(seen)})"
        assert ("br0", mac, spoof) not in seen, f"{name}'s spoofed ping passed"


def _probe_log(tmp):
    with open(tmp / "probe.log", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_bindings_follow_the_vm(e2e):
    lab, oracle, boot, tmp = e2e
    host = Host(str(tmp / "store"), netns=lab.host)
    started = time.monotonic()
    for name in ("vmg-a", "vmg-b"):
        done = _start(oracle, boot, tmp, name)
        assert done.returncode == 0, done.stderr
    assert (_tap(oracle, "vmg-a"), _tap(oracle, "vmg-b")) == ("vnet0", "vnet1")
    assert {p: b.owner_name for p, b in host.bindings().items()} == {"vnet0": "vmg-a", "vnet1": "vmg-b"}
    _judge(lab, oracle, ("vmg-a", "vmg-b"))
    # at the start phase the tap exists and its rules are in force, and QEMU is not running yet
    starts = [r for r in _probe_log(tmp) if r["op"] == "start"]
    assert starts and all(r["bound"] == r["taps"] == r["tap_exists"] and r["taps"] and not r["qemu_running"]
                          for r in starts), starts
    assert all(r["qemu_running"] for r in _probe_log(tmp) if r["op"] == "started")
    for name in ("vmg-a", "vmg-b"):
        oracle.virsh(["destroy", name])
    assert host.bindings() == {} and '"vnet' not in lab.nft_list()

    oracle.restart()  # as after a reboot, libvirt names taps from vnet0 again: the other order swaps them
    for name in ("vmg-b", "vmg-a"):
        done = _start(oracle, boot, tmp, name)
        assert done.returncode == 0, done.stderr
    assert (_tap(oracle, "vmg-b"), _tap(oracle, "vmg-a")) == ("vnet0", "vnet1")
    bindings = host.bindings()
    assert {p: (b.owner_name, b.mac) for p, b in bindings.items()} == {
        "vnet0": ("vmg-b", GUESTS["vmg-b"][1]), "vnet1": ("vmg-a", GUESTS["vmg-a"][1])}
    _judge(lab, oracle, ("vmg-a", "vmg-b"))
    oracle.restart()  # libvirtd reconnects to the running domains (a thread each): the hook changes nothing
    deadline = time.monotonic() + 30
    while len(reconnects := [r for r in _probe_log(tmp) if r["op"] == "reconnect"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(r["domain"] for r in reconnects) == ["vmg-a", "vmg-b"]
    assert all(r["bound"] == r["taps"] and r["qemu_running"] for r in reconnects), reconnects
    assert host.bindings() == bindings
    oracle.virsh(["destroy", "vmg-a"])
    assert set(host.bindings()) == {"vnet0"} and '"vnet1"' not in lab.nft_list()
    oracle.virsh(["destroy", "vmg-b"])
    assert host.bindings() == {}
    print(f"two guests booted twice and judged in {time.monotonic() - started:.0f} s", file=sys.stderr)


def test_metadata_set_by_virsh_and_a_failed_bind_keeps_the_domain_from_starting(e2e):
    """The migration guide's `virsh metadata` commands on a defined domain,
    and a reference to a filter that does not exist: libvirt aborts the start."""
    lab, oracle, boot, tmp = e2e
    uuid, mac, ip, spoof = GUESTS["vmg-a"]
    path = tmp / "vmg-a-defined.xml"
    path.write_text(qemu_guest.domain_xml("vmg-a", uuid, mac, boot, {"ip": ip, "spoof": spoof}))
    oracle.virsh(["define", str(path)])
    try:
        oracle.virsh(["metadata", "vmg-a", NAMESPACE, "--key", "vmguard", "--config", "--set",
                      f"<nwfilter><interface mac='{mac}'><filterref filter='no-such-filter'>"
                      f"<parameter name='IP' value='{ip}'/></filterref></interface></nwfilter>"])
        defined = Domain(oracle.virsh(["dumpxml", "--inactive", "vmg-a"]).stdout)
        assert defined.references() == {mac: FilterRef("no-such-filter", {"IP": (ip,)})}
        done = oracle.virsh(["start", "vmg-a"], check=False)
        assert done.returncode != 0
        assert "vmguard-libvirt-hook: vmg-a start: domain 'vmg-a'" in done.stderr and "no-such-filter" in done.stderr
        assert oracle.virsh(["domstate", "vmg-a"]).stdout.strip() == "shut off"
        assert subprocess.run(["pgrep", "-f", "guest=vmg-a,"], capture_output=True, check=False).returncode != 0
        assert Host(str(tmp / "store"), netns=lab.host).bindings() == {}
        oracle.virsh(["metadata", "vmg-a", NAMESPACE, "--config", "--remove"])
        assert Domain(oracle.virsh(["dumpxml", "--inactive", "vmg-a"]).stdout).references() == {}
    finally:
        oracle.virsh(["undefine", "vmg-a"], check=False)
