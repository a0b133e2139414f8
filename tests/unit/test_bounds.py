"""Bounded work for any input: hostile trees are refused before they are
walked path by path or expanded, with one line naming the filter; trees
within the limits resolve as before. (Times: bench/hostile.py.)"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from bench.hostile import cross_product, deep, fan_out  # noqa: E402  pylint: disable=wrong-import-position
from engine import bounds  # noqa: E402  pylint: disable=wrong-import-position
from engine.bounds import check_definition, check_host_rules  # noqa: E402  pylint: disable=wrong-import-position
from engine.errors import NwfilterError  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, Filter, FilterRef, Match, Rule  # noqa: E402  pylint: disable=wrong-import-position
from engine.resolver import missing_variables, resolve  # noqa: E402  pylint: disable=wrong-import-position
from engine.xml_form import filter_from_xml  # noqa: E402  pylint: disable=wrong-import-position

MAC = "52:54:00:00:00:01"


def tree(texts):
    return {f.name: f for f in map(filter_from_xml, texts)}


def bind(name, **params):
    return Binding("vnet0", MAC, FilterRef(name, params))


def one_line(exc):
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_fan_out_is_refused_naming_the_innermost_filter_over_the_limit():
    filters = tree(fan_out(21))
    with pytest.raises(NwfilterError) as exc:
        resolve(filters, bind("fan0"))
    # fan8's tree is the first with more than 10000 filter instances (2**14 - 1)
    assert one_line(exc) == ("binding 'vnet0': filter 'fan8': the tree walks 16383 filter instances over all "
                             "its reference paths, more than 10000")
    with pytest.raises(NwfilterError, match="filter 'fan8'"):
        missing_variables(filters, bind("fan0"))


def test_fan_out_is_refused_at_define_whatever_the_order():
    filters = tree(fan_out(21))
    with pytest.raises(NwfilterError, match="filter 'fan8'"):
        check_definition(filters, "fan8")
    # defined top down, the leaf comes last: its ancestors' trees are checked too
    with pytest.raises(NwfilterError, match="filter 'fan8'"):
        check_definition(filters, "fan21")
    check_definition(tree(fan_out(12)), "fan12")  # 2**13 - 1 filter instances: within the limit


def test_a_thousand_levels_are_refused_without_recursion():
    filters = tree(deep(1000))
    with pytest.raises(NwfilterError) as exc:
        resolve(filters, bind("deep0"))
    assert one_line(exc) == "binding 'vnet0': filter 'deep936': filter references nest more than 64 deep"


def test_the_deepest_tree_allowed_resolves():
    filters = tree(deep(bounds.MAX_DEPTH - 1))  # 64 filters on one path
    assert len(resolve(filters, bind("deep0")).ip_rules) == 1
    with pytest.raises(NwfilterError, match="more than 64 deep"):
        resolve(tree(deep(bounds.MAX_DEPTH)), bind("deep0"))


def test_a_cross_product_is_refused_before_it_is_expanded():
    texts, binding = cross_product(300)
    with pytest.raises(NwfilterError) as exc:
        resolve(tree(texts), binding)
    assert one_line(exc) == ("binding 'hostile0': the filter tree expands to 90000 rules, more than 5000 "
                             "(filter 'cross' alone to 90000)")


def test_the_rule_limit_counts_every_path_and_allows_exactly_the_limit():
    texts, binding = cross_product(50)  # 2500 instances, referenced twice below one filter
    filters = {**tree(texts), "twice": Filter("twice", entries=(FilterRef("cross"), FilterRef("cross")))}
    both = Binding("vnet0", MAC, FilterRef("twice", binding.filterref.parameters))
    assert len(resolve(filters, both).ip_rules) == 5000
    filters["thrice"] = Filter("thrice", entries=(FilterRef("twice"), FilterRef("cross", {"IP": ("10.9.9.9",)})))
    with pytest.raises(NwfilterError, match="expands to 7500 rules, more than 5000"):
        resolve(filters, Binding("vnet0", MAC, FilterRef("thrice", binding.filterref.parameters)))


def test_rule_occurrences_alone_are_refused_before_the_walk():
    many = Filter("many", entries=tuple(Rule("accept", "in", priority=p % 1000, protocol="tcp",
                                             attributes={"dstportstart": Match(str(p))}) for p in range(1, 101)))
    filters = {"many": many, "top": Filter("top", entries=(FilterRef("many"),) * 51)}
    with pytest.raises(NwfilterError, match="filter 'top': the tree has 5100 rules"):
        check_definition(filters, "many")


def test_loops_are_named_from_the_filter_defined():
    filters = tree(["<filter name='a'><filterref filter='b'/></filter>",
                    "<filter name='b'><filterref filter='c'/></filter>",
                    "<filter name='c'><filterref filter='a'/></filter>"])
    with pytest.raises(NwfilterError, match="^filter reference loop: b -> c -> a -> b$"):
        check_definition(filters, "b")


def test_the_host_limit_names_the_largest_port():
    check_host_rules(bounds.MAX_HOST_RULES, lambda: pytest.fail("counts read under the limit"))
    with pytest.raises(NwfilterError, match=r"would hold 250001 nft rules, more than 250000 \(the largest, 'a', "):
        check_host_rules(bounds.MAX_HOST_RULES + 1, lambda: {"a": bounds.MAX_HOST_RULES - 10, "b": 11})
