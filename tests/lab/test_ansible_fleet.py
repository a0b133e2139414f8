"""What fleets and AWX jobs rely on, through ansible-playbook: check mode on
a fresh host writes nothing and does not fail where the real run succeeds,
and module_defaults reaches every module through the action group."""

import os

from test_ansible import collections, play, tasks  # noqa: F401  pylint: disable=unused-import


def test_check_mode_on_a_fresh_host_writes_nothing_and_warns(lab, collections, tmp_path):  # noqa: F811
    root = tmp_path / "store"
    before = lab.nft_list()
    checked = play(lab, collections, tmp_path, tasks(str(root)), "--check", "--diff")
    assert [t["changed"] for t in checked] == [True, True] and not any(t.get("failed") for t in checked)
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
