"""The service as it runs on a host (`python -m learner`, a process of its
own) inside a lab's host namespace, with its log collected for the caller."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Dict, List

from .netns import Lab

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
READY = "watching nftables"  # logged once the service has compared at start and watches nftables


def clone_env(**extra: str) -> Dict[str, str]:
    """The environment in which ``python -m learner`` (or ``libvirt_hook``) runs this clone's code."""
    return dict(os.environ, PYTHONPATH=f"{REPO}:{os.path.join(REPO, 'plugins', 'module_utils')}", **extra)


class Service:
    """``with Service(lab, root) as service:`` the service runs (and is ready to
    repair) inside the block; ``service.log`` holds its log lines so far."""

    def __init__(self, lab: Lab, root: str, debug: bool = False) -> None:
        self.argv = ["ip", "netns", "exec", lab.host, sys.executable, "-m", "learner", "--root", root,
                     "--leases", os.path.join(root, "leases.json"), "--rescan", "0.2"]
        self.env = clone_env(**({"VMGUARD_DEBUG": "1"} if debug else {}))
        self.log: List[str] = []
        self.process: "subprocess.Popen[str] | None" = None

    def start(self, timeout: float = 10.0) -> "Service":
        self.process = subprocess.Popen(self.argv, env=self.env, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._collect, args=(self.process,), daemon=True).start()
        self.wait_for(READY, timeout)
        return self

    def _collect(self, process: "subprocess.Popen[str]") -> None:
        for line in process.stderr:
            self.log.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 5.0) -> str:
        """The first log line containing ``text`` (waiting for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.log if text in line]
            if found:
                return found[0]
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the service exited ({self.process.returncode}): {self.log[-5:]}")
            time.sleep(0.01)
        raise AssertionError(f"no log line with {text!r} within {timeout} s: {self.log[-5:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
