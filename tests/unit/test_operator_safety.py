"""Input libvirt refuses and we used to take, and shared addresses."""

import pytest

from engine.dict_form import binding_from_dict, filter_from_dict
from engine.errors import NwfilterError
from engine.model import Binding, FilterRef
from engine.overlaps import binding_addresses, shared_addresses
from engine.xml_form import filter_from_xml


@pytest.mark.parametrize("text", ["1_000", "0x10", " 10", "1e3", "", "٣"])
def test_priorities_are_plain_decimals(text):
    with pytest.raises(NwfilterError, match="not a whole number"):
        filter_from_xml(f'<filter name="f" priority="{text}"/>')
    with pytest.raises(NwfilterError, match="must be a whole number"):
        filter_from_dict({"name": "f", "priority": text})


def test_priority_text_and_numbers_accepted():
    assert filter_from_xml('<filter name="f" priority="-100"/>').priority == -100
    assert filter_from_xml('<filter name="f"><rule action="drop" direction="in" priority="010"/></filter>'
                           ).entries[0].priority == 10
    assert filter_from_dict({"name": "f", "priority": "+5"}).priority == 5
    assert filter_from_dict({"name": "f", "priority": -5}).priority == -5


def test_mac_parameter_refused():
    with pytest.raises(NwfilterError, match=r"binding 'vnet0'.parameters: MAC comes from mac"):
        binding_from_dict({"portdev": "vnet0", "mac": "52:54:00:00:00:01", "filter": "clean-traffic",
                           "parameters": {"MAC": "52:54:00:00:00:02"}})


def test_shared_addresses_name_the_ports():
    def bound(port, mac, *ips):
        return Binding(port, mac, FilterRef("clean-traffic", {"IP": ips} if ips else {}))
    given = (bound("a", "52:54:00:00:00:01", "192.0.2.1", "192.0.2.2"), bound("b", "52:54:00:00:00:01", "192.0.2.2"),
             bound("c", "52:54:00:00:00:03", "192.0.2.1"), bound("d", "52:54:00:00:00:04"))
    bindings = {b.portdev: binding_addresses(b) for b in given}
    assert shared_addresses(bindings, {"b"}) == ["IP 192.0.2.2 is bound on a, b", "MAC 52:54:00:00:00:01 is bound on a, b"]
    assert shared_addresses(bindings, {"c"}) == ["IP 192.0.2.1 is bound on a, c"]
    assert shared_addresses(bindings, {"d"}) == []
