"""`vmguard-learner`: run the IP-learning service in the foreground (logs to stderr)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from engine.host import Host
from engine.store import DEFAULT_ROOT

from .leases import Leases
from .service import Learner


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vmguard-learner", description=__doc__)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="the store directory (default %(default)s)")
    parser.add_argument("--leases", default="/var/lib/vmguard/leases.json", help="DHCP lease file")
    parser.add_argument("--nft", default="nft", help="the nft command (default %(default)s)")
    parser.add_argument("--rescan", type=float, default=1.0, help="seconds between store rescans")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    learner = Learner(Host(args.root, shlex.split(args.nft)), Leases(args.leases))
    try:
        learner.run(args.rescan)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
