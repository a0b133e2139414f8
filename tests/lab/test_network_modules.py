"""The network and network_info modules through ansible-playbook, inside the
lab's host namespace: check mode, diff, idempotence, bulk and exclusive, the
XML form, state absent, and bad input failing in one line with nothing applied."""

from test_ansible import collections, play  # noqa: F401  pylint: disable=unused-import,import-error

NAT = {"name": "lab", "bridge": "br0", "forward": {"mode": "nat", "dev": "ext0"}, "ipv4": ["192.0.2.1/24"]}
ISOLATED_XML = "<network><name>iso</name><bridge name='br9'/><ip address='10.9.0.1' prefix='24'/></network>"


def test_check_diff_idempotent_info_absent(lab, collections, tmp_path):  # noqa: F811
    root = str(tmp_path / "store")
    task = {"vmguard.nwfilter.network": dict(NAT, root=root)}
    checked = play(lab, collections, tmp_path, [task], "--check", "--diff")[0]
    assert checked["changed"] and "vmguard-net" not in lab.nft_list()
    # one play (each ansible-playbook run costs seconds): define twice, report, replace in bulk, remove twice
    bulk = {"vmguard.nwfilter.network": {"root": root, "exclusive": True, "networks": [{"xml": ISOLATED_XML}]}}
    absent = {"vmguard.nwfilter.network": {"root": root, "name": "iso", "state": "absent"}}
    first, second, info, replaced, gone, again = play(
        lab, collections, tmp_path, [task, task, {"vmguard.nwfilter.network_info": {"root": root}}, bulk, absent,
                                     absent], "--diff")
    assert first["changed"] and "<forward mode=\"nat\" dev=\"ext0\" />" in first["diff"]["after"]
    assert not second["changed"]
    shown = info["networks"]["lab"]
    assert shown["enforced"] and shown["forward"] == {"mode": "nat", "dev": "ext0"}
    assert 'oifname "ext0" meta l4proto tcp masquerade to :1024-65535' in shown["nft"]
    assert replaced["changed"] and replaced["networks"] == ["iso", "lab"] and "<name>iso</name>" in replaced["diff"]["after"]
    assert gone["changed"] and not again["changed"] and "vmguard-net" not in lab.nft_list()


BAD = [
    (dict(NAT, forward={"mode": "nat", "dev": "br0"}), "forward dev 'br0' is the network's own bridge"),
    (dict(NAT, ipv4=["192.0.2.0/24"]), "is not a host address"),
    (dict(NAT, nat={"ports": "3000-2000"}), "nat port range 3000-2000 is reversed"),
    (dict(NAT, bridge="br 0"), "bridge"),
    ({"xml": "<network><name>x</name><forward mode='vepa'/><bridge name='b'/></network>"}, "forward mode 'vepa'"),
    (dict(NAT, name="second", bridge="br6", ipv4=["10.5.0.9/16"]), "10.5.0.0/24 and 10.5.0.0/16 overlap"),
]


def test_bad_input_fails_clearly_and_applies_nothing(lab, collections, tmp_path):  # noqa: F811
    root = str(tmp_path / "store")
    first = {"vmguard.nwfilter.network": dict(NAT, name="first", bridge="br5", ipv4=["10.5.0.1/24"], root=root)}
    results = play(lab, collections, tmp_path, [first] + [{"vmguard.nwfilter.network": dict(bad, root=root)}
                                                          for bad, _words in BAD])
    ruleset = lab.nft_list()
    for result, (_bad, words) in zip(results[1:], BAD):
        assert result.get("failed") and words in result["msg"], result
        assert "Traceback" not in result["msg"] and "\n" not in result["msg"]
    assert "n/first/i" in ruleset and 'iifname "br0"' not in ruleset and "br6" not in ruleset
