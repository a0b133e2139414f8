"""The service repairs our rules by itself: it watches nftables' change
notifications and, when anyone else deleted, flushed or altered something in
our tables (the per-port ones and the virtual networks' one: ``nft flush
ruleset``, nftables.service restarting, an admin's ``nft -f``), puts the
stored state back (docs/performance.md).

Our own changes (modules, this service) emit the same notifications, so
notifications alone decide nothing: the repair takes the store's lock (every
change holds it from the nft commit to the store write), then compares the
kernel with the store, and repairs only what differs (``Host.converge``, the
check every change makes first). The store is the truth, so a binding
removed on purpose is never brought back."""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from typing import List

from engine import nft_events
from engine.errors import NwfilterError
from engine.host import Host
from engine.nft_layout import TABLE
from engine.nft_network import NET_TABLE
from engine.nft_run import FAMILIES

LOG = logging.getLogger("vmguard-learner")
QUIET = 0.05     # seconds without another foreign transaction before repairing: a burst is one repair
LONGEST = 0.25   # but never wait longer than this after the first


class Repairer:
    """Watches nftables' notifications in a thread of its own and repairs
    after other processes' transactions that touched our tables."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.sock = nft_events.subscribe()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="repair", daemon=True)
        thread.start()
        return thread

    def converge(self, why: str) -> None:
        """Compare and, if they differ, repair; one log line says what happened and what was done."""
        started = time.monotonic()
        try:
            problems = self.host.converge().repaired + self.host.networks.converge().repaired
        except NwfilterError as exc:
            LOG.error("%s: cannot repair our rules: %s", why, exc)
            return
        except Exception as exc:  # pylint: disable=broad-except  # the thread must outlive a bad store file
            LOG.error("%s: cannot repair our rules: %s: %s", why, type(exc).__name__, exc)
            return
        if not problems:
            LOG.debug("%s: the kernel holds what the store says", why)
            return
        shown = "; ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        LOG.warning("%s; found %s; repaired in %.0f ms", why, shown, (time.monotonic() - started) * 1000)

    def run(self) -> None:
        self.converge("at start")  # notifications arriving meanwhile wait in the socket
        LOG.info("watching nftables' notifications: our rules are repaired whenever anyone else changes them")
        ours: List[nft_events.Change] = []  # changes to our tables in the transaction being received
        seen: List[str] = []  # what other processes did since the last repair
        first = due = 0.0
        while True:
            timeout = max(0.0, due - time.monotonic()) if seen else None
            if select.select([self.sock], [], [], timeout)[0]:
                for what in self._receive(ours):
                    seen.append(what)
                    first = first or time.monotonic()
                    due = min(first + LONGEST, time.monotonic() + QUIET)
            if seen and time.monotonic() >= due:
                shown = list(dict.fromkeys(seen))
                self.converge("; ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else ""))
                seen, first = [], 0.0

    def _receive(self, ours: List[nft_events.Change]) -> List[str]:
        """Read one notification; what other processes' transactions did to our tables, once each ends."""
        try:
            data = self.sock.recv(1 << 16)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            ours.clear()
            return ["nftables changed faster than this service could follow"]
        found = []
        for item in nft_events.parse(data):
            if isinstance(item, nft_events.Change):
                if (item.table == TABLE and item.family in FAMILIES) or (item.family, item.table) == ("inet", NET_TABLE):
                    ours.append(item)
            elif ours:  # the end of a transaction that touched our tables
                if not _own(item.pid):
                    found.append(f"{item.process or 'a process'} (pid {item.pid}) {nft_events.summary(ours)}")
                ours.clear()
        return found


def _own(pid: int) -> bool:
    """The transaction was committed by a thread of this process (the kernel names the thread)."""
    return pid != 0 and os.path.exists(f"/proc/self/task/{pid}")
