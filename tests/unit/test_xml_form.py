"""libvirt filter and binding XML: reading, canonical writing, and refusals."""

import pytest

from engine.errors import NwfilterError
from engine.model import Match
from engine.xml_form import binding_from_xml, binding_to_xml, filter_from_xml, filter_to_xml

MERGED = """<filter name='m' chain='ipv4' priority='-650'>
  <uuid>5c6d49af-b071-6127-b4ec-6f8ed4b55335</uuid>
  <rule action='accept' direction='out' priority='10' statematch='0'>
    <ip srcipaddr='$IP' protocol='0x11'/>
    <ip match='no' dstipaddr='192.0.2.0' dstipmask='255.255.255.0'/>
  </rule>
  <filterref filter='clean-traffic'><parameter name='IP' value='192.0.2.1'/><parameter name='IP' value='192.0.2.2'/></filterref>
</filter>"""


def test_merge_negation_hex_and_lists():
    flt = filter_from_xml(MERGED)
    rule = flt.entries[0]
    assert (flt.chain, flt.priority, rule.priority, rule.statematch) == ("ipv4", -650, 10, False)
    assert rule.attributes == {"srcipaddr": Match("$IP"), "dstipaddr": Match("192.0.2.0", True),
                               "dstipmask": Match("255.255.255.0", True), "protocol": Match("0x11")}
    assert flt.entries[1].parameters == {"IP": ("192.0.2.1", "192.0.2.2")}
    canonical = filter_to_xml(flt)
    assert 'match="no"' in canonical and 'protocol="0x11"' in canonical
    assert filter_from_xml(canonical) == flt and filter_to_xml(filter_from_xml(canonical)) == canonical


def test_binding_round_trip():
    text = """<filterbinding><owner><name>vm1</name><uuid>d217f2d7-5a04-0e01-8b98-ec2743436b74</uuid></owner>
      <portdev name='vnet0'/><linkdev name='eth0'/><mac address='52:54:00:AA:00:01'/>
      <filterref filter='clean-traffic'><parameter name='IP' value='192.0.2.10'/></filterref></filterbinding>"""
    binding = binding_from_xml(text)
    assert (binding.portdev, binding.linkdev, binding.owner_name) == ("vnet0", "eth0", "vm1")
    assert binding_from_xml(binding_to_xml(binding)) == binding


@pytest.mark.parametrize("text,words", [
    ("<filter name='x'><rule action='drop' direction='in'>", "malformed XML at line 1"),
    ("<!DOCTYPE x [<!ENTITY a 'b'>]><filter name='x'/>", "DOCTYPE"),
    ("<filter name='x'><bogus/></filter>", "unknown element <bogus>"),
    ("<filter name='x' colour='red'/>", "unknown attribute 'colour'"),
    ("<filter name='x'><rule action='drop' direction='in'><tcp dstport='1'/></rule></filter>", "dstport"),
    ("<filter name='x'><rule action='drop' direction='in'><tcp dstportstart='65536'/></rule></filter>", "65536"),
    ("<filter name='x'><rule action='drop' direction='in'><mac srcmacaddr='1.2.3.4'/></rule></filter>", "srcmacaddr"),
    ("<filter name='x'><rule action='drop' direction='in'><ip srcipaddr='1.2.3.4; flush ruleset'/></rule></filter>",
     "srcipaddr"),
    ("<filter name='x'><rule action='drop' direction='in'><ip/><tcp/></rule></filter>", "one protocol element"),
    ("<filter name='x'><rule action='kill' direction='in'/></filter>", "action"),
    ("<filter name='x' priority='2000'/>", "priority"),
    ("<filter name='x' chain='filter'/>", "invalid chain"),
    ("<filter name='$(reboot)'/>", "invalid filter name"),
    ("<filter name='x'><filterref filter='y'><parameter name='IP' value='1.2.3.4&#10;flush'/></filterref></filter>",
     "invalid value"),
    ("<filter name='x'><filterref filter='y'><parameter name='IP' value='\"'/></filterref></filter>", "invalid value"),
    ("<filter name='x'><rule action='drop' direction='in'><ip comment='" + "a" * 300 + "'/></rule></filter>",
     "comment"),
    ("<filterbinding/>", "expected <filter>"),
])
def test_bad_filters_raise_one_line_errors(text, words):
    with pytest.raises(NwfilterError) as info:
        filter_from_xml(text)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text,words", [
    ("<filterbinding><owner/><portdev name='vnet0; rm'/><mac address='52:54:00:00:00:01'/>"
     "<filterref filter='x'/></filterbinding>", "interface name"),
    ("<filterbinding><owner/><portdev name='vnet0'/><mac address='nope'/><filterref filter='x'/></filterbinding>",
     "mac"),
    ("<filterbinding><owner/><portdev name='vnet0'/><mac address='52:54:00:00:00:01'/></filterbinding>",
     "<filterref>"),
])
def test_bad_bindings(text, words):
    with pytest.raises(NwfilterError) as info:
        binding_from_xml(text)
    assert words in str(info.value)
