"""The limits through the Host against the real kernel: a refused change
applies nothing and stores nothing; a change within the limits goes through."""

import pytest

from bench.hostile import cross_product, fan_out
from engine import bounds
from engine.errors import NwfilterError
from engine.model import Binding, FilterRef
from engine.xml_form import filter_from_xml


def test_hostile_define_and_bind_change_nothing(lab, host):
    vm = lab.guests["vm"]
    texts = fan_out(21)
    for text in texts[:13]:  # fan21 .. fan9: within the limits
        host.define_filter(filter_from_xml(text))
    before = lab.nft_list()
    with pytest.raises(NwfilterError, match="^filter 'fan8' not changed: filter 'fan8': the tree walks 16383"):
        host.define_filter(filter_from_xml(texts[13]))
    assert "fan8" not in host.user_filters()
    texts, binding = cross_product(300)
    host.define_filter(filter_from_xml(texts[0]))
    with pytest.raises(NwfilterError, match="expands to 90000 rules"):
        host.bind(Binding(vm.port, vm.mac, binding.filterref))
    assert not host.bindings() and lab.nft_list() == before


def test_the_host_rule_limit_refuses_the_change_that_passes_it(lab, host, monkeypatch):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("no-mac-spoofing")))
    stored = host.store.index()[vm.port][1]
    assert stored > 0
    monkeypatch.setattr(bounds, "MAX_HOST_RULES", 2 * stored)
    host.bind(Binding(peer.port, peer.mac, FilterRef("no-mac-spoofing")))
    before = lab.nft_list()
    with pytest.raises(NwfilterError, match=f"would hold {3 * stored} nft rules, more than {2 * stored}"):
        host.bind(Binding("vnet9", "52:54:00:00:00:99", FilterRef("no-mac-spoofing")))
    assert lab.nft_list() == before and set(host.bindings()) == {vm.port, peer.port}
