"""What fleets and AWX jobs rely on, through ansible-playbook: check mode on
a fresh host writes nothing and does not fail where the real run succeeds,
and module_defaults reaches every module through the action group."""

import json
import os
import subprocess
import sys

from engine.dict_form import filter_from_dict
from engine.host import Host
from engine.model import Binding, FilterRef
from engine.store import STORE_VERSION
from test_ansible import REPO, collections, play, tasks  # noqa: F401  pylint: disable=unused-import


def test_check_mode_on_a_fresh_host_writes_nothing_and_warns(lab, collections, tmp_path):  # noqa: F811
    root = tmp_path / "store"
    before = lab.nft_list()
    others = [{"vmguard.nwfilter.nwfilter_binding": {"root": str(root), "portdev": "vnet9", "state": "absent"}},
              {"vmguard.nwfilter.nwfilter_info": {"root": str(root)}}]
    checked = play(lab, collections, tmp_path, tasks(str(root)) + others, "--check", "--diff")
    assert [t["changed"] for t in checked] == [True, True, False, False] and not any(t.get("failed") for t in checked)
    assert checked[3]["bindings"] == {} and checked[3]["filters"] == {}
    assert not root.exists() and lab.nft_list() == before
    assert checked[1]["rebuilt"] == ["vnet0"] and 'filter="web"' in checked[1]["diff"]["after"]
    assert any("binding 'vnet0' uses 'web', not defined on the host yet" in w for w in checked[1]["warnings"])
    # once stored, check mode compiles again (and still writes nothing)
    play(lab, collections, tmp_path, tasks(str(root)))
    files = sorted(os.listdir(root))
    bad = {"vmguard.nwfilter.nwfilter_binding": {"root": str(root), "portdev": "vnet1", "mac": "52:54:00:00:00:02",
                                                 "filter": "clean-traffic-gateway"}}
    failed = play(lab, collections, tmp_path, [bad], "--check")[0]
    assert failed.get("failed") and "missing variable" in failed["msg"] and sorted(os.listdir(root)) == files


def test_module_defaults_group_sets_root(lab, collections, tmp_path):  # noqa: F811
    root = tmp_path / "store"
    without_root = [{module: {k: v for k, v in args.items() if k != "root"} for module, args in task.items()}
                    for task in tasks("unused")]
    results = play(lab, collections, tmp_path, without_root + [{"vmguard.nwfilter.nwfilter_info": {"portdev": "vnet0"}}],
                   module_defaults={"group/vmguard.nwfilter.all": {"root": str(root)}})
    assert [r["changed"] for r in results] == [True, True, False] and not any(r.get("failed") for r in results)
    assert results[2]["bindings"]["vnet0"]["filter"] == "web"
    assert (root / "filters" / "web.xml").exists() and (root / "bindings" / "vnet0.xml").exists()


def test_info_returns_what_was_asked_for(lab, collections, tmp_path):  # noqa: F811
    """200 bindings: one port's report stays small (its binding and its tree's
    user filters; built-ins on request), and every key is there."""
    root = str(tmp_path / "store")
    host = Host(root, netns=lab.host)
    host.define_filter(filter_from_dict({"name": "web", "rules": [{"filterref": "clean-traffic"}]}))
    host.set_bindings([Binding(f"vm{i}", f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}", FilterRef("web", {"IP": (f"10.0.{i >> 8}.{i & 255}",)}))
                       for i in range(1, 201)])
    one, with_builtins, everything, by_name, bad = play(lab, collections, tmp_path, [
        {"vmguard.nwfilter.nwfilter_info": {"root": root, "portdev": "vm7"}},
        {"vmguard.nwfilter.nwfilter_info": {"root": root, "portdev": "vm7", "builtins": True}},
        {"vmguard.nwfilter.nwfilter_info": {"root": root}},
        {"vmguard.nwfilter.nwfilter_info": {"root": root, "name": "clean-traffic"}},
        {"vmguard.nwfilter.nwfilter_info": {"root": root, "portdev": "../x"}}])
    size = len(json.dumps({k: one[k] for k in ("filters", "bindings")}))
    assert size < 20000, size
    assert list(one["bindings"]) == ["vm7"] and list(one["filters"]) == ["web"]
    vm7 = one["bindings"]["vm7"]
    assert set(vm7) == {"portdev", "mac", "filter", "parameters", "learning", "learned", "locked", "resolved_rules",
                        "nft", "port_id", "tree", "in_force"}
    assert vm7["parameters"] == {"IP": "10.0.0.7"} and vm7["learning"] is False and '"vm7" . 10.0.0.7' in vm7["nft"]
    assert '"vm8"' not in vm7["nft"] and {"web", "clean-traffic", "no-ip-spoofing"} <= set(vm7["tree"])
    assert set(with_builtins["filters"]) == set(vm7["tree"]) and with_builtins["filters"]["clean-traffic"]["builtin"]
    assert len(everything["bindings"]) == 200 and list(everything["filters"]) == ["web"]
    assert list(by_name["filters"]) == ["clean-traffic"] and by_name["filters"]["clean-traffic"]["builtin"]
    assert bad.get("failed") and "invalid interface name '../x'" in bad["msg"]


