"""The learner role's per-OS choices, with each distribution's facts set by
hand (no other distribution runs here): the role's platform step in check
mode picks the packages and where pyroute2 comes from, and the command it
deploys is rendered with them; unsupported hosts are refused in one message.
The whole role in check mode on this Debian machine writes nothing, and
without gathered facts it gathers its own and refuses a host without systemd."""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.dirname(sys.executable)
DEBIAN_PACKAGES = ["nftables", "python3-pyroute2"]


def facts(distribution, version, family, pkg_mgr, service_mgr="systemd"):
    return {"distribution": distribution, "distribution_version": version,
            "distribution_major_version": version.split(".")[0], "os_family": family, "pkg_mgr": pkg_mgr,
            "service_mgr": service_mgr}


FACTS = ("distribution", "distribution_version", "distribution_major_version", "os_family", "pkg_mgr", "service_mgr")
CHOSEN = {  # host: (facts, packages, pyroute2 from pip)
    "debian12": (facts("Debian", "12.11", "Debian", "apt"), DEBIAN_PACKAGES, ""),
    "ubuntu2204": (facts("Ubuntu", "22.04", "Debian", "apt"), DEBIAN_PACKAGES, ""),
    "ubuntu2404": (facts("Ubuntu", "24.04", "Debian", "apt"), DEBIAN_PACKAGES, ""),
    "rhel9": (facts("RedHat", "9.4", "RedHat", "dnf"), ["nftables", "python3-pip"], "pyroute2==0.9.7"),
    "rocky9": (facts("Rocky", "9.5", "RedHat", "dnf"), ["nftables", "python3-pip"], "pyroute2==0.9.7"),
    "alma9": (facts("AlmaLinux", "9.5", "RedHat", "dnf"), ["nftables", "python3-pip"], "pyroute2==0.9.7"),
    "fedora41": (facts("Fedora", "41", "RedHat", "dnf5"), DEBIAN_PACKAGES, ""),
    "tumbleweed": (facts("openSUSE Tumbleweed", "20251101", "Suse", "zypper"), DEBIAN_PACKAGES, ""),
}
REFUSED = {  # host: (facts, words of the one message)
    "ubuntu2004": (facts("Ubuntu", "20.04", "Debian", "apt"), "this host is Ubuntu 20.04"),
    "centos7": (facts("CentOS", "7.9", "RedHat", "yum"), "supports Debian 12+, Ubuntu 22.04+, the RHEL 9 family"),
    "gentoo": (facts("Gentoo", "2.17", "Gentoo", "portage"), "this host is Gentoo 2.17"),
    "sysvinit": (facts("Debian", "12.11", "Debian", "apt", "sysvinit"),
                 "this host's service manager is sysvinit: set vmguard_learner_manage_units=false"),
    "oldpython": (facts("openSUSE Leap", "15.6", "Suse", "zypper"),
                  "needs Python 3.9 or later, and {python} is 3.6: set vmguard_learner_python"),
}


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    base = tmp_path_factory.mktemp("collections")
    target = base / "ansible_collections" / "vmguard" / "nwfilter"
    target.mkdir(parents=True)
    for part in ("galaxy.yml", "meta", "plugins", "roles", "learner", "libvirt_hook"):
        source = os.path.join(REPO, part)
        if os.path.isdir(source):
            shutil.copytree(source, target / part, ignore=shutil.ignore_patterns("__pycache__", "molecule"))
        else:
            shutil.copy(source, target / part)
    return base


def playbook(tmp_path, collections, plays, *args):
    book = tmp_path / "play.yml"
    book.write_text(json.dumps(plays))
    hosts = {name: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
             for name in list(CHOSEN) + list(REFUSED) + ["here"]}
    (tmp_path / "inventory.json").write_text(json.dumps({"all": {"hosts": hosts}}))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_HOME=str(tmp_path / "home"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_FORKS="4")
    return subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", str(tmp_path / "inventory.json"), str(book),
                           *args], capture_output=True, text=True, env=env, check=False)


