"""playbooks/fleet.yml with its example inventory, as an AWX job runs it on
one host (vmhost1, here the lab's host namespace): --check --diff first
writes nothing and shows the change, the real run binds exactly host_vars'
interfaces, a rerun changes nothing, and on real packets the group's web-vm
filter lets a TCP connection to port 22 of web1 (vnet0) through and drops
one to port 80."""

import json
import os
import subprocess
import sys

from scapy.all import IP, TCP, Ether  # pylint: disable=no-name-in-module

from lab.probes import Probe, run_probes, tagged
from test_ansible import PLAYBOOK_BIN, REPO, collections  # noqa: F401  pylint: disable=unused-import


def fleet(lab, collections, tmp_path, *args):  # noqa: F811
    """Run the example on vmhost1; return the bindings task's result and the
    play recap's changed count."""
    extra = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False,
             "vmguard_root": str(tmp_path / "store")}
    out = tmp_path / "bound.json"
    book = tmp_path / "run.yml"
    book.write_text(json.dumps([
        {"ansible.builtin.import_playbook": os.path.join(REPO, "playbooks", "fleet.yml")},
        {"hosts": "vmhost1", "gather_facts": False, "tasks": [{"ansible.builtin.copy": {
            "dest": str(out), "content": "{{ vmguard_bound | to_json }}"}, "check_mode": False, "diff": False}]}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_HOME=str(tmp_path / "ansible-home"),
               NO_COLOR="1")
    done = subprocess.run(["ip", "netns", "exec", lab.host, PLAYBOOK_BIN, "-i",
                           os.path.join(REPO, "playbooks", "inventory", "fleet"), "--limit", "vmhost1",
                           "-e", json.dumps(extra), str(book), *args], capture_output=True, text=True, env=env,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    recap = done.stdout[done.stdout.rindex("PLAY RECAP"):]
    return json.loads(out.read_text()), int(recap.split("changed=")[1].split()[0]), done.stdout + done.stderr


def test_fleet_playbook_check_first_then_apply(lab, collections, tmp_path):  # noqa: F811
    before = lab.nft_list()
    bound, _changed, shown = fleet(lab, collections, tmp_path, "--check", "--diff")
    assert bound["changed"] and bound["rebuilt"] == ["vnet0", "vnet1", "vnet2"]
    assert "<filterbinding" in bound["diff"]["after"] and "<name>web1</name>" in bound["diff"]["after"]
    assert "binding 'vnet0' uses 'web-vm', not defined on the host yet" in shown
    assert not (tmp_path / "store").exists() and lab.nft_list() == before
    bound, _changed, _shown = fleet(lab, collections, tmp_path)
    assert bound["changed"] and bound["learning"] == ["vnet2"]
    assert sorted(os.listdir(tmp_path / "store" / "bindings")) == ["vnet0.xml", "vnet1.xml", "vnet2.xml"]
    bound, changed, _shown = fleet(lab, collections, tmp_path)
    assert not bound["changed"] and changed == 1  # only the test's own copy of the result

    vm, peer = lab.guests["vm"], lab.guests["peer"]
    to_web1 = Ether(src=peer.mac, dst=vm.mac) / IP(src=peer.ip, dst=vm.ip)
    probes = [Probe(f"tcp {port}", "peer", "vm", tagged(to_web1 / TCP(sport=40000 + port, dport=port, flags="S")))
              for port in (22, 80)]
    assert run_probes(lab, probes) == {"tcp 22": True, "tcp 80": False}
