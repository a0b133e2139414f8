"""The learner role's files, checked without a systemd host: the units pass
`systemd-analyze verify`, and their ExecStart command lines, deployed as the
role deploys them, run in a lab namespace (restore, then the service)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jinja2
import pytest
import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ROLE = os.path.join(REPO, "roles", "learner")


@pytest.fixture
def deployed(tmp_path):
    """The role's deployment into tmp_path: code, command, config and units."""
    with open(os.path.join(ROLE, "defaults", "main.yml"), encoding="utf-8") as handle:
        variables = yaml.safe_load(handle)
    variables.update(vmguard_learner_root=str(tmp_path / "store"), vmguard_learner_state_dir=str(tmp_path / "state"),
                     vmguard_learner_install_dir=str(tmp_path / "lib"), vmguard_learner_python=sys.executable,
                     vmguard_learner_command=str(tmp_path / "vmguard-learner"), ansible_managed="managed by test",
                     vmguard_learner_pyroute2_pip="")  # Debian's choice (vars/Debian.yml)
    for directory in ("store", "state"):
        (tmp_path / directory).mkdir()
    shutil.copytree(os.path.join(REPO, "plugins", "module_utils", "engine"), tmp_path / "lib" / "engine")
    shutil.copytree(os.path.join(REPO, "learner"), tmp_path / "lib" / "learner")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(ROLE, "templates")), undefined=jinja2.StrictUndefined)
    for template, target in (("learner.conf.j2", tmp_path / "store" / "learner.conf"),
                             ("vmguard-learner.j2", tmp_path / "vmguard-learner"),
                             ("vmguard-learner.service.j2", tmp_path / "vmguard-learner.service"),
                             ("vmguard-restore.service.j2", tmp_path / "vmguard-restore.service")):
        target.write_text(env.get_template(template).render(**variables))
    os.chmod(tmp_path / "vmguard-learner", 0o755)
    return tmp_path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_verify(deployed):
    done = subprocess.run(["systemd-analyze", "verify", str(deployed / "vmguard-learner.service"),
                           str(deployed / "vmguard-restore.service")], capture_output=True, text=True, check=False)
    problems = [line for line in done.stderr.splitlines() if "vmguard" in line]
    assert done.returncode == 0 and not problems, done.stderr


def _settings(unit):
    """{key: [values]} of a unit file (a key may be given more than once, values are space-separated lists)."""
    found = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key, []).extend(value.split())
    return found


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl is not installed")
def test_restore_runs_again_when_another_firewall_starts_restarts_or_reloads(deployed):
    """nftables.service flushes the ruleset on start, restart, reload and stop: the restore unit follows it
    (and firewalld). `systemctl --root` enables it offline: the links it makes are what systemd would use."""
    unit = deployed / "vmguard-restore.service"
    settings = _settings(unit)
    others = {"nftables.service", "firewalld.service"}
    assert others <= set(settings["After"]) and others == set(settings["PartOf"]) == set(settings["ReloadPropagatedFrom"])
    assert settings["ExecReload"] == settings["ExecStart"]
    system = deployed / "root" / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    shutil.copy(unit, system)
    done = subprocess.run(["systemctl", f"--root={deployed / 'root'}", "enable", unit.name],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for wanting in ("multi-user.target", "nftables.service", "firewalld.service"):
        assert (system / f"{wanting}.wants" / unit.name).is_symlink()


def _exec_start(unit):
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            return line[len("ExecStart="):].split()
    raise AssertionError("no ExecStart")


def test_exec_start_lines_run_in_the_lab(lab, deployed):
    restore = subprocess.run(["ip", "netns", "exec", lab.host] + _exec_start(deployed / "vmguard-restore.service"),
                             capture_output=True, text=True, check=False)
    assert restore.returncode == 0 and "restored 0 bindings" in restore.stderr
    service = subprocess.Popen(["ip", "netns", "exec", lab.host] + _exec_start(deployed / "vmguard-learner.service"),
                               stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    assert service.poll() is None  # runs in the foreground
    service.send_signal(signal.SIGINT)
    assert service.wait(timeout=10) == 0


MOLECULE = os.path.join(os.path.dirname(sys.executable), "molecule")
COLLECTIONS = os.path.join(REPO, ".build", "collections")


@pytest.mark.skipif(not os.path.exists(MOLECULE), reason="molecule is not installed (make setup installs it)")
@pytest.mark.skipif(not os.path.isdir(COLLECTIONS), reason="the collection is not built (make collection)")
def test_molecule_scenario_converges_verifies_and_is_idempotent(tmp_path):
    """`molecule test`: converge, converge again with changed=0, verify, clean up.
    The scenario's directory is the test's own: molecule names its default after
    the role's directory, which every checkout of the project shares."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], NO_COLOR="1",
               MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule"))
    done = subprocess.run([MOLECULE, "test"], cwd=ROLE, env=env, capture_output=True, text=True,
                          check=False, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "idempotence: Executed: Successful" in done.stdout + done.stderr
