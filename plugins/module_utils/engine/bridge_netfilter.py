# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is br_netfilter handing bridged IP packets to the inet table? Our layer-3/4
rules live there (the bridge family has no conntrack on most kernels): with
the module not loaded, or its sysctls at 0, those rules see no bridged
traffic, so we say so (libvirt warns the same way)."""

from __future__ import annotations

import subprocess
from typing import List, Optional

SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")


def _read(name: str, netns: Optional[str]) -> str:
    path = f"/proc/sys/net/bridge/{name}"
    if netns is None:
        try:
            with open(path, encoding="ascii") as handle:
                return handle.read().strip()
        except OSError:
            return ""  # br_netfilter is not loaded
    # /proc/sys/net shows the namespace of the reading process
    done = subprocess.run(["ip", "netns", "exec", netns, "cat", path], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def disabled(netns: Optional[str] = None) -> List[str]:
    """The sysctls (``net.bridge.…``) that are not 1."""
    return [f"net.bridge.{name}" for name in SYSCTLS if _read(name, netns) != "1"]