def test_per_os_choices_and_refusals_in_check_mode(tmp_path, collections):
    old_python = tmp_path / "python3.6"
    old_python.write_text("#!/bin/sh\necho 3.6\n")
    old_python.chmod(0o755)
    command = collections / "ansible_collections/vmguard/nwfilter/roles/learner/templates/vmguard-learner.j2"
    out = tmp_path / "out"
    out.mkdir()
    given = {name: value[0] for name, value in {**CHOSEN, **REFUSED}.items()}
    play = {"hosts": ",".join(given), "gather_facts": False, "vars": {"given": given}, "tasks": [
        {"ansible.builtin.set_fact": dict({key: f"{{{{ given[inventory_hostname].{key} }}}}" for key in FACTS},
                                          cacheable=True)},
        {"block": [
            {"ansible.builtin.include_role": {"name": "vmguard.nwfilter.learner", "tasks_from": "platform",
                                              "public": True}},
            {"ansible.builtin.copy": {"dest": f"{out}/{{{{ inventory_hostname }}}}.json", "content": (
                "{{ {'packages': vmguard_learner_packages, 'pip': vmguard_learner_pyroute2_pip,"
                f" 'command': lookup('ansible.builtin.template', '{command}')}} | to_json }}}}")},
             "check_mode": False}],
         "rescue": [{"ansible.builtin.copy": {"dest": f"{out}/{{{{ inventory_hostname }}}}.json",
                                              "content": "{{ {'failed': ansible_failed_result.msg} | to_json }}"},
                     "check_mode": False}]},
    ]}
    done = playbook(tmp_path, collections, [play], "--check", "-e",
                    json.dumps({"vmguard_learner_python": "{{ '%s' if inventory_hostname == 'oldpython' else '%s' }}"
                                % (old_python, sys.executable)}))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for name, (_facts, packages, pip) in CHOSEN.items():
        result = json.loads((out / f"{name}.json").read_text())
        assert result.get("packages") == packages and result["pip"] == pip, (name, result)
        vendor = ":/usr/lib/vmguard/vendor" if pip else ""
        assert f"PYTHONPATH=/usr/lib/vmguard{vendor} exec {sys.executable} -m learner" in result["command"], name
    for name, (_facts, words) in REFUSED.items():
        result = json.loads((out / f"{name}.json").read_text())
        assert words.format(python=old_python) in result.get("failed", ""), (name, result)


def test_whole_role_in_check_mode_gathers_facts_and_refuses_clearly(tmp_path, collections):
    """On this machine (Debian 12, no systemd as PID 1): with facts not
    gathered, the role gathers them and refuses rather than deploying units
    nothing starts; with vmguard_learner_manage_units=false, check mode runs
    the whole role (apt included) and writes nothing."""
    sandbox = tmp_path / "host"
    paths = {f"vmguard_learner_{name}": str(sandbox / path) for name, path in (
        ("root", "etc/vmguard"), ("state_dir", "var/lib/vmguard"), ("install_dir", "usr/lib/vmguard"),
        ("command", "usr/local/sbin/vmguard-learner"), ("unit_dir", "etc/systemd/system"),
        ("sysctl_dir", "etc/sysctl.d"), ("modules_load_dir", "etc/modules-load.d"))}
    role = {"hosts": "here", "gather_facts": False, "roles": [{"role": "vmguard.nwfilter.learner"}]}
    refused = playbook(tmp_path, collections, [role], "--check", "-e", json.dumps(paths))
    assert refused.returncode != 0 and "service manager is" in refused.stdout, refused.stdout[-3000:]
    assert "manage_units=false" in refused.stdout
    checked = playbook(tmp_path, collections, [role], "--check", "-e",
                       json.dumps(dict(paths, vmguard_learner_manage_units=False)))
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
    assert "Gather the facts the role needs" in checked.stdout and not sandbox.exists()
