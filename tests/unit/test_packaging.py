"""What users and execution environments get: the tarball `ansible-galaxy
collection build` makes (only what users need), its dependency declarations
as ansible-builder reads them, a valid ansible-builder build context, module
docs that state the managed host's requirements, the oldest Python the
managed-host code needs, and a changelog antsibull-changelog accepts."""

import json
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.dirname(sys.executable)
MODULES = ("nwfilter", "nwfilter_binding", "nwfilter_info", "network", "network_info")


def run(*argv, cwd=REPO, **env):
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                          env=dict(os.environ, **env))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    run(os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(out), REPO)
    (found,) = out.glob("vmguard-nwfilter-*.tar.gz")
    return found


@pytest.fixture(scope="module")
def installed(tarball, tmp_path_factory):
    """The collection installed from the tarball, as a user gets it."""
    path = tmp_path_factory.mktemp("installed")
    run(os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", "-p", str(path), str(tarball),
        ANSIBLE_HOME=str(path / "home"))
    return path


def test_tarball_ships_what_users_need_and_nothing_else(tarball):
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    tops = {name.split("/")[0] for name in names}
    assert tops == {"FILES.json", "MANIFEST.json", "LICENSE", "README.md", "requirements.txt", "bindep.txt",
                    "changelogs", "docs", "learner", "libvirt_hook", "meta", "playbooks", "plugins", "roles"}
    for needed in ("meta/runtime.yml", "meta/execution-environment.yml", "plugins/doc_fragments/host.py",
                   "plugins/module_utils/engine/host.py", "learner/service.py", "libvirt_hook/__main__.py", "roles/learner/tasks/main.yml",
                   "changelogs/changelog.yaml", *(f"plugins/modules/{m}.py" for m in MODULES)):
        assert needed in names, needed
    unwanted = [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/molecule" in n
                or any(part.startswith(".") for part in n.split("/"))]
    assert not unwanted
    with tarfile.open(tarball) as archive:
        license_text = archive.extractfile("LICENSE").read().decode()
        manifest = json.load(archive.extractfile("MANIFEST.json"))["collection_info"]
    assert "GNU GENERAL PUBLIC LICENSE" in license_text and "Version 3" in license_text
    assert manifest["license"] == ["GPL-3.0-or-later"]
    links = ("repository", "homepage", "issues", "documentation")
    assert not any("example" in str(manifest.get(key) or "") for key in links)


def test_execution_environment_needs_nothing_beyond_ansible_core(installed, tmp_path):
    """ansible-builder's own introspection of the installed collection: no
    Python package, and system packages only under the managed-host profiles,
    which the image build's `bindep -l newline` (no profile) leaves out."""
    found = yaml.safe_load(run(os.path.join(BIN, "ansible-builder"), "introspect", str(installed)))
    assert found["python"] == [] and "nftables [target]" in found["system"][0], found
    (tmp_path / "bindep.txt").write_text("\n".join(found["system"]) + "\n")
    assert run(os.path.join(BIN, "bindep"), "-f", str(tmp_path / "bindep.txt"), "-l", "newline").strip() == ""
    assert "nftables" in run(os.path.join(BIN, "bindep"), "-f", str(tmp_path / "bindep.txt"), "-l", "newline", "target")


def test_ansible_builder_creates_a_build_context(tarball, tmp_path):
    """An execution environment with the collection from its tarball: the
    context holds the image definition, the tarball and the requirement the
    image's `ansible-galaxy collection install` reads (no container runtime
    here, so the image itself is not built)."""
    (tmp_path / "requirements.yml").write_text(yaml.safe_dump(
        {"collections": [{"name": f"/build/collections/{tarball.name}", "type": "file"}]}))
    (tmp_path / "execution-environment.yml").write_text(yaml.safe_dump({
        "version": 3,
        "images": {"base_image": {"name": "quay.io/ansible/awx-ee:latest"}},
        "dependencies": {"galaxy": "requirements.yml", "ansible_core": {"package_pip": "ansible-core==2.19.14"},
                         "ansible_runner": {"package_pip": "ansible-runner"}},
        "additional_build_files": [{"src": str(tarball), "dest": "collections"}],
    }))
    run(os.path.join(BIN, "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", "context",
        "--output-filename", "Containerfile", cwd=str(tmp_path))
    context = tmp_path / "context"
    containerfile = (context / "Containerfile").read_text()
    assert "COPY _build /build" in containerfile and "ansible-galaxy collection install" in containerfile
    assert (context / "_build" / "collections" / tarball.name).is_file()
    assert f"/build/collections/{tarball.name}" in (context / "_build" / "requirements.yml").read_text()


def test_module_docs_state_requirements_and_attributes(installed):
    docs = json.loads(run(os.path.join(BIN, "ansible-doc"), "--json", *(f"vmguard.nwfilter.{m}" for m in MODULES),
                          ANSIBLE_COLLECTIONS_PATH=str(installed), ANSIBLE_HOME=str(installed / "home")))
    for module in MODULES:
        doc = docs[f"vmguard.nwfilter.{module}"]["doc"]
        assert any("Python 3.9" in line and "libnftables" in line for line in doc["requirements"]), module
        assert set(doc["attributes"]) >= {"check_mode", "diff_mode", "platform", "action_group"}
        assert doc["attributes"]["check_mode"]["support"] == "full"
        assert doc["attributes"]["action_group"]["membership"] == ["vmguard.nwfilter.all"]
        assert doc["options"]["root"]["default"] == "/etc/vmguard"


def test_managed_host_code_runs_on_python_3_9():
    """The modules, the engine and the learner run on the managed host: vermin
    finds nothing that needs a Python newer than the 3.9 the docs promise."""
    paths = [os.path.join(REPO, p) for p in ("plugins/modules", "plugins/module_utils", "learner")]
    out = run(os.path.join(BIN, "vermin"), "--no-tips", "--violations", "--eval-annotations", "-t=3.9-", *paths)
    assert "Target versions not met" not in out, out


def test_changelog_lints_clean():
    run(os.path.join(BIN, "antsibull-changelog"), "lint")
    run(os.path.join(BIN, "antsibull-changelog"), "lint-changelog-yaml", "changelogs/changelog.yaml")
    fragments = [yaml.safe_load(open(os.path.join(REPO, "changelogs", "fragments", name), encoding="utf-8"))
                 for name in os.listdir(os.path.join(REPO, "changelogs", "fragments"))]
    assert any("release_summary" in fragment for fragment in fragments)
