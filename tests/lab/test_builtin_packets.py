"""Every built-in filter, bound with typical parameters, against the same
real frames (lab.probes.standard_probes): what passes and what is dropped."""

import pytest

from engine.builtin_filters import BUILTIN_FILTERS
from engine.model import Binding, FilterRef
from engine.resolver import missing_variables
from lab.probes import run_probes, standard_probes

PARAMS = {"IP": ("192.0.2.10",), "IPV6": ("2001:db8::10",), "GATEWAY_MAC": ("52:54:00:00:00:02",),
          "DHCPSERVER": ("192.0.2.20",), "RA_SERVER": ("fe80::1",)}
ORDER = ["ipv4 udp", "ipv4 tcp syn", "ipv4 icmp echo", "spoofed mac", "spoofed ipv4", "arp request",
         "arp spoofed ip", "arp spoofed mac", "rarp", "dhcp discover", "rogue dhcp offer", "vlan tagged",
         "unknown ethertype", "ipv6", "spoofed ipv6", "incoming ipv4", "incoming ipv6"]
ALL = "P" * len(ORDER)
# P: arrives, .: dropped; one letter per probe in ORDER.
EXPECTED = {
    "clean-traffic": "PPP..P...PP....P.",
    "clean-traffic-gateway": "PPP..P.....PPPPPP",
    "no-arp-ip-spoofing": "PPPPPP.PPPPPPPPPP",
    "no-arp-mac-spoofing": "PPPPPPP.PPPPPPPPP",
    "no-arp-spoofing": "PPPPPP..PPPPPPPPP",
    "no-ip-spoofing": "PPPP.PPPPPPPPPPPP",
    "no-ipv6-spoofing": "PPPPPPPPPPPPPP.PP",
    "no-mac-broadcast": "PPPPPPPPP..PPPPPP",
    "no-mac-spoofing": "PPP.PPPPPPPPPPPPP",
    "no-other-l2-traffic": ".................",
    "no-other-rarp-traffic": "PPPPPPPP.PPPPPPPP",
    "qemu-announce-self": "PPPPPPPP.PPPPPPPP",
    # vmguard's own (tests/lab/test_dualstack.py has their IPv6 cases)
    "vmguard-clean-traffic-dualstack": "PPP..P...PP..P.PP",
    "vmguard-clean-traffic-dualstack-ra-server": "PPP..P...PP..P.PP",
    "vmguard-no-ipv6-spoofing": "PPPPPPPPPPPPPP.PP",
}


@pytest.mark.parametrize("name", sorted(BUILTIN_FILTERS))
def test_builtin_filter_verdicts(lab, host, name):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    needed = missing_variables(BUILTIN_FILTERS, Binding(vm.port, vm.mac, FilterRef(name)))
    params = {k: v for k, v in PARAMS.items() if k in needed}
    if "DHCPSERVER" in needed and "v6" in name:
        params["DHCPSERVER"] = ("2001:db8::20",)
    host.bind(Binding(vm.port, vm.mac, FilterRef(name, params)))
    verdicts = run_probes(lab, standard_probes(vm, peer), wait=0.15)
    got = "".join("P" if verdicts[probe] else "." for probe in ORDER)
    assert got == EXPECTED.get(name, ALL)
