"""Ports alike share chains (nft_compile.Shape): each variable's value is
looked up in a set keyed by the port. Real frames show each port held to
its own values; the kernel check compares every element as the kernel holds
it, for every kind of value a lookup can carry."""

import errno
import re

from scapy.all import IP, UDP, Ether  # pylint: disable=no-name-in-module

from attribute_samples import CASES, REFUSED, attributes as sample_attributes
from engine.host import FEW_PORTS
from engine.model import Binding, Filter, FilterRef, Match, Rule
from engine.xml_form import filter_from_xml
from lab.probes import Probe, run_probes, standard_probes, tagged
from test_integrity import FOREIGN


def _shapes(lab):
    return sorted(set(re.findall(r"chain (s/[0-9a-f]+)/", lab.nft_list())))


def _clean(guest, *addresses):
    return Binding(guest.port, guest.mac, FilterRef("clean-traffic", {"IP": addresses or (guest.ip,)}))


def _from_vm(lab, source):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    frame = Ether(src=vm.mac, dst=peer.mac) / IP(src=source, dst=peer.ip) / UDP(sport=4000, dport=5000)
    return run_probes(lab, [Probe(f"from {source}", "vm", "peer", tagged(frame))])[f"from {source}"]


def test_ports_alike_share_one_shape_and_each_keeps_its_own_values(lab, host):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.set_bindings([_clean(vm), _clean(peer)])
    assert len(_shapes(lab)) == 1 and "p/" not in lab.nft_list()
    verdicts = run_probes(lab, standard_probes(vm, peer))
    assert verdicts["ipv4 udp"] and not verdicts["spoofed ipv4"] and not verdicts["spoofed mac"]
    assert not _from_vm(lab, peer.ip)  # the peer's address, in the same set: not the VM's
    host.bind(_clean(vm, vm.ip, "192.0.2.50"))  # a list of two: another shape
    assert len(_shapes(lab)) == 2
    assert _from_vm(lab, "192.0.2.50") and _from_vm(lab, vm.ip) and not _from_vm(lab, peer.ip)
    assert host.unbind(peer.port).changed and len(_shapes(lab)) == 1  # a shape goes with its last port
    assert not _from_vm(lab, peer.ip) and _from_vm(lab, "192.0.2.50")
    lab.nft(FOREIGN)  # someone else's commit: the next call compares everything
    assert not host.converge().changed


def test_a_redefine_deletes_the_old_shape_whole(lab, host, monkeypatch):
    """Every port moves to a new shape: the old shape's sets go with their
    elements, not one element of each port after another."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.define_filter(filter_from_xml("<filter name='web'><filterref filter='clean-traffic'/></filter>"))
    others = [Binding(f"other{n}", f"52:54:00:00:01:{n:02x}", FilterRef("web", {"IP": (f"192.0.2.{100 + n}",)}))
              for n in range(3)]
    host.set_bindings([Binding(vm.port, vm.mac, FilterRef("web", {"IP": (vm.ip,)}))] + others)
    old = _shapes(lab)
    scripts = []
    monkeypatch.setattr(host.nft, "apply", lambda script, apply=host.nft.apply: (scripts.append(script), apply(script)))
    host.define_filter(filter_from_xml("<filter name='web'><filterref filter='clean-traffic'/>"
                                       "<rule action='accept' direction='in'><tcp dstportstart='22'/></rule></filter>"))
    assert len(_shapes(lab)) == 1 and _shapes(lab) != old
    assert not [line for script in scripts for line in script.splitlines() if line.startswith("delete element")]
    assert not run_probes(lab, standard_probes(vm, peer))["spoofed ipv4"]


def test_every_value_a_lookup_carries_is_compared_as_the_kernel_holds_it(lab, host, monkeypatch):
    """Every attribute from a variable, two ports each: installed, then
    compared element by element with what the kernel holds (set_members)."""
    bindings = []
    for index, (element, attribute) in enumerate(CASES):
        if (element, attribute) in REFUSED or attribute.startswith("vmguard-nd"):
            continue
        attributes = sample_attributes(element, attribute)
        if not all(re.fullmatch(r"[\w.:-]+", value) for value in attributes.values()):
            continue
        rule = Rule("drop", "in" if element == "stp" else "inout", protocol=element,
                    attributes={name: Match(f"$V{number}") for number, name in enumerate(attributes)})
        host.define_filter(Filter(f"f{index}", entries=(rule,)))
        for port in ("a", "b"):
            variables = {f"V{number}": (value,) for number, value in enumerate(attributes.values())}
            bindings.append(Binding(f"v{index}{port}", f"52:54:00:{index >> 8:02x}:{index & 0xff:02x}:0{port == 'b':d}",
                                    FilterRef(f"f{index}", variables)))
    host.set_bindings(bindings)
    listing = lab.nft_list()
    assert len(_shapes(lab)) > 20 and len(re.findall(r"\n\tset s/\S+/v\d+ ", listing)) > 20
    # a report of a few ports gets their elements by key; of many, from nft's listing: the same text
    every = host.report()
    assert len(every) > FEW_PORTS and "\tmap id_from_lo {\n\t\ttype ifname : verdict\n\t\telements = {" in listing
    commands = []
    monkeypatch.setattr(host.nft, "_run", lambda args, *rest, run=host.nft._run: commands.append(args) or run(args, *rest))
    for binding in bindings:
        few = host.report([binding.portdev])[binding.portdev]["nft"]
        assert _elements_sorted(few) == _elements_sorted(every[binding.portdev]["nft"]), binding.portdev
        assert "\t}\n\t}" not in few  # a set shown without elements is closed once
    assert commands and all(args[:1] == ["-t"] for args in commands)  # no listing with the elements: none fell back
    monkeypatch.undo()
    port = bindings[-1].portdev  # a kernel that cannot get one element: the listing is read instead
    monkeypatch.setattr(host.nft, "element", _unsupported)
    assert host.report([port])[port]["nft"] == every[port]["nft"]
    monkeypatch.undo()
    lab.nft(FOREIGN)
    assert host.converge().repaired == []


def _unsupported(*_args):
    raise OSError(errno.EOPNOTSUPP, "nftables netlink: Operation not supported")


def _elements_sorted(listing):
    """nft lists a set's elements in the kernel's order; a port's by key come in its record's."""
    return re.sub(r"elements = \{ ([^}]*) \}", lambda m: "elements = { " + ", ".join(sorted(m.group(1).split(", "))) + " }",
                  listing)