def test_operator_safety(lab, collections, tmp_path):  # noqa: F811
    """Overriding a built-in warns and shows what each port loses; shared
    addresses warn; MAC in parameters, a bad portdev and '1_000' are refused."""
    root = str(tmp_path / "store")
    port = {"root": root, "mac": "52:54:00:00:00:01", "filter": "clean-traffic"}
    binding = "vmguard.nwfilter.nwfilter_binding"
    results = play(lab, collections, tmp_path, [
        {binding: dict(port, portdev="vnet0", parameters={"IP": "192.0.2.10"})},
        {binding: dict(port, portdev="vnet1", mac="52:54:00:00:00:02", parameters={"IP": "192.0.2.10"})},
        {"vmguard.nwfilter.nwfilter": {"root": root, "name": "no-ip-spoofing", "rules": []}},
        {binding: dict(port, portdev="vnet2", parameters={"MAC": "52:54:00:00:00:09"})},
        {binding: {"root": root, "portdev": "../x", "state": "absent"}},
        {"vmguard.nwfilter.nwfilter": {"root": root, "name": "p", "priority": "1_000", "rules": []}},
        {"vmguard.nwfilter.nwfilter": {"root": root, "name": "p", "priority": "-100", "rules": []}},
    ], "--diff")
    first, shared, override, mac_param, bad_port, underscore, decimal = results
    assert not first.get("warnings")
    assert any("IP 192.0.2.10 is bound on vnet0, vnet1" in w for w in shared["warnings"]), shared
    assert any("'no-ip-spoofing' overrides the built-in" in w and "vnet0, vnet1 lose rules" in w
               for w in override["warnings"]), override
    assert "out ipv4-ip: 500 return ip srcipaddr=192.0.2.10" in override["lost_rules"]["vnet0"]
    assert "vnet1: out ipv4-ip: 500 return ip srcipaddr=192.0.2.10" in override["diff"][1]["before"]
    assert mac_param.get("failed") and "MAC comes from mac" in mac_param["msg"]
    assert bad_port.get("failed") and "invalid interface name '../x'" in bad_port["msg"]
    assert underscore.get("failed") and "must be a whole number, not '1_000'" in underscore["msg"]
    assert decimal["changed"] and 'priority="-100"' in decimal["filter"]


def test_modules_and_service_refuse_a_newer_store(lab, collections, tmp_path):  # noqa: F811
    """The controller's modules and the deployed service each refuse, in one
    line, a store written by a newer release; nothing is applied."""
    root = tmp_path / "store"
    play(lab, collections, tmp_path, tasks(str(root)))
    newer = STORE_VERSION + 1
    assert (root / "version").read_text() == f"{STORE_VERSION}\n"
    (root / "version").write_text(f"{newer}\n")
    ruleset = lab.nft_list()
    results = play(lab, collections, tmp_path, [{"vmguard.nwfilter.nwfilter_info": {"root": str(root)}}]
                   + tasks(str(root), ip="192.0.2.11"))
    for result in results:
        assert result.get("failed") and f"format version {newer} is newer than this copy" in result["msg"], result
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "plugins", "module_utils"), REPO]))
    restore = subprocess.run(["ip", "netns", "exec", lab.host, sys.executable, "-m", "learner", "--root", str(root),
                              "--restore"], capture_output=True, text=True, env=env, check=False)
    assert restore.returncode == 1 and "restore failed: store" in restore.stderr
    assert f"format version {newer} is newer" in restore.stderr and lab.nft_list() == ruleset
