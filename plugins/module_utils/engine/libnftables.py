# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables in-process through libnftables (the library the nft command is
built on): the same parser and the same single kernel transaction, without
starting a process per change. Optionally inside a named network namespace:
the call runs in a thread that enters it (setns affects only that thread)."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import List, Optional

CLONE_NEWNET = 0x40000000
OUTPUT_JSON = 1 << 4


def _load() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("nftables")
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


LIB = _load()
_LIBC = ctypes.CDLL(None, use_errno=True)


class LibNftables:
    def __init__(self, netns: Optional[str] = None) -> None:
        if LIB is None:
            raise OSError("libnftables is not available")
        self.netns = netns

    def run(self, commands: str, json_output: bool = False) -> "tuple[int, str, str]":
        """(return code, output, error text) of running ``commands``."""
        if self.netns is None:
            return self._run(commands, json_output)
        result: List[tuple] = []
        failure: List[BaseException] = []

        def inside() -> None:
            try:
                with open(f"/run/netns/{self.netns}", "rb") as handle:
                    if _LIBC.setns(handle.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"cannot enter network namespace {self.netns}")
                result.append(self._run(commands, json_output))
            except BaseException as exc:  # pylint: disable=broad-except
                failure.append(exc)
        thread = threading.Thread(target=inside)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return result[0]

    @staticmethod
    def _run(commands: str, json_output: bool) -> "tuple[int, str, str]":
        ctx = LIB.nft_ctx_new(0)
        try:
            LIB.nft_ctx_buffer_output(ctx)
            LIB.nft_ctx_buffer_error(ctx)
            if json_output:
                LIB.nft_ctx_output_set_flags(ctx, OUTPUT_JSON)
            code = LIB.nft_run_cmd_from_buffer(ctx, commands.encode())
            output = (LIB.nft_ctx_get_output_buffer(ctx) or b"").decode()
            error = (LIB.nft_ctx_get_error_buffer(ctx) or b"").decode()
            return code, output, error
        finally:
            LIB.nft_ctx_free(ctx)
