# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compiling many ports on every core: the work is split among forked
copies of this process, which inherit everything it has read and cached and
send their results back pickled. A module run is a fresh process, so a bulk
bind or a redefine of 1,000 ports spends most of its time compiling them;
two cores halve that part.

Nothing depends on a worker: one that cannot be forked, fails, dies or
raises means the whole work is done again here, one item after the other,
so any error is the one the sequential run would raise. Forking a process
with other threads risks locks held at the fork; only threads named with
IDLE_THREAD (blocked on a queue, holding nothing) may be running."""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
from typing import Callable, List, Optional, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

IDLE_THREAD = "vmguard idle worker"  # the name's prefix of a thread that waits on a queue between jobs
PER_WORKER = 100  # items below which a worker costs more (fork, pickling) than it saves
MAX_WORKERS = 16


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fork_safe(threads: Sequence[threading.Thread]) -> bool:
    """Whether a process with these threads may fork: no thread but this one
    and idle ones (IDLE_THREAD) runs."""
    return all(t is threading.current_thread() or not t.is_alive() or t.name.startswith(IDLE_THREAD) for t in threads)


def workers(count: int) -> int:
    """How many processes share ``count`` items: 1 when forking is not safe or not worth it."""
    if not hasattr(os, "fork") or not fork_safe(threading.enumerate()):
        return 1
    return max(1, min(_cores(), count // PER_WORKER, MAX_WORKERS))


def _forked(work: Callable[[Item], Result], items: Sequence[Item]) -> Optional[tuple]:
    """(pid, read end) of a child that sends back ``[work(item) ...]``
    pickled, or nothing on failure; None when no child could be forked."""
    try:
        read, write = os.pipe()
    except OSError:  # out of descriptors: no child either
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        return None
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers or flushes its buffers
        status = 1
        try:
            # nothing of the parent's stays open here: its store lock (flock: shared with this copy) is free the
            # moment the parent ends, whatever this copy is doing then
            for name in os.listdir("/proc/self/fd"):  # not closerange: without close_range(2) it tries every number
                if int(name) > 2 and int(name) != write:
                    with contextlib.suppress(OSError):  # the listing's own descriptor is gone already
                        os.close(int(name))
            data = pickle.dumps([work(item) for item in items], pickle.HIGHEST_PROTOCOL)
            with os.fdopen(write, "wb") as out:
                out.write(data)
            status = 0
        finally:
            os._exit(status)  # pylint: disable=protected-access
    os.close(write)
    return pid, read


def _collect(child: tuple) -> Optional[list]:
    """The child's results, or None when it failed."""
    pid, read = child
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _pid, status = os.waitpid(pid, 0)
    if status != 0:
        return None
    try:
        return pickle.loads(data)
    except (pickle.UnpicklingError, EOFError, ValueError):
        return None


def map_on_cores(work: Callable[[Item], Result], items: Sequence[Item]) -> List[Result]:
    """``[work(item) for item in items]``, shared among ``workers()`` processes."""
    count = workers(len(items))
    if count < 2:
        return [work(item) for item in items]
    shares = [items[start::count] for start in range(count)]  # interleaved: alike items spread evenly
    children: List[Optional[tuple]] = []
    try:
        children = [_forked(work, share) for share in shares[1:]]
        results: List[Optional[list]] = []
        try:
            results.append([work(item) for item in shares[0]])
        except Exception:  # pylint: disable=broad-except  # raised again below, in the sequential order
            results.append(None)
        while children:
            child = children.pop(0)
            results.append(_collect(child) if child is not None else None)
    finally:
        for child in children:  # an interruption here: no child is left behind
            _abandon(child)
    if any(found is None for found in results):
        return [work(item) for item in items]
    merged: List[Result] = [None] * len(items)  # type: ignore[list-item]
    for start, found in enumerate(results):
        merged[start::count] = found
    return merged


def _abandon(child: Optional[tuple]) -> None:
    if child is None:
        return
    pid, read = child
    os.close(read)
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except OSError:
        pass
