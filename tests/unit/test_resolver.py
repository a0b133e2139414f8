"""Resolver: tree walk, variables, missing variables, loops, ordering."""

import pytest

from engine.builtin_filters import BUILTIN_FILTERS
from engine.errors import NwfilterError
from engine.model import Binding, Filter, FilterRef, Match, Rule
from engine.resolver import MissingVariables, missing_variables, resolve
from engine.ruleset import Jump, ResolvedRule

MAC = "52:54:00:00:00:01"


def rule(action="accept", direction="out", priority=500, element=None, negate=False, **attrs):
    return Rule(action, direction, priority, protocol=element,
                attributes={k: Match(v, negate) for k, v in attrs.items()})


def bind(filter_name, **params):
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in params.items()}
    return Binding("vnet0", MAC, FilterRef(filter_name, values))


def rules_of(ruleset, chain="root"):
    return [e for e in ruleset.chain(chain).entries if isinstance(e, ResolvedRule)]


def values(ruleset, attribute, chain="root"):
    return [r.get(attribute)[0] for r in rules_of(ruleset, chain) if r.get(attribute)]


def test_loop_is_refused():
    filters = {"a": Filter("a", entries=[FilterRef("b")]), "b": Filter("b", entries=[FilterRef("a")])}
    with pytest.raises(NwfilterError, match="loop: a -> b -> a"):
        resolve(filters, bind("a"))


def test_self_loop_is_refused():
    filters = {"a": Filter("a", entries=[FilterRef("a")])}
    with pytest.raises(NwfilterError, match="loop"):
        resolve(filters, bind("a"))


def test_missing_filter_names_the_referrer():
    filters = {"a": Filter("a", entries=[FilterRef("nope")])}
    with pytest.raises(NwfilterError, match="filter 'a'.*'nope', which is not defined"):
        resolve(filters, bind("a"))
    with pytest.raises(NwfilterError, match="binding.*'ghost'"):
        resolve(filters, bind("ghost"))


def test_diamond_is_not_a_loop():
    leaf = Filter("leaf", entries=[rule(element="mac", srcmacaddr="$MAC")])
    filters = {"leaf": leaf, "a": Filter("a", entries=[FilterRef("leaf"), FilterRef("leaf")])}
    assert len(rules_of(resolve(filters, bind("a")))) == 2


def test_missing_variables_are_collected_over_the_whole_tree():
    filters = {
        "top": Filter("top", entries=[FilterRef("x"), FilterRef("y")]),
        "x": Filter("x", entries=[rule(element="ip", srcipaddr="$IP")]),
        "y": Filter("y", entries=[rule(element="ip", dstipaddr="$GW"), rule(element="mac", srcmacaddr="$MAC")]),
    }
    assert missing_variables(filters, bind("top")) == {"IP", "GW"}
    with pytest.raises(MissingVariables) as info:
        resolve(filters, bind("top"))
    assert info.value.names == ("GW", "IP") and not info.value.learnable


def test_only_ip_missing_means_learning():
    with pytest.raises(MissingVariables) as info:
        resolve(BUILTIN_FILTERS, bind("clean-traffic"))
    assert info.value.learnable
    assert "can be learned" in str(info.value)


def test_learned_ip_completes_the_binding():
    ruleset = resolve(BUILTIN_FILTERS, bind("clean-traffic"), extra={"IP": ["192.0.2.10"]})
    assert "192.0.2.10" in values(ruleset, "srcipaddr", "ipv4-ip")


def test_binding_parameters_override_filterref_defaults():
    filters = {
        "top": Filter("top", entries=[FilterRef("x", {"GW": ("192.0.2.1",), "PORT": ("80",)})]),
        "x": Filter("x", entries=[rule(element="ip", dstipaddr="$GW", protocol="tcp", dstportstart="$PORT")]),
    }
    ruleset = resolve(filters, bind("top", GW="192.0.2.254"))
    assert values(ruleset, "dstipaddr") == ["192.0.2.254"]
    assert values(ruleset, "dstportstart") == [80]


def test_list_iterates_and_duplicates_give_no_duplicate_rules():
    filters = {"x": Filter("x", entries=[rule(element="ip", srcipaddr="$IP")])}
    ruleset = resolve(filters, bind("x", IP=["192.0.2.1", "192.0.2.2", "192.0.2.1"]))
    assert values(ruleset, "srcipaddr") == ["192.0.2.1", "192.0.2.2"]


def test_one_iterator_walks_lists_in_parallel():
    filters = {"x": Filter("x", entries=[rule(element="ip", srcipaddr="$A", dstipaddr="$B")])}
    ruleset = resolve(filters, bind("x",
                                    A=["192.0.2.1", "192.0.2.2", "192.0.2.1"],
                                    B=["198.51.100.1", "198.51.100.2", "198.51.100.1"]))
    pairs = [(r.get("srcipaddr")[0], r.get("dstipaddr")[0]) for r in rules_of(ruleset)]
    assert pairs == [("192.0.2.1", "198.51.100.1"), ("192.0.2.2", "198.51.100.2")]


