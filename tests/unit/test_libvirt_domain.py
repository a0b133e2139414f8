"""A libvirt domain's XML as the hook gets it: interfaces, tap names and our
filter references in <metadata>, and the refusals."""

import pytest

from engine.errors import NwfilterError
from engine.libvirt_domain import NAMESPACE, Domain
from engine.model import FilterRef

UUID = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"


def domain(metadata="", interfaces=None, name="web1"):
    interfaces = interfaces if interfaces is not None else [
        "<interface type='bridge'><mac address='52:54:00:AA:00:01'/><source bridge='br0'/>"
        "<target dev='vnet3'/><model type='virtio'/></interface>",
        "<interface type='network'><mac address='52:54:00:aa:00:02'/><source network='default'/>"
        "<target dev='vnet7'/></interface>",
        "<interface type='direct'><mac address='52:54:00:aa:00:03'/><source dev='eth0' mode='bridge'/>"
        "<target dev='macvtap0'/></interface>"]
    return f"""<domain type='qemu' id='4'>
  <name>{name}</name><uuid>{UUID}</uuid>
  <metadata>
    <other:app xmlns:other="http://example.org/app"><other:x/></other:app>
    {metadata}
  </metadata>
  <devices>{''.join(interfaces)}</devices>
</domain>"""


OURS = f"""<vmguard:nwfilter xmlns:vmguard="{NAMESPACE}">
  <vmguard:interface mac="52:54:00:aa:00:01">
    <vmguard:filterref filter="clean-traffic">
      <vmguard:parameter name="IP" value="192.0.2.10"/>
      <vmguard:parameter name="IP" value="192.0.2.11"/>
    </vmguard:filterref>
  </vmguard:interface>
  <vmguard:interface mac="52:54:00:aa:00:03"><filterref filter="no-ip-spoofing"/></vmguard:interface>
</vmguard:nwfilter>"""


def test_bindings_on_the_taps_of_this_start():
    parsed = Domain(domain(OURS))
    assert (parsed.name, parsed.uuid, parsed.taps) == ("web1", UUID, ["vnet3", "vnet7", "macvtap0"])
    first, second = parsed.bindings()
    assert (first.portdev, first.mac, first.filterref) == (
        "macvtap0", "52:54:00:aa:00:03", FilterRef("no-ip-spoofing"))
    assert first.linkdev == "eth0"
    assert (second.portdev, second.mac, second.owner_name, second.owner_uuid, second.linkdev) == (
        "vnet3", "52:54:00:aa:00:01", "web1", UUID, None)
    assert second.filterref.parameters == {"IP": ("192.0.2.10", "192.0.2.11")}
    assert not parsed.doubly_filtered()


def test_no_metadata_no_bindings():
    assert Domain(domain()).bindings() == []


def test_libvirt_filterref_left_in_the_interface_is_reported():
    interfaces = ["<interface type='bridge'><mac address='52:54:00:aa:00:01'/><target dev='vnet0'/>"
                  "<filterref filter='clean-traffic'/></interface>"]
    assert Domain(domain(OURS.replace('<vmguard:interface mac="52:54:00:aa:00:03"><filterref '
                                      'filter="no-ip-spoofing"/></vmguard:interface>', ""),
                         interfaces)).doubly_filtered() == ["52:54:00:aa:00:01"]


@pytest.mark.parametrize("metadata,interfaces,words", [
    (OURS.replace("52:54:00:aa:00:03", "52:54:00:aa:00:09"), None, "mac='52:54:00:aa:00:09'> matches no interface"),
    (OURS, ["<interface type='bridge'><mac address='52:54:00:aa:00:01'/></interface>",
            "<interface type='user'><mac address='52:54:00:aa:00:03'/></interface>"], "has no tap name"),
    (OURS.replace("clean-traffic", "bad name!"), None, "interface 52:54:00:aa:00:01"),
    (OURS.replace("vmguard:parameter name", "vmguard:parameter nom"), None, "unknown attribute 'nom'"),
    (OURS.replace('mac="52:54:00:aa:00:03"', 'mac="52:54:00:aa:00:01"'), None, "given twice"),
    (OURS.replace('mac="52:54:00:aa:00:03"', 'mac="$MAC"'), None, "<vmguard:interface>"),
    (OURS.replace("<filterref filter=\"no-ip-spoofing\"/>", ""), None, "needs exactly one <filterref>"),
    (OURS.replace('filter="clean-traffic">', "filter='clean-traffic'><o:x xmlns:o='urn:o'/>"), None,
     "element {urn:o}x is not in the namespace urn:vmguard:nwfilter:1"),
])
def test_refusals(metadata, interfaces, words):
    with pytest.raises(NwfilterError) as caught:
        Domain(domain(metadata, interfaces)).bindings()
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("domain 'web1'")


@pytest.mark.parametrize("text,words", [
    ("<domain><name>x</name></domain>", "invalid"),
    ("<dom", "malformed domain XML"),
    ("<!DOCTYPE d [<!ENTITY e 'x'>]><domain/>", "DOCTYPE"),
    ("<filter name='x'/>", "expected <domain>"),
])
def test_bad_domain_xml(text, words):
    with pytest.raises(NwfilterError) as caught:
        Domain(text)
    assert words in str(caught.value)
