"""The service repairs our rules by itself: it watches nftables' change
notifications and, when anyone else deleted, flushed or altered something in
our two tables (``nft flush ruleset``, nftables.service restarting, an
admin's ``nft -f``), puts the stored state back (within a second with 100
bindings, seconds with 1000: docs/performance.md).

Our own changes (modules, this service) emit the same notifications, so
notifications alone decide nothing: the repair takes the store's lock (every
change holds it from the nft commit to the store write), then compares the
kernel with the store, and re-applies only when they differ. The store is the truth, so a
binding removed on purpose is never brought back."""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections import Counter
from typing import Dict, List, Set, Tuple

from engine import nft_events
from engine.errors import NwfilterError
from engine.host import Host
from engine.nft_run import FAMILIES, Layout
from engine.nft_compile import BASE, TABLE, PortLive, digest

LOG = logging.getLogger("vmguard-learner")
QUIET = 0.05     # seconds without another foreign transaction before repairing: a burst is one repair
LONGEST = 0.25   # but never wait longer than this after the first
EMPTY = digest(())


def _base() -> Tuple[Set[Tuple[str, str]], Set[Tuple[str, str]], Counter]:
    """Our tables, maps and base chains' rule counts, as BASE creates them."""
    tables, maps, rules = set(), set(), Counter()
    for line in BASE.splitlines():
        words = line.split()
        if words[:2] == ["add", "table"]:
            tables.add((words[2], words[3]))
        elif words[:2] == ["add", "map"]:
            maps.add((words[2], words[4]))
        elif words[:2] == ["add", "chain"]:
            rules[(words[2], words[4])] += 0
        elif words[:2] == ["add", "rule"]:
            rules[(words[2], words[4])] += 1
    return tables, maps, rules


TABLES, MAPS, BASE_RULES = _base()


def damage(layout: Layout, live: Dict[str, PortLive], records: Dict[str, dict], bindings: Set[str]) -> List[str]:
    """What of the stored state the kernel does not hold: ``layout`` and
    ``live`` are what of ours is in the kernel (``Nft.layout``, ``Nft.live``),
    ``records`` the store's port records (chains with the digest of their
    rules, map elements), ``bindings`` the stored bindings' ports. Detected:
    a missing table, map, base chain or port chain, a base chain whose rules
    were changed in number, a port chain left empty that should have rules, a
    missing map element, a port chain or element the store does not know.
    Not detected: a rule added to, removed from or changed in a port chain
    that still has rules, an element re-pointed to another of the port's chains."""
    if not bindings and not records:
        return []
    problems = [] if set(records) == bindings else ["the store's port records do not match its bindings"]
    tables = {(family, TABLE) for family in layout.tables}
    rules = layout.rules
    problems += [f"table {family} {TABLE} missing" for family, _name in sorted(TABLES - tables)]
    problems += [f"map {family} {TABLE} {name} missing" for family, name in sorted(MAPS - layout.maps)
                 if (family, TABLE) in tables]
    for (family, name), count in sorted(BASE_RULES.items()):
        if (family, TABLE) not in tables:
            continue
        if (family, name) not in rules:
            problems.append(f"base chain {family} {TABLE} {name} missing")
        elif rules[(family, name)] != count:
            problems.append(f"base chain {family} {TABLE} {name} has {rules[(family, name)]} rules, not {count}")
    if problems and not set(TABLES) <= tables:
        return problems  # a table is gone: everything in it is, no need to name it all
    for portdev in sorted(set(records) | set(live)):
        record = records.get(portdev, {"chains": [], "elements": []})
        now = live.get(portdev, PortLive(set(), set()))
        stored = {(family, name): chain_digest for family, name, chain_digest in record["chains"]}
        for family, name in sorted(set(stored) - now.chains):
            problems.append(f"chain {family} {TABLE} {name} missing")
        for family, name in sorted(set(stored) & now.chains):
            if not rules.get((family, name)) and stored[(family, name)] != EMPTY:
                problems.append(f"chain {family} {TABLE} {name} flushed")
        problems += [f"chain {family} {TABLE} {name} not in the store" for family, name in sorted(now.chains - set(stored))]
        elements = {tuple(element) for element in record["elements"]}
        problems += [f"element {key} of map {family} {TABLE} {vmap} missing"
                     for family, vmap, key in sorted(elements - now.elements)]
        problems += [f"element {key} of map {family} {TABLE} {vmap} not in the store"
                     for family, vmap, key in sorted(now.elements - elements)]
    return problems


def check(host: Host) -> List[str]:
    """``damage`` on this host, read under the store's lock so that no change is half done."""
    with host.store.locked():
        return damage(host.nft.layout(), host.nft.live(), host.store.ports(), set(host.store.bindings()))


def repair(host: Host) -> int:
    """Re-apply the stored state; the number of bindings re-applied.
    (Part A of issue 9 brings ``Host.converge()``, which checks and repairs
    in one locked transaction: it replaces ``check`` and this.)"""
    return len(host.restore().rebuilt)


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
            problems = check(self.host)
            if not problems:
                LOG.debug("%s: the kernel holds what the store says", why)
                return
            count = repair(self.host)
        except NwfilterError as exc:
            LOG.error("%s: cannot repair our rules: %s", why, exc)
            return
        except Exception as exc:  # pylint: disable=broad-except  # the thread must outlive a bad store file
            LOG.error("%s: cannot repair our rules: %s: %s", why, type(exc).__name__, exc)
            return
        shown = "; ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        LOG.warning("%s; found %s; re-applied %d binding%s in %.0f ms", why, shown, count, "" if count == 1 else "s",
                    (time.monotonic() - started) * 1000)

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
                if item.table == TABLE and item.family in FAMILIES:
                    ours.append(item)
            elif ours:  # the end of a transaction that touched our tables
                if not _own(item.pid):
                    found.append(f"{item.process or 'a process'} (pid {item.pid}) {nft_events.summary(ours)}")
                ours.clear()
        return found


def _own(pid: int) -> bool:
    """The transaction was committed by a thread of this process (the kernel names the thread)."""
    return pid != 0 and os.path.exists(f"/proc/self/task/{pid}")
