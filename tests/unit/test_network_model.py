"""Networks: the model's checks (one-line errors), the XML and YAML forms both
ways, and the nft the compiler writes for each mode."""

import pytest

from engine.errors import NwfilterError
from engine.network_forms import network_from_dict, network_from_xml, network_to_dict, network_to_xml
from engine.network_model import check_networks
from engine.nft_network import compile_network, table_script

LIBVIRT_DEFAULT = """<network>
  <name>default</name>
  <uuid>9a05da11-e96b-47f3-8253-a3a482e445f5</uuid>
  <forward mode='nat'>
    <nat><port start='1024' end='65535'/></nat>
  </forward>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:0a:cd:21'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
  </ip>
</network>"""


def net(**extra):
    data = {"name": "n1", "bridge": "br0", "forward": {"mode": "nat", "dev": "eth0"}, "ipv4": ["192.0.2.1/24"]}
    data.update(extra)
    return network_from_dict(data)


def test_libvirt_xml_in_canonical_out():
    network = network_from_xml(LIBVIRT_DEFAULT)
    assert (network.mode, network.bridge, network.dev, network.nat) == ("nat", "virbr0", None, None)
    assert [str(i) for i in network.ipv4] == ["192.168.122.1/24"]
    text = network_to_xml(network)
    assert "uuid" not in text and "dhcp" not in text and "<nat" not in text  # only what the firewall needs
    assert network_from_xml(text) == network
    assert network_from_dict(network_to_dict(network)) == network


def test_forms_agree():
    yaml = net(ipv6=[{"address": "2001:db8::1", "prefix": 64}, "2001:db8:1::1/64"],
               nat={"addresses": {"start": "203.0.113.1", "end": "203.0.113.9"}, "ports": "2000-3000", "ipv6": True})
    xml = network_from_xml("""<network><name>n1</name><forward mode='nat' dev='eth0'><nat ipv6='yes'>
      <address start='203.0.113.1' end='203.0.113.9'/><port start='2000' end='3000'/></nat></forward>
      <bridge name='br0'/><ip address='192.0.2.1' prefix='24'/>
      <ip family='ipv6' address='2001:db8::1' prefix='64'/><ip family='ipv6' address='2001:db8:1::1' prefix='64'/>
      </network>""")
    assert yaml == xml
    assert network_from_xml(network_to_xml(xml)) == xml
    assert network_from_xml("<network><name>i</name><bridge name='br1'/></network>").mode == "isolated"


@pytest.mark.parametrize("extra, message", [
    ({"forward": {"mode": "bridge"}}, "network 'n1': forward mode 'bridge' puts guests on a host device"),
    ({"forward": {"mode": "nated"}}, "network 'n1': unknown forward mode 'nated'"),
    ({"forward": {"mode": "nat", "dev": "br0"}}, "forward dev 'br0' is the network's own bridge"),
    ({"bridge": "bad name!"}, "bridge"),
    ({"forward": {"mode": "nat", "dev": "x" * 16}}, "forward dev"),
    ({"ipv4": ["192.0.2.0/24"]}, "192.0.2.0/24 is not a host address of 192.0.2.0/24"),
    ({"ipv4": ["192.0.2.255/24"]}, "is not a host address"),
    ({"ipv4": ["192.0.2.1/33"]}, "prefix '33' must be a whole number 1-32"),
    ({"ipv4": ["2001:db8::1/64"]}, "ipv4 takes IPv4 addresses only"),
    ({"ipv4": ["192.0.2.1/24", "192.0.2.129/25"]}, "192.0.2.0/24 and 192.0.2.128/25 overlap"),
    ({"nat": {"addresses": "203.0.113.9-203.0.113.1"}}, "nat address range 203.0.113.9-203.0.113.1 is reversed"),
    ({"nat": {"addresses": "192.0.2.5-192.0.2.6"}}, "overlaps the network's own 192.0.2.0/24"),
    ({"nat": {"ports": "3000-2000"}}, "nat port range 3000-2000 is reversed"),
    ({"nat": {"ports": "0-100"}}, "nat port '0' must be a whole number 1-65535"),
    ({"nat": {"ports": "1-70000"}}, "nat port '70000'"),
    ({"forward": {"mode": "route"}, "nat": {"ipv6": True}}, "nat options need forward mode nat, not route"),
    ({"forward": {"mode": "isolated", "dev": "eth0"}}, "an isolated network has no forward dev"),
    ({"name": "a/b"}, "network name 'a/b' must be"),
    ({"colour": "red"}, "unknown key 'colour'"),
])
def test_bad_input_one_line(extra, message):
    with pytest.raises(NwfilterError) as caught:
        net(**extra)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("xml, message", [
    ("<network><name>x</name></network>", "needs <bridge name='...'/>"),
    ("<network><name>x</name><bridge name='b'/><ip address='10.0.0.1' netmask='255.0.255.0'/></network>",
     "netmask '255.0.255.0' is not a contiguous mask"),
    ("<network><name>x</name><bridge name='b'/><ip family='ipv6' address='10.0.0.1' prefix='8'/></network>",
     "10.0.0.1 is not an ipv6 address"),
    ("<network><name>x</name><bridge name='b'/><forward mode='nat'><nat><port start='x'/></nat></forward>"
     "</network>", "nat port 'x' is not a whole number"),
    ("<filter name='x'/>", "expected <network>"),
])
def test_bad_xml(xml, message):
    with pytest.raises(NwfilterError, match=message.replace("(", r"\(")):
        network_from_xml(xml)


def test_networks_between_them():
    check_networks([net(), net(name="n2", bridge="br1", ipv4=["198.51.100.1/24"])])
    with pytest.raises(NwfilterError, match="networks 'n1' and 'n2': 192.0.2.0/24 and 192.0.2.0/25 overlap"):
        check_networks([net(), net(name="n2", bridge="br1", ipv4=["192.0.2.1/25"])])
    with pytest.raises(NwfilterError, match="networks 'n1' and 'n2' use the same bridge 'br0'"):
        check_networks([net(), net(name="n2", ipv4=["198.51.100.1/24"])])


def test_compiled_rules():
    nat = compile_network(net(nat={"ports": "2000-3000"}))
    rules = dict(nat.chains)
    assert rules["n/n1/i"] == ('iifname "br0" accept',
                               'iifname "eth0" ip daddr 192.0.2.0/24 ct state established,related accept', "reject")
    assert rules["n/n1/o"] == ('ip saddr 192.0.2.0/24 oifname "eth0" accept', "reject")
    assert 'ip saddr 192.0.2.0/24 ip daddr != 192.0.2.0/24 oifname "eth0" meta l4proto udp masquerade to ' \
        ':2000-3000' in rules["n/n1/nat"]
    assert ("nat4", "192.0.2.0/24", "n/n1/nat") in nat.elements
    route = dict(compile_network(net(forward={"mode": "route"})).chains)
    assert route["n/n1/i"][1] == "ip daddr 192.0.2.0/24 accept" and "n/n1/nat" not in route
    assert compile_network(net(forward={"mode": "open"})).chains == ()
    assert table_script([compile_network(net(forward={"mode": "open"}))]) == \
        "add table inet vmguard-net\ndelete table inet vmguard-net\n"
    isolated = dict(compile_network(net(forward={"mode": "isolated"})).chains)
    assert isolated["n/n1/i"] == ('iifname "br0" accept', "reject") and isolated["n/n1/o"] == ("reject",)
