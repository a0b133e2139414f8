"""The modules through ansible-playbook itself, run inside the lab's host
namespace: idempotency, check mode, diff, info and clear failures."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from lab.netns import VM

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PLAYBOOK_BIN = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    """The collection as Ansible finds it: ansible_collections/vmguard/nwfilter."""
    base = tmp_path_factory.mktemp("collections")
    target = base / "ansible_collections" / "vmguard" / "nwfilter"
    target.mkdir(parents=True)
    for part in ("galaxy.yml", "meta", "plugins", "playbooks"):
        source = os.path.join(REPO, part)
        if os.path.isdir(source):
            shutil.copytree(source, target / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / part)
    return str(base)


def play(lab, collections, tmp_path, tasks, *args, **play_keys):
    """Run the tasks (in a play with ``play_keys`` added); return each task's
    registered result (failures included)."""
    out = tmp_path / "results.json"
    steps = [dict(task, register=f"r{i}", ignore_errors=True) for i, task in enumerate(tasks)]
    names = ", ".join(f"r{i}" for i in range(len(tasks)))
    steps.append({"ansible.builtin.copy": {"dest": str(out), "content": "{{ [%s] | to_json }}" % names},
                  "check_mode": False, "diff": False})
    book = tmp_path / "play.yml"
    book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": steps, **play_keys}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_HOME=str(tmp_path / "ansible-home"))
    done = subprocess.run(["ip", "netns", "exec", lab.host, PLAYBOOK_BIN, "-i", "localhost,", "-c", "local",
                           str(book), *args], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return json.loads(out.read_text())


def tasks(root, vm_port="vnet0", ip="192.0.2.10"):
    return [
        {"vmguard.nwfilter.nwfilter": {"root": root, "name": "web", "rules": [
            {"filterref": "clean-traffic"},
            {"action": "accept", "direction": "in", "tcp": {"dstportstart": 22}}]}},
        {"vmguard.nwfilter.nwfilter_binding": {"root": root, "portdev": vm_port, "mac": "52:54:00:00:00:01",
                                               "filter": "web", "parameters": {"IP": ip}}},
    ]


def test_idempotent_check_and_diff(lab, collections, tmp_path):
    root = str(tmp_path / "store")
    checked = play(lab, collections, tmp_path, tasks(root)[:1], "--check")
    assert checked[0]["changed"] and not os.path.exists(os.path.join(root, "filters", "web.xml"))
    first = play(lab, collections, tmp_path, tasks(root), "--diff")
    assert [t["changed"] for t in first] == [True, True]
    assert "<filter name=\"web\"" in first[0]["diff"]["after"]
    assert '"vnet0" . 192.0.2.10' in lab.nft_list()
    second = play(lab, collections, tmp_path, tasks(root))
    assert [t["changed"] for t in second] == [False, False]
    ruleset = lab.nft_list()
    predicted = play(lab, collections, tmp_path, tasks(root, ip="192.0.2.11"), "--check")
    assert [t["changed"] for t in predicted] == [False, True] and lab.nft_list() == ruleset
    info = play(lab, collections, tmp_path, [{"vmguard.nwfilter.nwfilter_info": {"root": root, "portdev": "vnet0"}}])
    binding = info[0]["bindings"]["vnet0"]
    assert re.search(r"chain s/\w+/o/ipv4-ip", binding["nft"]) and '"vnet0" . 192.0.2.10' in binding["nft"]
    assert "tcp sport 22" in binding["nft"] and not binding["learning"]
    assert info[0]["filters"]["web"]["builtin"] is False


@pytest.mark.parametrize("bad,words", [
    ({"vmguard.nwfilter.nwfilter": {"name": "x", "rules": [
        {"action": "drop", "direction": "in", "tcp": {"dstport": 1}}]}}, "unknown attribute 'dstport'"),
    ({"vmguard.nwfilter.nwfilter_binding": {"portdev": "vnet0", "mac": "52:54:00:00:00:01", "filter": "clean-traffic",
                                            "parameters": {"IP": "1.2.3.4; flush ruleset"}}}, "invalid value"),
    ({"vmguard.nwfilter.nwfilter_binding": {"portdev": "vnet0", "mac": "52:54:00:00:00:01",
                                            "filter": "clean-traffic-gateway"}}, "missing variable"),
    ({"vmguard.nwfilter.nwfilter": {"name": "clean-traffic", "state": "absent"}}, "built-in"),
])
def test_bad_input_fails_clearly_and_applies_nothing(lab, collections, tmp_path, bad, words):
    root = str(tmp_path / "store")
    module, args = next(iter(bad.items()))
    before = lab.nft_list()
    result = play(lab, collections, tmp_path, [{module: dict(args, root=root)}])[0]
    assert result.get("failed") and words in result["msg"] and "Traceback" not in result["msg"]
    assert lab.nft_list() == before


def test_bulk_exclusive(lab, collections, tmp_path):
    root = str(tmp_path / "store")
    play(lab, collections, tmp_path, tasks(root))
    bulk = [{"vmguard.nwfilter.nwfilter_binding": {"root": root, "exclusive": True, "bindings": [
        {"portdev": "vnet1", "mac": "52:54:00:00:00:02", "filter": "clean-traffic"},
        {"portdev": "vnet2", "mac": "52:54:00:00:00:03", "filter": "clean-traffic", "parameters": {"IP": "192.0.2.3"}},
    ]}}]
    result = play(lab, collections, tmp_path, bulk)[0]
    assert result["changed"] and result["learning"] == ["vnet1"]
    ruleset = lab.nft_list()
    # vnet1 learns its address in chains of its own, vnet2 is a port of clean-traffic's shape
    assert '"vnet0"' not in ruleset and "p/vnet1/o" in ruleset and '"vnet2" . 192.0.2.3' in ruleset
    assert not play(lab, collections, tmp_path, bulk)[0]["changed"]
    info = play(lab, collections, tmp_path, [{"vmguard.nwfilter.nwfilter_info": {"root": root}}])[0]["bindings"]
    assert (info["vnet1"]["learning"], info["vnet1"]["locked"]) == (True, {"IP": []})  # nothing locked yet
    assert (info["vnet2"]["learning"], info["vnet2"]["locked"]) == (False, {})


def test_warns_when_bridged_traffic_skips_layer3_rules(lab, collections, tmp_path):
    """Without br_netfilter's sysctls at 1 the tcp rule of 'web' sees no bridged
    packet: once a binding uses it, every module says so (the binding is still applied)."""
    root = str(tmp_path / "store")
    lab.sh(lab.host, "sysctl -qw net.bridge.bridge-nf-call-iptables=0")
    try:
        results = play(lab, collections, tmp_path, tasks(root) + [{"vmguard.nwfilter.nwfilter_info": {"root": root}}])
    finally:
        lab.sh(lab.host, "sysctl -qw net.bridge.bridge-nf-call-iptables=1")
    assert not results[0].get("warnings")  # only the filter so far
    for result in results[1:]:
        assert any("vnet0 see no bridged traffic: net.bridge.bridge-nf-call-iptables must be 1" in warning
                   for warning in result.get("warnings", [])), result
    assert not any(r.get("warnings") for r in play(lab, collections, tmp_path, tasks(root)))


def test_redefine_may_not_add_variables_while_learning(lab, collections, tmp_path):
    root = str(tmp_path / "store")
    web = tasks(root)[0]
    learning = {"vmguard.nwfilter.nwfilter_binding": {"root": root, "portdev": "vnet0", "mac": "52:54:00:00:00:01",
                                                      "filter": "web"}}
    assert play(lab, collections, tmp_path, [web, learning])[1]["learning"]
    ruleset = lab.nft_list()

    def redefined(rule):
        args = web["vmguard.nwfilter.nwfilter"]
        return {"vmguard.nwfilter.nwfilter": dict(args, rules=args["rules"] + [rule])}
    adds_ipv6, harmless = play(lab, collections, tmp_path, [
        redefined({"action": "accept", "direction": "out", "ipv6": {"srcipaddr": "$IPV6"}}),
        redefined({"action": "accept", "direction": "in", "tcp": {"dstportstart": 23}})])
    assert adds_ipv6.get("failed") and adds_ipv6["msg"] == ("filter 'web' not changed: binding 'vnet0': "
                                                            "the new tree would add IPV6 while its address is being learned")
    # the port keeps its learning rules through both: they do not depend on the rest of the tree
    assert harmless["changed"] and harmless["rebuilt"] == ["vnet0"] and lab.nft_list() == ruleset


def _binding_xml(portdev, mac, ip):
    """As `virsh nwfilter-binding-dumpxml` prints it."""
    return f"""<filterbinding>
  <owner>
    <name>vm-{portdev}</name>
    <uuid>6f1c1bd4-3e0b-4d35-9c3e-0a4c5d6e7f{portdev[-1]}0</uuid>
  </owner>
  <portdev name='{portdev}'/>
  <mac address='{mac}'/>
  <filterref filter='clean-traffic'>
    <parameter name='IP' value='{ip}'/>
  </filterref>
