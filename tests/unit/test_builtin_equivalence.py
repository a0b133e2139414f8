"""Our built-in library means what libvirt's shipped filters mean: for every
one of libvirt's 24 filters (read from Debian's libvirt-daemon-config-nwfilter,
never copied here), the tree resolves to the same flat rule list with the
same parameters whether it is made of libvirt's XML or of our built-ins."""

import glob
import os

import pytest

from engine.builtin_filters import BUILTIN_FILTERS, LIBVIRT_FILTERS
from engine.model import Binding, FilterRef
from engine.resolver import missing_variables, resolve
from engine.xml_form import filter_from_xml, filter_to_xml

SHIPPED_DIR = "/etc/libvirt/nwfilter"
PARAMS = {
    "IP": ("192.0.2.10", "192.0.2.11"),
    "IPV6": ("2001:db8::10",),
    "GATEWAY_MAC": ("52:54:00:00:00:fe",),
}


def shipped_filters():
    paths = sorted(glob.glob(os.path.join(SHIPPED_DIR, "*.xml")))
    if not paths:
        pytest.fail(f"libvirt's filters are not in {SHIPPED_DIR}: run `make setup` first")
    filters = {}
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            flt = filter_from_xml(handle.read())
        filters[flt.name] = flt
    return filters


def test_same_24_names():
    assert set(LIBVIRT_FILTERS) <= set(shipped_filters())
    assert len(LIBVIRT_FILTERS) == 24
    # our own filters take names libvirt's plain ones cannot
    assert all(name.startswith("vmguard-") for name in set(BUILTIN_FILTERS) - set(LIBVIRT_FILTERS))


@pytest.mark.parametrize("name", sorted(LIBVIRT_FILTERS))
def test_round_trips_canonically(name):
    flt = shipped_filters()[name]
    canonical = filter_to_xml(flt)
    assert filter_from_xml(canonical) == flt
    assert filter_to_xml(filter_from_xml(canonical)) == canonical


@pytest.mark.parametrize("name", sorted(LIBVIRT_FILTERS))
def test_resolves_to_the_same_rules(name):
    libvirt = shipped_filters()
    binding = Binding("vnet0", "52:54:00:00:00:01", FilterRef(name))
    needed = missing_variables(BUILTIN_FILTERS, binding)
    assert needed == missing_variables(libvirt, binding)
    params = {k: v for k, v in PARAMS.items() if k in needed}
    if "DHCPSERVER" in needed:
        params["DHCPSERVER"] = ("2001:db8::1",) if "dhcpv6" in name else ("192.0.2.1",)
    binding = Binding("vnet0", "52:54:00:00:00:01", FilterRef(name, params))
    ours, theirs = resolve(BUILTIN_FILTERS, binding), resolve(libvirt, binding)
    assert ours == theirs
    for direction in ("in", "out"):
        assert ours.for_direction(direction) == theirs.for_direction(direction)
