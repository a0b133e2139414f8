"""The YAML form: the documented example, and errors that name the path."""

import pytest
import yaml

from engine.dict_form import filter_from_dict, filter_to_dict
from engine.errors import NwfilterError
from engine.model import Match
from engine.xml_form import filter_from_xml, filter_to_xml

EXAMPLE = """
name: web-vm
rules:
  - filterref: clean-traffic
    parameters: {IP: [192.0.2.10, 192.0.2.11], DHCPSERVER: 192.0.2.1}
  - action: accept
    direction: in
    tcp: {dstportstart: 22}
  - action: drop
    direction: inout
    priority: 900
    all: {}
  - action: drop
    direction: out
    ip:
      - {srcipaddr: $IP}
      - {match: false, dstipaddr: 192.0.2.0, dstipmask: 24}
"""


def test_example_means_what_the_xml_says():
    flt = filter_from_dict(yaml.safe_load(EXAMPLE))
    assert flt.entries[0].parameters == {"IP": ("192.0.2.10", "192.0.2.11"), "DHCPSERVER": ("192.0.2.1",)}
    assert flt.entries[1].attributes == {"dstportstart": Match("22")}
    assert flt.entries[2].protocol == "all" and flt.entries[2].priority == 900
    assert flt.entries[3].attributes["dstipmask"] == Match("24", True)
    assert filter_from_xml(filter_to_xml(flt)) == flt
    assert filter_from_dict(filter_to_dict(flt)) == flt


@pytest.mark.parametrize("rule,words", [
    ({"action": "accept", "direction": "in", "tcp": {"dstport": 22}}, "rules[0].tcp: unknown attribute"),
    ({"action": "accept", "direction": "in", "tcp": {"dstportstart": 70000}}, "70000"),
    ({"action": "accept", "direction": "in", "tcp": {}, "udp": {}}, "one protocol element"),
    ({"action": "accept", "direction": "in", "priority": "high"}, "rules[0].priority"),
    ({"action": "accept", "direction": "in", "tcp": {"match": "no"}}, "rules[0].tcp.match"),
    ({"action": "accept", "direction": "in", "colour": 1}, "unknown key or protocol element 'colour'"),
    ({"filterref": "x", "parameters": {"IP": "1.2.3.4; flush ruleset"}}, "invalid value"),
    ({"filterref": "x", "parameters": {"IP": [True]}}, "rules[0].parameters.IP"),
    ({"direction": "in"}, "needs action"),
])
def test_errors_name_the_path(rule, words):
    with pytest.raises(NwfilterError) as info:
        filter_from_dict({"name": "f", "rules": [rule]})
    assert words in str(info.value)
