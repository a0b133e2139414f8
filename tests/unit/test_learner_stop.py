"""SIGTERM (systemd's stop) and ^C end the service loop wherever the signal
lands. A handler that raised SystemExit once lost the stop: Python ran it
inside a weakref callback of an import, where an exception is only printed,
and the service ran on until the test killed it."""

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from lab.service import clone_env  # noqa: E402  pylint: disable=wrong-import-position

SCRIPT = """
import os, signal, sys, time
from engine.host import Host
from learner.__main__ import stop_signals
from learner.leases import Leases
from learner.service import Learner

stop = stop_signals()
learner = Learner(Host(sys.argv[1]), Leases(os.path.join(sys.argv[1], "leases.json")))

class Swallows:
    def __del__(self):  # whatever a handler raises here, Python prints and drops
        os.kill(os.getpid(), signal.SIG{name})
        for _ in range(100):
            pass

Swallows()
started = time.monotonic()
learner.run(rescan_every=0.05, until=started + 10, stop=stop)
print(f"stopped after {{time.monotonic() - started:.3f}} s")
"""


@pytest.mark.parametrize("name", ["TERM", "INT"])
def test_a_signal_delivered_where_exceptions_are_dropped_still_stops_the_loop(tmp_path, name):
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(name=name), str(tmp_path / "store")], env=clone_env(),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert float(done.stdout.split()[2]) < 1.0, done.stdout
