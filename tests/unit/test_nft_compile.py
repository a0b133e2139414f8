"""The nftables compiler: every element and attribute renders to rules nft
accepts (checked with ``nft -c`` in a scratch namespace) or is refused with
a clear error; negation, libvirt's halves and learning rules as designed."""

import os
import re
import subprocess

import pytest

from engine.builtin_filters import BUILTIN_FILTERS
from engine.errors import NwfilterError
from engine.model import Binding, Filter, FilterRef, Match, Rule
from engine.nft_compile import compile_learning, compile_port, from_template, transaction
from engine.resolver import resolve, shape_key
from attribute_samples import CASES, OTHER_SAMPLES, REFUSED, SAMPLES, attributes as _attributes


def _program(rules, name="x"):
    filters = {name: Filter(name, entries=tuple(rules))}
    binding = Binding("vnet0", "52:54:00:00:00:01", FilterRef(name))
    return compile_port(binding, resolve(filters, binding), 1, share=False)


def _rule(element, attributes, direction="inout", negate=False, action="drop"):
    return Rule(action, direction, protocol=element,
                attributes={a: Match(v, negate) for a, v in attributes.items()})


@pytest.fixture(scope="module")
def nft_check():
    """``nft -c`` in a namespace of our own: syntax and kernel support, nothing applied."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    name = f"vmgc{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)

    def check(script):
        done = subprocess.run(["ip", "netns", "exec", name, "nft", "-c", "-f", "-"], input=script,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    yield check
    subprocess.run(["ip", "netns", "del", name], check=True)


def test_every_attribute_compiles_or_is_refused(nft_check):
    programs = []
    for index, (element, attribute) in enumerate(CASES):
        for negate in (False, True):
            # libvirt refuses stp source MACs in direction inout; see test_stp_inout_source_mac_is_refused
            rule = _rule(element, _attributes(element, attribute), "in" if element == "stp" else "inout", negate)
            portdev = f"v{index}{'n' if negate else ''}"
            binding = Binding(portdev, "52:54:00:00:00:01", FilterRef("x"))
            filters = {"x": Filter("x", entries=(rule,))}
            if (element, attribute) in REFUSED:
                with pytest.raises(NwfilterError, match="not supported by the nftables backend"):
                    compile_port(binding, resolve(filters, binding), 1)
                continue
            if negate and attribute.startswith("vmguard-nd"):
                with pytest.raises(NwfilterError, match="no match='no'"):
                    compile_port(binding, resolve(filters, binding), 1)
                continue
            programs.append(compile_port(binding, resolve(filters, binding), 1 + len(programs)))
    nft_check(transaction(programs, [], {}))
    nd_attributes = [case for case in CASES if case[1].startswith("vmguard-nd")]
    assert len(programs) == 2 * (len(CASES) - len(REFUSED)) - len(nd_attributes)


def test_every_attribute_from_a_variable_is_looked_up_or_has_chains_of_its_own(nft_check):
    """A variable's value in a shared chain is a lookup in a set keyed by
    port; where no lookup can stand the port has chains of its own. Both are
    valid nft, two ports of one shape in one transaction."""
    programs, shared = [], 0
    for index, (element, attribute) in enumerate(CASES):
        if (element, attribute) in REFUSED or attribute.startswith("vmguard-nd"):
            continue
        for negate in (False, True):
            attributes = _attributes(element, attribute)
            if not all(re.fullmatch(r"[\w.:-]+", value) for value in attributes.values()):
                continue  # not a variable's value (a comment, tcp flags)
            variables = {f"V{number}": (value,) for number, value in enumerate(attributes.values())}
            rule = Rule("drop", "in" if element == "stp" else "inout", protocol=element,
                        attributes={a: Match(f"$V{number}", negate) for number, a in enumerate(attributes)})
            filters = {"x": Filter("x", entries=(rule,))}
            for port in ("a", "b"):
                binding = Binding(f"v{index}{'n' if negate else ''}{port}", "52:54:00:00:00:01", FilterRef("x", variables))
                programs.append(compile_port(binding, resolve(filters, binding), 1 + len(programs)))
                shared += programs[-1].shape is not None
    nft_check(transaction(programs, [], {}))
    assert shared > len(programs) / 2  # most of them


def _templated_and_compiled(filters, bindings):
    """Each binding made from the template of the first (None where there
    is none), and compiled; the first is compiled first, keeping its template."""
    found = []
    for number, binding in enumerate(bindings):
        key, variables, derived = shape_key(filters, binding)
        templated = from_template(key, binding.portdev, number + 1, variables, derived) if number else None
        found.append((templated, compile_port(binding, resolve(filters, binding), number + 1,
                                              key=None if number else key)))
    return found[1:]


def test_ports_made_from_their_shapes_template_are_the_ports_compiled():
    """A bulk change compiles the first port of each resolver.shape_key and
    makes the others from its template: for every attribute a variable can
    give, negated or not, in both halves of an inout rule, with other values
    and another MAC, the template gives what compiling the port gives."""
    made = 0
    for index, (element, attribute) in enumerate(CASES):
        if (element, attribute) in REFUSED or attribute.startswith("vmguard-nd"):
            continue
        for negate in (False, True):
            names = list(_attributes(element, attribute))
            if not all(re.fullmatch(r"[\w.:-]+", value) for value in _attributes(element, attribute).values()):
                continue  # not a variable's value (a comment, tcp flags)
            rule = Rule("drop", "in" if element == "stp" else "inout", protocol=element,
                        attributes={a: Match(f"$V{number}", negate) for number, a in enumerate(names)})
            filters = {"x": Filter("x", entries=(rule,))}
            bindings = [Binding(f"t{index}{negate:d}{port}", mac, FilterRef("x", {
                f"V{number}": (value,) for number, value in enumerate(_attributes(element, attribute, samples).values())}))
                for port, (mac, samples) in enumerate((("52:54:00:00:00:01", SAMPLES), ("52:54:00:00:00:02", OTHER_SAMPLES),
                                                       ("52:54:00:00:00:03", SAMPLES)))]
            for templated, compiled in _templated_and_compiled(filters, bindings):
                assert templated == (compiled if compiled.shape is not None else None), (element, attribute, negate)
                made += templated is not None
    assert made > len(CASES)  # most of them have a shape


def test_ports_of_the_builtin_filters_made_from_a_template_are_the_ports_compiled():
    """Every builtin filter, given its variables (an IPv6 link-local address
    derived from the MAC), and a tree whose filterref gives a default."""
    web = Filter("web", entries=(Rule("accept", "in", protocol="tcp", attributes={
        "srcipaddr": Match("$IP"), "dstportstart": Match("$PORT")}),))
    site = Filter("site", entries=(FilterRef("clean-traffic"), FilterRef("web", {"PORT": ("8443",)})))
    filters = {**BUILTIN_FILTERS, "web": web, "site": site}
    made = 0
    for name in sorted(set(filters) - {"web"}):  # web's PORT comes from site
        bindings = [Binding(f"b{number}", f"52:54:00:00:{number:02x}:01", FilterRef(name, {
            "IP": (f"192.0.2.{number + 10}",), "IPV6": (f"2001:db8::{number + 10}",), "GATEWAY_MAC": ("52:54:00:00:00:fe",),
            "RA_SERVER": ("fe80::1",), "DHCPSERVER": ("2001:db8::1",) if "v6" in name else ("192.0.2.1",)}))
            for number in range(3)]
        for templated, compiled in _templated_and_compiled(filters, bindings):
            assert templated == (compiled if compiled.shape is not None else None), name
            made += templated is not None
    assert made >= len(BUILTIN_FILTERS)


def test_a_value_a_template_cannot_take_is_left_to_the_compile():
    """An invalid value makes no program: compiling the port says what is wrong."""
    filters = {"x": Filter("x", entries=(Rule("drop", "out", protocol="ip", attributes={"srcipaddr": Match("$IP")}),))}
    good = Binding("g0", "52:54:00:00:00:01", FilterRef("x", {"IP": ("192.0.2.1",)}))
    key, _variables, _derived = shape_key(filters, good)
    compile_port(good, resolve(filters, good), 1, key=key)
    bad = Binding("g1", "52:54:00:00:00:02", FilterRef("x", {"IP": ("192.0.2.300",)}))
    key, variables, derived = shape_key(filters, bad)
    assert from_template(key, bad.portdev, 2, variables, derived) is None
    with pytest.raises(NwfilterError, match="not a valid IPv4 address"):
        resolve(filters, bad)
    listed = Binding("g2", "52:54:00:00:00:03", FilterRef("x", {"IP": ("192.0.2.2", "192.0.2.3")}))
    assert shape_key(filters, listed) is None  # two values: each rule may expand to several


def test_builtin_filters_compile(nft_check):
    programs = []
    for index, name in enumerate(sorted(BUILTIN_FILTERS)):
        params = {"IP": ("192.0.2.10",), "IPV6": ("2001:db8::10",), "GATEWAY_MAC": ("52:54:00:00:00:fe",),
                  "RA_SERVER": ("fe80::1",),
                  "DHCPSERVER": ("2001:db8::1",) if "v6" in name else ("192.0.2.1",)}
        binding = Binding(f"b{index}", "52:54:00:00:00:01", FilterRef(name, params))
        programs.append(compile_port(binding, resolve(BUILTIN_FILTERS, binding), index + 1))
    binding = Binding("learn", "52:54:00:00:00:01", FilterRef("clean-traffic"))
    programs.append(compile_learning(binding, {"CTRL_IP_LEARNING": ("dhcp",), "DHCPSERVER": ("192.0.2.1",)}, 99))
    binding6 = Binding("learn6", "52:54:00:00:00:02", FilterRef("clean-traffic"))
    programs.append(compile_learning(binding6, {"CTRL_IP_LEARNING": ("dhcp",), "DHCPSERVERV6": ("fe80::1",)}, 98,
                                     ipv6=True))
    programs.append(compile_learning(Binding("learnany", "52:54:00:00:00:03", FilterRef("clean-traffic")),
                                     {"DHCPSERVER": ("192.0.2.1",)}, 97, ipv6=True))
    nft_check(transaction(programs, [], {}))


def test_negated_header_matches_are_masked():
    text = _program([_rule("mac", {"srcmacaddr": "52:54:00:00:00:02", "protocolid": "ipv6"}, "in", True)]).text
    assert "ether saddr & ff:ff:ff:ff:ff:ff != 52:54:00:00:00:02 ether type & 0xffff != 0x86dd drop" in text


def test_libvirt_halves_of_a_stateful_rule():
    text = _program([_rule("tcp", {"dstportstart": "22"}, "in", action="accept")]).text
    assert "p/vnet0/fo: meta nfproto ipv4 meta l4proto 6 th dport 22 ct state new,established" \
        " ct direction original accept" in text
    assert "p/vnet0/fi: meta nfproto ipv4 meta l4proto 6 th sport 22 ct state established" \
        " ct direction reply return" in text


def test_negated_state_matches_none_of_the_states():
    rule = _rule("udp", {"dstportstart": "53", "state": "ESTABLISHED,RELATED"}, "out", True)
    assert "!= 53 ct state != established,related drop" in _program([rule]).text


def test_learning_rules():
    binding = Binding("vnet0", "52:54:00:00:00:01", FilterRef("clean-traffic"))
    text = compile_learning(binding, {}, 1).text
    assert "ether saddr != 52:54:00:00:00:01 drop" in text
    assert "arp saddr ether 52:54:00:00:00:01 arp saddr ip != { 0.0.0.0, 224.0.0.0-255.255.255.255 } add @p/vnet0/lock4-" \
        in text and "ip saddr != { 0.0.0.0, 224.0.0.0-255.255.255.255 } add @p/vnet0/lock4-" in text
    dhcp = compile_learning(binding, {"CTRL_IP_LEARNING": ("dhcp",), "DHCPSERVER": ("192.0.2.1",)}, 1).text
    assert "ip saddr { 192.0.2.1 } udp sport 67 udp dport 68 accept" in dhcp
    dhcp6 = compile_learning(binding, {"CTRL_IP_LEARNING": ("dhcp",), "DHCPSERVERV6": ("fe80::1",)}, 1, ipv6=True).text
    assert "ip6 saddr { fe80::1 } udp sport 547 udp dport 546 accept" in dhcp6
    assert "ip6 saddr fe80::/10 udp sport 546 udp dport 547 accept" in dhcp6


@pytest.mark.parametrize("name, value", [("DHCPSERVER", "2001:db8::1"), ("DHCPSERVERV6", "192.0.2.1"),
                                         ("DHCPSERVER", "accept")])
def test_learning_refuses_servers_of_the_wrong_kind(name, value):
    binding = Binding("vnet0", "52:54:00:00:00:01", FilterRef("clean-traffic"))
    with pytest.raises(NwfilterError, match=f"{name} must be a list of IPv"):
        compile_learning(binding, {"CTRL_IP_LEARNING": ("dhcp",), name: (value,)}, 1, ipv6=True)


def test_transaction_replaces_only_what_changes():
    first = _program([_rule("mac", {"srcmacaddr": "52:54:00:00:00:02"})])
    installed = {"vnet0": __import__("engine.nft_compile", fromlist=["PortLive"]).PortLive(
        {(f, n) for f, n, _r in first.chains}, {(f, m, k) for f, m, k, _t in first.elements})}
    script = transaction([first], [], installed)
    assert "delete element" not in script and "flush chain bridge vmguard p/vnet0/o" in script
    removal = transaction([], ["vnet0"], installed)
    assert "delete element bridge vmguard from_vm { \"vnet0\" }" in removal
    assert "delete chain bridge vmguard p/vnet0/o" in removal


def test_stp_inout_source_mac_is_refused():
    with pytest.raises(NwfilterError, match="stp in direction inout with srcmacaddr"):
        _program([_rule("stp", {"srcmacaddr": "52:54:00:00:00:02"})])


def _chains(program):
    return {name.split("/", 2)[2]: rules for family, name, rules in program.chains if family == "bridge"}


def test_clean_traffic_sub_chains_that_are_one_test_are_folded_into_root():
    binding = Binding("vnet0", "52:54:00:00:00:01", FilterRef("clean-traffic", {"IP": ("192.0.2.10",)}))
    chains = _chains(compile_port(binding, resolve(BUILTIN_FILTERS, binding), 1, share=False))
    assert sorted(chains) == ["i", "o", "o/ipv4-ip"]  # ipv4-ip has two returns: kept
    assert "ether saddr & ff:ff:ff:ff:ff:ff != 52:54:00:00:00:01 drop" in chains["o"]
    assert "ether type 0x0806 @nh,112,32 & 0xffffffff != 0xc000020a drop" in chains["o"]
    assert "ether type 0x0800 jump p/vnet0/o/ipv4-ip" in chains["o"]
    assert chains["i"][0] == "ether type 0x0800 accept"  # a sub-chain of one "accept"


def _sub(rules, chain="mac-x"):
    filters = {"x": Filter("x", chain=chain, entries=tuple(rules))}
    binding = Binding("vnet0", "52:54:00:00:00:01", FilterRef("x"))
    return _chains(compile_port(binding, resolve(filters, binding), 1, share=False))


@pytest.mark.parametrize("rules, kept", [
    # two returns, a return with two comparisons, a return not followed by the chain's end
    ([_rule("ip", {"srcipaddr": "192.0.2.1"}, action="return"), _rule("ip", {"protocol": "udp"}, action="return")],
     True),
    ([_rule("ip", {"srcipaddr": "192.0.2.1", "protocol": "udp"}, action="return"), _rule("ip", {})], True),
    ([_rule("ip", {"srcipaddr": "192.0.2.1"}, action="return"), _rule("ip", {"protocol": "udp"}),
      _rule("ip", {})], True),
    # a masked comparison is two attributes: kept; a negated one folds to the positive one
    ([_rule("mac", {"srcmacaddr": "52:54:00:00:00:00", "srcmacmask": "ff:ff:ff:00:00:00"}, action="return"),
      _rule("mac", {})], True),
    ([_rule("ip", {"srcipaddr": "192.0.2.1"}, negate=True, action="return"), _rule("ip", {}, action="accept")],
     False),
    ([_rule("ip", {"srcipaddr": "192.0.2.1"}, action="accept"), _rule("ip", {"protocol": "udp"}, action="continue")],
     False),
])
def test_only_what_gives_every_frame_the_same_verdict_is_folded(rules, kept):
    chains = _sub(rules, "ipv4-x" if rules[0].protocol == "ip" else "mac-x")
    assert (len(chains) > 2) == kept, chains


def test_a_folded_return_is_negated_behind_the_jump_guard():
    chains = _sub([_rule("ip", {"srcipaddr": "192.0.2.1"}, negate=True, action="return"),
                   _rule("ip", {}, action="accept")], "ipv4-x")
    # libvirt writes an inout rule for frames to the VM: swapped in the other direction
    assert "ether type 0x0800 ip saddr 192.0.2.1 accept" in chains["i"]
    assert "ether type 0x0800 ip daddr 192.0.2.1 accept" in chains["o"]
