"""`make setup` puts a vmguard-learner command in the venv that runs this
clone's service (checked with a stand-in venv: the real one is left alone)."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(shutil.which("make") is None, reason="make is missing")
def test_make_puts_the_command_in_the_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    (venv / ".installed").touch()  # newer than requirements.txt: the venv counts as installed, nothing is downloaded
    os.utime(venv / ".installed", (4e9, 4e9))
    subprocess.run(["make", "-s", "-C", REPO, f"VENV={venv}", f"{venv}/bin/vmguard-learner"], check=True)
    done = subprocess.run([str(venv / "bin" / "vmguard-learner"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "usage: vmguard-learner" in done.stdout
