# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables in-process through libnftables (the library the nft command is
built on): the same parser and the same single kernel transaction, without
starting a process per change. Optionally inside a named network namespace:
the calls run in a thread that enters it (setns affects only that thread)."""

from __future__ import annotations

import ctypes
import functools
import queue
import threading
import weakref
from typing import Optional

from .parallel import IDLE_THREAD

CLONE_NEWNET = 0x40000000
OUTPUT_JSON, OUTPUT_TERSE = 1 << 4, 1 << 11  # nft -j, nft -t (sets without their elements)
SONAME = "libnftables.so.1"


@functools.lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """libnftables, loaded on first use: a call that changes nothing (an
    idempotent module run) does not pay for loading it (~15 ms). The soname
    first: find_library runs ldconfig, a process of its own."""
    try:
        lib = ctypes.CDLL(SONAME, use_errno=True)
    except OSError:
        from ctypes.util import find_library  # pylint: disable=import-outside-toplevel  # runs ldconfig: rarely needed
        name = find_library("nftables")
        if not name:
            return None
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    for function in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_free"):
        getattr(lib, function).argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    for function in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, function).argtypes = [ctypes.c_void_p]
        getattr(lib, function).restype = ctypes.c_char_p
    return lib


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise OSError("libnftables is not available")
    return lib


def _new_context() -> int:
    ctx = _lib().nft_ctx_new(0)
    _lib().nft_ctx_buffer_output(ctx)
    _lib().nft_ctx_buffer_error(ctx)
    return ctx


def _run(ctx: int, commands: str, flags: int) -> "tuple[int, str, str]":
    lib = _lib()
    lib.nft_ctx_output_set_flags(ctx, flags)
    code = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
    # nft 1.0.6 prints a dormant table's flags from freed memory: never let such bytes raise
    output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
    error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
    return code, output, error


def _serve(netns: str, jobs: "queue.Queue[Optional[tuple]]", entered: "queue.Queue[Optional[BaseException]]") -> None:
    """The worker thread of a namespace: enter it once, then run jobs until None."""
    try:
        with open(f"/run/netns/{netns}", "rb") as handle:
            if ctypes.CDLL(None, use_errno=True).setns(handle.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"cannot enter network namespace {netns}")
    except OSError as exc:
        entered.put(exc)
        return
    ctx = _new_context()
    entered.put(None)
    try:
        for job in iter(jobs.get, None):
            commands, flags, done = job
            try:
                done.put((_run(ctx, commands, flags), None))
            except BaseException as exc:  # pylint: disable=broad-except
                done.put((None, exc))
    finally:
        _lib().nft_ctx_free(ctx)


class LibNftables:
    """One libnftables context (and netlink socket) for the object's life:
    closing that socket makes the kernel wait for its pending work, about
    15 ms, which a context per change would pay every time. nft checks the
    ruleset generation before each command, so its cache never goes stale."""

    def __init__(self, netns: Optional[str] = None) -> None:
        _lib()
        self.netns = netns
        self._lock = threading.Lock()
        self._ctx: Optional[int] = None
        self._jobs: "Optional[queue.Queue[Optional[tuple]]]" = None

    def run(self, commands: str, flags: int = 0) -> "tuple[int, str, str]":
        """(return code, output, error text) of running ``commands`` with the OUTPUT_* ``flags``."""
        with self._lock:
            if self.netns is None:
                if self._ctx is None:
                    self._ctx = _new_context()
                    weakref.finalize(self, _lib().nft_ctx_free, self._ctx)
                return _run(self._ctx, commands, flags)
            return self._in_namespace(commands, flags)

    def _in_namespace(self, commands: str, flags: int) -> "tuple[int, str, str]":
        # setns moves only the calling thread: a worker thread stays in the namespace
        if self._jobs is None:
            jobs: "queue.Queue[Optional[tuple]]" = queue.Queue()
            entered: "queue.Queue[Optional[BaseException]]" = queue.Queue()
            threading.Thread(target=_serve, args=(self.netns, jobs, entered), name=f"{IDLE_THREAD} nft {self.netns}",
                             daemon=True).start()
            failure = entered.get()
            if failure is not None:
                raise failure
            self._jobs = jobs
            weakref.finalize(self, jobs.put, None)
        done: "queue.Queue[tuple]" = queue.Queue()
        self._jobs.put((commands, flags, done))
        outcome, failure = done.get()
        if failure is not None:
            raise failure
        return outcome