def test_parallel_lists_of_unequal_length_are_refused():
    filters = {"x": Filter("x", entries=[rule(element="ip", srcipaddr="$A", dstipaddr="$B")])}
    with pytest.raises(NwfilterError, match="same number of values"):
        resolve(filters, bind("x", A=["192.0.2.1", "192.0.2.2"], B=["198.51.100.1"]))


def test_different_iterators_give_the_cross_product_first_varies_fastest():
    filters = {"x": Filter("x", entries=[rule(element="ip", srcipaddr="$A[@1]", dstipaddr="$B[@2]")])}
    ruleset = resolve(filters, bind("x", A=["192.0.2.1", "192.0.2.2"], B=["198.51.100.1", "198.51.100.2"]))
    pairs = [(r.get("srcipaddr")[0][-1], r.get("dstipaddr")[0][-1]) for r in rules_of(ruleset)]
    assert pairs == [("1", "1"), ("2", "1"), ("1", "2"), ("2", "2")]


def test_index_access_and_index_past_the_end():
    filters = {"x": Filter("x", entries=[rule(element="ip", srcipaddr="$A[1]")])}
    assert values(resolve(filters, bind("x", A=["192.0.2.1", "192.0.2.2"])), "srcipaddr") == ["192.0.2.2"]
    with pytest.raises(NwfilterError, match=r"\$A\[1\] is past the end"):
        resolve(filters, bind("x", A="192.0.2.1"))


@pytest.mark.parametrize("hostile", ["1.2.3.4; flush ruleset", "$(reboot)", "a'b", "x\ny", "9" * 300])
def test_hostile_variable_values_never_resolve(hostile):
    with pytest.raises(NwfilterError) as info:
        resolve(BUILTIN_FILTERS, bind("clean-traffic", IP=hostile))
    assert "\n" not in str(info.value)


def test_value_checked_against_the_attribute_it_lands_in():
    filters = {"x": Filter("x", entries=[rule(element="ip", srcipaddr="$V"), rule(element="mac", srcmacaddr="$V")])}
    with pytest.raises(NwfilterError, match="<mac srcmacaddr>.*from \\$V.*not a valid MAC"):
        resolve(filters, bind("x", V="192.0.2.1"))


def test_root_rules_and_jumps_interleave_by_priority_jump_first_on_ties():
    filters = {
        "top": Filter("top", entries=[
            rule(priority=-500, element="mac", protocolid="arp"),
            FilterRef("arpf"),
            rule(priority=-900),
            FilterRef("macf"),
            rule(priority=0),
        ]),
        "arpf": Filter("arpf", chain="arp", entries=[rule(action="drop")]),
        "macf": Filter("macf", chain="mac-x", priority=-600, entries=[rule(action="return")]),
    }
    root = resolve(filters, bind("top")).chain("root").entries
    shape = [f"jump {e.chain}" if isinstance(e, Jump) else e.priority for e in root]
    assert shape == [-900, "jump mac-x", "jump arp", -500, 0]


def test_sub_chain_rules_sort_by_priority_across_filters_stably():
    filters = {
        "top": Filter("top", entries=[FilterRef("a"), FilterRef("b")]),
        "a": Filter("a", chain="ipv4", entries=[rule(priority=700, srcipaddr="192.0.2.1", element="ip"),
                                                rule(priority=100, srcipaddr="192.0.2.2", element="ip")]),
        "b": Filter("b", chain="ipv4", entries=[rule(priority=700, srcipaddr="192.0.2.3", element="ip")]),
    }
    assert values(resolve(filters, bind("top")), "srcipaddr", "ipv4") == ["192.0.2.2", "192.0.2.1", "192.0.2.3"]


def test_sub_chain_exists_only_in_directions_it_has_rules_for():
    ruleset = resolve(BUILTIN_FILTERS, bind("clean-traffic", IP="192.0.2.10"))
    out_chains = [c.name for c in ruleset.for_direction("out")]
    in_chains = [c.name for c in ruleset.for_direction("in")]
    assert out_chains == ["root", "mac", "ipv4-ip", "arp-mac", "arp-ip", "rarp"]
    assert in_chains == ["root", "ipv4", "rarp"]


def test_l3_rules_are_separate_and_ordered_root_first():
    filters = {
        "top": Filter("top", entries=[FilterRef("sub"), rule(priority=900, element="tcp", dstportstart="22")]),
        "sub": Filter("sub", chain="ipv4", entries=[rule(priority=100, element="udp", dstportstart="53")]),
    }
    ruleset = resolve(filters, bind("top"))
    assert [r.protocol for r in ruleset.ip_rules] == ["tcp", "udp"]
    assert [c.name for c in ruleset.chains] == ["root"]


def test_every_builtin_resolves_with_typical_parameters():
    params = dict(IP="192.0.2.10", IPV6="2001:db8::10", DHCPSERVER="192.0.2.1", GATEWAY_MAC="52:54:00:00:00:fe",
                  RA_SERVER="fe80::1")
    for name in BUILTIN_FILTERS:
        params["DHCPSERVER"] = "2001:db8::1" if "dhcpv6" in name else "192.0.2.1"
        needed = missing_variables(BUILTIN_FILTERS, bind(name))
        resolve(BUILTIN_FILTERS, bind(name, **{k: v for k, v in params.items() if k in needed}))
