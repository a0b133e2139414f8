"""`vmguard-learner`: run the IP-learning service in the foreground (logs to stderr)."""

from __future__ import annotations

import argparse
import fcntl
import os
import logging
import shlex
import signal
import sys
from typing import IO

from engine.errors import NwfilterError
from engine.host import Host
from engine.store import DEFAULT_ROOT

from .hook_server import HookServer
from .leases import Leases
from .repair import Repairer
from .service import Learner


DEFAULTS = {"root": DEFAULT_ROOT, "leases": "/var/lib/vmguard/leases.json", "nft": "", "rescan": "1.0"}


def read_config(path: str) -> dict:
    """``key = value`` lines (the file the role templates); # starts a comment."""
    values = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, sep, value = (part.strip() for part in line.partition("="))
            if not sep or key not in DEFAULTS:
                raise SystemExit(f"{path}:{number}: expected one of {', '.join(DEFAULTS)} = value")
            values[key] = value
    return values


def only_learner(root: str) -> IO[str]:
    """One learner per store: an exclusive lock on ``<root>/.learner.lock``
    (two would learn the same ports and repair each other's changes)."""
    path = os.path.join(root, ".learner.lock")
    try:
        os.makedirs(root, mode=0o755, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    except OSError as exc:
        raise SystemExit(f"vmguard-learner: cannot use the store {root}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        other = handle.read().strip() or "unknown"
        handle.close()
        raise SystemExit(f"vmguard-learner: another vmguard-learner (pid {other}) already serves the store {root}; "
                         "only one may run per store") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def stop_signals() -> int:
    """SIGTERM (systemd's stop) and ^C end the service through its cleanup.
    Their handler raises nothing: an exception raised from a handler can land
    where Python only prints it (a weakref callback inside an import, as a
    test once caught) and the service would run on. The kernel-level wakeup
    writes a byte to the returned pipe, which the service loop watches."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda _number, _frame: None)
    return read_end


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vmguard-learner", description=__doc__)
    parser.add_argument("--config", help="configuration file (key = value); options given here win")
    parser.add_argument("--root", help=f"the store directory (default {DEFAULTS['root']})")
    parser.add_argument("--leases", help=f"DHCP lease file (default {DEFAULTS['leases']})")
    parser.add_argument("--nft", help="an nft command to run instead of libnftables in-process")
    parser.add_argument("--rescan", type=float, help="seconds between store rescans (default 1)")
    parser.add_argument("--restore", action="store_true", help="re-apply every stored binding and network and exit (boot)")
    args = parser.parse_args(argv)
    settings = {**DEFAULTS, **(read_config(args.config) if args.config else {}),
                **{k: str(v) for k, v in vars(args).items() if k in DEFAULTS and v is not None}}
    logging.basicConfig(level=logging.DEBUG if os.environ.get("VMGUARD_DEBUG") else logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    log = logging.getLogger("vmguard-learner")
    try:
        host = Host(settings["root"], shlex.split(settings["nft"]) or None)
        result = host.restore() if args.restore else None
        networks = host.networks.restore() if args.restore else None
    except NwfilterError as exc:
        log.error("%s: %s", "restore failed" if args.restore else "cannot start", exc)
        return 1
    if result is not None and networks is not None:
        for line in result.repaired:
            log.warning("repaired: %s", line)
        for line in result.skipped:
            log.error("not restored: %s", line)
        log.info("restored %d bindings", len(result.rebuilt))
        log.info("restored %d networks", len(networks.networks))
        return 1 if result.skipped else 0
    lock = only_learner(settings["root"])  # held until the process ends
    stop = stop_signals()
    hook_server = None
    try:
        try:  # the repair thread gets a Host (and libnftables context) of its own
            Repairer(Host(settings["root"], shlex.split(settings["nft"]) or None)).start()
        except OSError as exc:
            log.error("cannot watch nftables' changes (%s): our rules are repaired only by the next module run", exc)
        try:  # the libvirt hook's fast path, with a Host of its own too
            hook_server = HookServer(Host(settings["root"], shlex.split(settings["nft"]) or None))
            hook_server.start()
        except OSError as exc:
            log.warning("cannot serve the libvirt hook (%s): it does its changes in its own process", exc)
        Learner(host, Leases(settings["leases"])).run(float(settings["rescan"]), stop=stop)
    finally:
        if hook_server is not None:
            hook_server.close()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
