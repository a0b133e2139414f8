"""The learner is told of store changes (inotify), it does not poll for them."""

import os
import select
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from engine.store import atomic_write  # noqa: E402  pylint: disable=wrong-import-position
from learner.inotify import store_events  # noqa: E402  pylint: disable=wrong-import-position


def test_a_replaced_or_removed_file_wakes_the_learner(tmp_path):
    events = store_events([str(tmp_path)])
    try:
        assert not select.select([events], [], [], 0)[0]
        start = time.perf_counter()
        atomic_write(str(tmp_path / "vnet0.json"), "{}\n")
        assert select.select([events], [], [], 1.0)[0] and time.perf_counter() - start < 0.5
        events.drain()
        assert not select.select([events], [], [], 0)[0]
        os.unlink(tmp_path / "vnet0.json")
        assert select.select([events], [], [], 1.0)[0]
    finally:
        events.close()


def test_no_directory_no_events(tmp_path):
    assert store_events([str(tmp_path / "missing")]) is None
