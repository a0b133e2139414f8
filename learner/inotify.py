"""Being told when the store changes: inotify (Linux, through libc) on the
store's directories, so a new binding is seen at once instead of at the next
poll. Its file descriptor goes into the service's selector."""

from __future__ import annotations

import ctypes
import os
from typing import Iterable, Optional

IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_DELETE = 0x8, 0x40, 0x80, 0x200
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
# every store write replaces a file (rename) or removes one; a file written in place is closed
EVENTS = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE

_LIBC = ctypes.CDLL(None, use_errno=True)


class StoreEvents:
    """An inotify descriptor watching ``directories`` (those that exist)."""

    def __init__(self, directories: Iterable[str]) -> None:
        self.fd = _LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for directory in directories:
            if _LIBC.inotify_add_watch(self.fd, os.fsencode(directory), EVENTS) < 0:
                error = ctypes.get_errno()
                os.close(self.fd)
                raise OSError(error, f"inotify_add_watch {directory}")

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> None:
        """Read every pending event: which file changed does not matter, the store is compared as a whole."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


def store_events(directories: Iterable[str]) -> Optional[StoreEvents]:
    """inotify on these directories, or None where it cannot be had (the periodic rescan remains)."""
    try:
        return StoreEvents(directories)
    except (OSError, AttributeError):
        return None
