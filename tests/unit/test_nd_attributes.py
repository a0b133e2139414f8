"""vmguard's neighbour-discovery attributes and IPV6_LINKLOCAL: read from XML
and YAML, values checked as hostile input, compiled to the raw ICMPv6 fields
they name, and refused with one line where they cannot mean anything."""

import pytest
import yaml

from engine.builtin_filters import BUILTIN_FILTERS
from engine.dict_form import filter_from_dict, filter_to_dict
from engine.errors import NwfilterError
from engine.model import Binding, Filter, FilterRef, Match, Rule
from engine.nft_compile import compile_port
from engine.resolver import missing_variables, resolve
from engine.values import eui64_link_local, parse_typed
from engine.xml_form import filter_from_xml, filter_to_xml

MAC = "52:54:00:00:00:01"
NA_XML = """<filter name='na-guard' chain='ipv6-nd'>
  <rule action='return' direction='out' priority='100'>
    <ipv6 protocol='icmpv6' type='136' vmguard-ndtargetaddr='$IPV6' vmguard-ndlladdr='$MAC'/>
  </rule>
  <rule action='return' direction='out' priority='110'>
    <ipv6 type='135' vmguard-ndtargetaddr='2001:db8::' vmguard-ndtargetmask='64' vmguard-ndlladdr='none'/>
  </rule>
</filter>
"""
NA_YAML = """
name: na-guard
chain: ipv6-nd
rules:
  - {action: return, direction: out, priority: 100,
     ipv6: {protocol: icmpv6, type: 136, vmguard-ndtargetaddr: $IPV6, vmguard-ndlladdr: $MAC}}
  - {action: return, direction: out, priority: 110,
     ipv6: {type: 135, vmguard-ndtargetaddr: "2001:db8::", vmguard-ndtargetmask: 64, vmguard-ndlladdr: none}}
"""


def _rules(flt: Filter, **params):
    binding = Binding("vnet0", MAC, FilterRef(flt.name, {k: tuple(v) for k, v in params.items()}))
    program = compile_port(binding, resolve({flt.name: flt}, binding), 1)
    return [rule for _family, name, rules in program.all_chains if name.endswith("ipv6-nd") for rule in rules]


def test_xml_and_yaml_say_the_same():
    flt = filter_from_xml(NA_XML)
    assert flt == filter_from_dict(yaml.safe_load(NA_YAML))
    assert flt.entries[0].attributes["vmguard-ndlladdr"] == Match("$MAC")
    assert filter_from_xml(filter_to_xml(flt)) == flt
    assert filter_from_dict(filter_to_dict(flt)) == flt


def test_compiled_to_the_target_and_the_one_option():
    rules = _rules(filter_from_xml(NA_XML), IPV6=["2001:db8::10"])
    assert rules[0] == ("ether type 0x86dd meta l4proto 58 icmpv6 type 136 @th,64,128 0x20010db8000000000000000000000010"
                        " ip6 nexthdr 58 ip6 length 32 @th,192,16 0x0201 @th,208,48 0x525400000001 return")
    assert rules[1] == ("ether type 0x86dd icmpv6 type 135 @th,64,128 & 0xffffffffffffffff0000000000000000"
                        " == 0x20010db8000000000000000000000000 ip6 nexthdr 58 ip6 length 24 return")


@pytest.mark.parametrize("value", ["none;drop", "52:54:00:00:00:01 accept", "ff:ff", "$", "nonee", ""])
def test_hostile_lladdr_values_are_refused(value):
    with pytest.raises(NwfilterError, match="ND link-layer address|variable reference"):
        parse_typed("ndlladdr", value)
    with pytest.raises(NwfilterError):
        filter_from_xml(NA_XML.replace("vmguard-ndlladdr='none'", f"vmguard-ndlladdr='{value}'"))


def test_variable_values_are_checked_where_they_land():
    with pytest.raises(NwfilterError, match=r"<ipv6 vmguard-ndtargetaddr> \(from \$IPV6\): '192.0.2.1' is not a valid IPv6 address"):
        _rules(filter_from_xml(NA_XML), IPV6=["192.0.2.1"])


@pytest.mark.parametrize("attributes, words", [
    ({"vmguard-ndtargetaddr": "2001:db8::1"}, "needs type 135 or 136 or 137"),
    ({"type": "134", "vmguard-ndtargetaddr": "2001:db8::1"}, "needs type 135 or 136 or 137"),
    ({"type": "135", "typeend": "136", "vmguard-ndlladdr": MAC}, "needs one type, 135 or 136"),
    ({"type": "137", "vmguard-ndlladdr": MAC}, "needs type 135 or 136"),
])
def test_nd_attributes_need_an_nd_type(attributes, words):
    rule = Rule("drop", "out", protocol="ipv6", attributes={k: Match(v) for k, v in attributes.items()})
    flt = Filter("x", "ipv6-nd", entries=(rule,))
    with pytest.raises(NwfilterError, match=words):
        _rules(flt)


