"""DHCP and DHCPv6 leases per port, kept in one JSON file that is replaced
atomically and fsynced, so a restart of the service loses none. A lease
belongs to the variable it fills: IP (DHCP) or IPV6 (DHCPv6)."""

from __future__ import annotations

import json
import os
from typing import Dict, List

from engine.store import atomic_write


class Leases:
    def __init__(self, path: str) -> None:
        self.path = path
        self.by_port: Dict[str, List[dict]] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                self.by_port = json.load(handle)

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        atomic_write(self.path, json.dumps(self.by_port, sort_keys=True) + "\n")

    def addresses(self, portdev: str, now: float) -> Dict[str, List[str]]:
        """{IP: [...], IPV6: [...]}: the unexpired leased addresses (a variable with none is left out)."""
        found: Dict[str, set] = {}
        for lease in self.by_port.get(portdev, []):
            if lease["expires"] > now:
                found.setdefault(lease.get("var", "IP"), set()).add(lease["ip"])
        return {name: sorted(values) for name, values in found.items()}

    def add(self, portdev: str, ip: str, expires: float, server: str, var: str = "IP") -> None:
        leases = [lease for lease in self.by_port.get(portdev, []) if lease["ip"] != ip]
        self.by_port[portdev] = leases + [{"ip": ip, "expires": expires, "server": server, "var": var}]
        self._save()

    def remove(self, portdev: str, ip: str) -> None:
        self.by_port[portdev] = [lease for lease in self.by_port.get(portdev, []) if lease["ip"] != ip]
        self._save()

    def expire(self, now: float) -> List[str]:
        """Drop expired leases; the ports whose addresses changed."""
        changed = [p for p, leases in self.by_port.items() if any(lease["expires"] <= now for lease in leases)]
        for portdev in changed:
            self.by_port[portdev] = [lease for lease in self.by_port[portdev] if lease["expires"] > now]
        if changed:
            self._save()
        return changed
