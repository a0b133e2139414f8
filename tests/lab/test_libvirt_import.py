"""playbooks/libvirt_import.yml against a running libvirt 9.0 host (libvirtd
in the lab's host namespace): several of libvirt's shipped filters, a custom
one and bindings with parameters. Judged on test_differential's probe battery:
libvirt's verdicts before, ours after with libvirt's bindings deleted."""

import os
import subprocess
import sys

import pytest

from lab.libvirt_oracle import Oracle
from lab.probes import Probe, run_probes
from test_ansible import collections  # noqa: F401  pylint: disable=unused-import
from test_differential import CUSTOM, _probes

pytestmark = pytest.mark.oracle

PLAYBOOK_BIN = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def _import(lab, collections_path, tmp_path, *args):  # pylint: disable=redefined-outer-name
    """Run the playbook by its name in the collection, on localhost (source and
    target); the names of the tasks that changed something."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run(["ip", "netns", "exec", lab.host, PLAYBOOK_BIN, "-i", "localhost,", "-c", "local",
                           "vmguard.nwfilter.libvirt_import", "-e", "vmguard_import_source=localhost",
                           "-e", f"vmguard_root={tmp_path / 'store'}", *args],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    changed, task = [], None
    for line in done.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK ["):line.index("]")]
        elif line.startswith("changed: [localhost]") and task not in changed:
            changed.append(task)
    return changed


def test_import_gives_the_same_verdicts(lab, collections, tmp_path):  # pylint: disable=redefined-outer-name
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    bindings = {vm.port: (vm.mac, "ssh-only", {"IP": [vm.ip]}),
                peer.port: (peer.mac, "clean-traffic-gateway", {"IP": [peer.ip], "GATEWAY_MAC": [vm.mac]}),
                "vnet9": ("52:54:00:00:00:09", "no-ping-in", {}),
                "vnet8": ("52:54:00:00:00:08", "clean-traffic", {"IP": ["192.0.2.80", "192.0.2.81"]})}
    probes = _probes(lab)
    with Oracle(lab) as oracle:
        for name, xml in CUSTOM.items():
            oracle.define_filter(name, xml)
        for port, (mac, name, params) in bindings.items():
            oracle.bind(port, mac, name, params)
        theirs = run_probes(lab, probes, wait=0.2)

        changed = _import(lab, collections, tmp_path, "--check", "--diff")
        assert changed == ["Define each filter", "Bind every interface, in one transaction"]
        assert "vmguard" not in lab.nft_list() and not os.path.exists(tmp_path / "store" / "bindings" / "vnet0.xml")
        changed = _import(lab, collections, tmp_path)
        assert changed == ["Define each filter", "Bind every interface, in one transaction"]
        for port in bindings:
            oracle.unbind(port)  # libvirt's filtering off: only ours is left
        assert "vnet0" not in subprocess.run(["ip", "netns", "exec", lab.host, "ebtables", "-t", "nat", "-L"],
                                             capture_output=True, text=True, check=True).stdout
        ours = run_probes(lab, [Probe(p.name, p.sender, p.observer, p.frame) for p in probes], wait=0.2)
        assert {p: ours[p] for p in ours if ours[p] != theirs[p]} == {}
        assert sum(theirs.values()) not in (0, len(theirs))  # the battery tells passing from dropping
        ruleset = lab.nft_list()
        changed = _import(lab, collections, tmp_path, "--check", "--diff")
        assert changed == [] and lab.nft_list() == ruleset