@pytest.mark.parametrize("negated", [("type", "vmguard-ndtargetaddr"), ("vmguard-ndtargetaddr",),
                                     ("vmguard-ndlladdr",), ("vmguard-ndtargetmask",)])
def test_negation_is_refused(negated):
    values = {"type": "136", "vmguard-ndtargetaddr": "2001:db8::1", "vmguard-ndtargetmask": "64",
              "vmguard-ndlladdr": MAC}
    flt = Filter("x", "ipv6-nd", entries=(Rule("drop", "out", protocol="ipv6", attributes={
        name: Match(value, name in negated) for name, value in values.items()}),))
    with pytest.raises(NwfilterError, match="no match='no'"):
        _rules(flt)


def test_prefix_lengths():
    # nft accepts the masked form: test_nft_compile's every-attribute check runs it through nft -c
    flt = Filter("x", "ipv6-nd", entries=tuple(Rule("return", "out", protocol="ipv6", attributes={
        "type": Match("135"), "vmguard-ndtargetaddr": Match("2001:db8::1"), "vmguard-ndtargetmask": Match(prefix)})
        for prefix in ("0", "1", "127", "128")))
    rules = _rules(flt)
    assert rules[0] == "ether type 0x86dd icmpv6 type 135 return"
    assert rules[1].startswith("ether type 0x86dd icmpv6 type 135 @th,64,128 & 0x8000000000000000000000000000000")
    assert rules[2].endswith("& 0xfffffffffffffffffffffffffffffffe == 0x20010db8000000000000000000000000 return")
    assert rules[3] == "ether type 0x86dd icmpv6 type 135 @th,64,128 0x20010db8000000000000000000000001 return"


def test_eui64_link_local():
    assert eui64_link_local("52:54:00:12:34:56") == "fe80::5054:ff:fe12:3456"
    assert eui64_link_local("02:00:00:00:00:01") == "fe80::ff:fe00:1"


def _linklocal_sources(binding, filters=BUILTIN_FILTERS):
    chain = resolve(filters, binding).chain("ipv6-vmg-src")
    return [str(r.get("srcipaddr")[0]) for r in chain.entries if r.get("srcipaddr")]


def test_ipv6_linklocal_defaults_to_the_mac_and_can_be_given():
    name = "vmguard-clean-traffic-dualstack"
    params = {"IP": ("192.0.2.10",), "IPV6": ("2001:db8::10",)}
    assert missing_variables(BUILTIN_FILTERS, Binding("vnet0", MAC, FilterRef(name))) == {"IP", "IPV6"}
    assert _linklocal_sources(Binding("vnet0", MAC, FilterRef(name, params)))[:2] == [
        "2001:db8::10", "fe80::5054:ff:fe00:1"]
    given = {**params, "IPV6_LINKLOCAL": ("fe80::1234", "fe80::5678")}
    assert _linklocal_sources(Binding("vnet0", MAC, FilterRef(name, given)))[:3] == [
        "2001:db8::10", "fe80::1234", "fe80::5678"]
    # a filterref's own value is stronger than the default too
    wrapper = Filter("wrapper", entries=(FilterRef(name, {"IPV6_LINKLOCAL": ("fe80::abcd",)}),))
    binding = Binding("vnet0", MAC, FilterRef("wrapper", params))
    filters = {**BUILTIN_FILTERS, "wrapper": wrapper}
    assert _linklocal_sources(binding, filters)[:2] == ["2001:db8::10", "fe80::abcd"]


def test_the_documented_mdns_extension_merges_into_the_chain():
    mdns = filter_from_xml("""<filter name='allow-mdns' chain='ipv6-vmg-dst' priority='-610'>
  <rule action='return' direction='in' priority='100'><ipv6 dstipaddr='ff02::fb'/></rule>
</filter>""")
    wrapper = filter_from_xml("""<filter name='dualstack-with-mdns'>
  <filterref filter='vmguard-clean-traffic-dualstack'/>
  <filterref filter='allow-mdns'/>
</filter>""")
    filters = {**BUILTIN_FILTERS, mdns.name: mdns, wrapper.name: wrapper}
    binding = Binding("vnet0", MAC, FilterRef(wrapper.name, {"IP": ("192.0.2.10",), "IPV6": ("2001:db8::10",)}))
    entries = resolve(filters, binding).chain("ipv6-vmg-dst").entries
    assert [(r.action, str((r.get("dstipaddr") or ("",))[0])) for r in entries if r.direction == "in"][-2:] == [
        ("return", "ff02::fb"), ("drop", "")]


@pytest.mark.parametrize("name", sorted(n for n in BUILTIN_FILTERS if n.startswith("vmguard-")))
def test_our_builtins_round_trip(name):
    flt = BUILTIN_FILTERS[name]
    assert filter_from_xml(filter_to_xml(flt)) == flt
    assert filter_from_dict(filter_to_dict(flt)) == flt
