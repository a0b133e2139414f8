"""Sharing work among forked copies of the process (engine.parallel): the
results are the sequential run's, in order, whatever happens to a worker."""

import os
import threading

import pytest

from engine import parallel
from engine.errors import NwfilterError


@pytest.fixture(autouse=True)
def four_cores(monkeypatch):
    monkeypatch.setattr(parallel, "_cores", lambda: 4)


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
    idle.start()
    try:
        assert parallel.workers(1000) == 4  # a namespace's nft thread waiting for its next job is no obstacle
        busy.start()
        assert parallel.workers(1000) == 1
    finally:
        release.set()
        for thread in (idle, busy):
            if thread.is_alive():
                thread.join()