</filterbinding>
"""


def test_libvirt_binding_xml(lab, collections, tmp_path):
    root = str(tmp_path / "store")
    single = {"vmguard.nwfilter.nwfilter_binding": {"root": root, "xml": _binding_xml("vnet0", VM[0], VM[1])}}
    bulk = {"vmguard.nwfilter.nwfilter_binding": {"root": root, "bindings": [
        {"xml": _binding_xml("vnet1", "52:54:00:00:00:03", "192.0.2.3")},
        {"portdev": "vnet2", "mac": "52:54:00:00:00:04", "filter": "clean-traffic", "parameters": {"IP": "192.0.2.4"}}]}}
    checked = play(lab, collections, tmp_path, [single, bulk], "--check", "--diff")
    assert [r["changed"] for r in checked] == [True, True] and '"vnet0"' not in lab.nft_list()
    assert "<name>vm-vnet0</name>" in checked[0]["diff"]["after"] and "192.0.2.3" in checked[1]["diff"]["after"]
    assert [r["changed"] for r in play(lab, collections, tmp_path, [single, bulk])] == [True, True]
    assert all(f'"{port}" . 192.0.2.' in lab.nft_list() for port in ("vnet0", "vnet1", "vnet2"))
    assert [r["changed"] for r in play(lab, collections, tmp_path, [single, bulk], "--check")] == [False, False]
    mixed = {"vmguard.nwfilter.nwfilter_binding": {"root": root, "bindings": [
        {"xml": _binding_xml("vnet1", "52:54:00:00:00:03", "192.0.2.3"), "portdev": "vnet1"}]}}
    bad = {"vmguard.nwfilter.nwfilter_binding": {"root": root, "xml": "<filterbinding><portdev name='x'/>"}}
    gone = {"vmguard.nwfilter.nwfilter_binding": {"root": root, "xml": _binding_xml("vnet0", VM[0], VM[1]),
                                                  "state": "absent"}}
    mixed_result, bad_result, gone_result = play(lab, collections, tmp_path, [mixed, bad, gone])
    assert mixed_result["msg"] == "a binding given as xml takes no other keys, found portdev"
    assert bad_result["failed"] and "malformed XML" in bad_result["msg"]
    assert gone_result["changed"] and '"vnet0"' not in lab.nft_list()
