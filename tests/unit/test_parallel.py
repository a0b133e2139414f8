"""Sharing work among forked copies of the process (engine.parallel): the
results are the sequential run's, in order, whatever happens to a worker."""

import fcntl
import os
import threading

import pytest

from engine import parallel
from engine.errors import NwfilterError


FORK_SAFE = parallel.fork_safe  # before the fixture below replaces it


@pytest.fixture(autouse=True)
def four_cores(monkeypatch):
    """Four cores, and the threads other tests of this process may have left are no obstacle."""
    monkeypatch.setattr(parallel, "_cores", lambda: 4)
    monkeypatch.setattr(parallel, "fork_safe", lambda _threads: True)


def _square_and_pid(item):
    return item * item, os.getpid()


def test_the_work_is_shared_and_the_results_kept_in_order():
    found = parallel.map_on_cores(_square_and_pid, list(range(1000)))
    assert [square for square, _pid in found] == [item * item for item in range(1000)]
    assert len({pid for _square, pid in found}) == 4 and os.getpid() in {pid for _square, pid in found}


def test_few_items_stay_in_this_process():
    assert parallel.workers(parallel.PER_WORKER * 2 - 1) == 1
    found = parallel.map_on_cores(_square_and_pid, list(range(150)))
    assert {pid for _square, pid in found} == {os.getpid()}


def test_an_error_is_the_one_the_sequential_run_raises():
    parent = os.getpid()

    def work(item):
        if item in (5, 600) or (item == 2 and os.getpid() != parent):  # item 2 fails only in a worker
            raise NwfilterError(f"item {item} is wrong")
        return item

    with pytest.raises(NwfilterError, match="item 5 is wrong"):
        parallel.map_on_cores(work, list(range(1000)))


def test_a_worker_that_dies_is_replaced_by_this_process():
    parent = os.getpid()

    def work(item):
        if item == 401 and os.getpid() != parent:
            os._exit(3)  # pylint: disable=protected-access
        return item

    assert parallel.map_on_cores(work, list(range(1000))) == list(range(1000))


def test_no_fork_beside_a_thread_that_may_hold_a_lock():
    release = threading.Event()
    idle = threading.Thread(target=release.wait, name=f"{parallel.IDLE_THREAD} nft test")
    busy = threading.Thread(target=release.wait)
    for thread in (idle, busy):
        thread.start()
    try:
        here = threading.current_thread()
        # a namespace's nft thread waiting for its next job is no obstacle
        assert FORK_SAFE([here, idle]) is True
        assert FORK_SAFE([here, idle, busy]) is False
    finally:
        release.set()
        for thread in (idle, busy):
            thread.join()
    assert FORK_SAFE([here, idle, busy]) is True  # ended


def test_a_thread_that_may_hold_a_lock_keeps_the_work_here(monkeypatch):
    monkeypatch.setattr(parallel, "fork_safe", lambda _threads: False)
    assert parallel.workers(1000) == 1
    found = parallel.map_on_cores(_square_and_pid, list(range(1000)))
    assert {pid for _square, pid in found} == {os.getpid()}


def _open_files(_item):
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:  # the listing's own
            pass
    return found


def test_a_worker_holds_nothing_of_the_parent_open(tmp_path):
    """Not the store's lock above all (flock: a forked copy shares it): it is
    free the moment the parent ends, whatever a worker is still doing."""
    lock = tmp_path / ".lock"
    with open(lock, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        found = parallel.map_on_cores(_open_files, list(range(400)))
    assert str(lock) in found[0]  # this process's own share
    assert not any(str(lock) in files for files in found[1:4])  # the three workers'
