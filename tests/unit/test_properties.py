"""Property tests: every valid filter survives both forms unchanged; anything
else, hostile values included, only ever raises NwfilterError."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import schema
from engine.dict_form import binding_from_dict, binding_to_dict, filter_from_dict, filter_to_dict
from engine.errors import NwfilterError
from engine.xml_form import binding_from_xml, binding_to_xml, filter_from_xml, filter_to_xml
from strategies import bindings, filters

EXAMPLES = 300
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HOSTILE = st.sampled_from(["1.2.3.4; flush ruleset", "$(reboot)", "`id`", "'", '"', "a\nb", "x" * 300,
                           "}", "{ accept }", "\\", "\x00", "192.0.2.1 drop", "--jump ACCEPT", "&amp;"])


def _only_engine_errors(call, *args):
    try:
        call(*args)
    except NwfilterError as exc:
        assert "\n" not in str(exc)


@PROPERTY
@given(filters())
def test_xml_round_trip(flt):
    text = filter_to_xml(flt)
    assert filter_from_xml(text) == flt
    assert filter_to_xml(filter_from_xml(text)) == text


@PROPERTY
@given(filters())
def test_dict_round_trip_and_forms_agree(flt):
    data = filter_to_dict(flt)
    assert filter_from_dict(data) == flt
    assert filter_to_dict(filter_from_dict(data)) == data
    assert filter_from_xml(filter_to_xml(filter_from_dict(data))) == flt


@PROPERTY
@given(bindings())
def test_binding_round_trips(binding):
    assert binding_from_xml(binding_to_xml(binding)) == binding
    assert binding_from_dict(binding_to_dict(binding)) == binding


@PROPERTY
@given(st.text(max_size=200))
def test_random_text_is_refused_cleanly(text):
    _only_engine_errors(filter_from_xml, text)
    _only_engine_errors(binding_from_xml, text)


@PROPERTY
@given(filters(), st.integers(0, 10 ** 6), st.text(min_size=1, max_size=5))
def test_mutated_xml_is_refused_cleanly(flt, position, junk):
    text = filter_to_xml(flt)
    cut = position % (len(text) + 1)
    _only_engine_errors(filter_from_xml, text[:cut] + junk + text[cut:])


@PROPERTY
@given(st.sampled_from(sorted(schema.ELEMENTS)), st.data(), HOSTILE)
def test_hostile_attribute_values_are_refused(element, data, value):
    attribute = data.draw(st.sampled_from(sorted(schema.ELEMENTS[element].attributes)))
    rule = {"action": "drop", "direction": "in", element: {attribute: value}}
    try:
        filter_from_dict({"name": "h", "rules": [rule]})
    except NwfilterError as exc:
        assert "\n" not in str(exc)
    else:
        # only a comment may hold text like this, and then only printable, quote-free text
        assert attribute == "comment" and value.isprintable() and not set(value) & set("'\"`$\\")


@PROPERTY
@given(HOSTILE, st.sampled_from(["IP", "MAC", "DHCPSERVER", "X"]))
def test_hostile_parameter_values_are_refused(value, name):
    for call, data in ((filter_from_dict, {"name": "h", "rules": [{"filterref": "f", "parameters": {name: value}}]}),
                       (binding_from_dict, {"portdev": "vnet0", "mac": "52:54:00:00:00:01", "filter": "f",
                                            "parameters": {name: [value]}})):
        try:
            call(data)
        except NwfilterError:
            continue
        raise AssertionError(f"accepted {value!r}")


JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(st.sampled_from(
                                                   ["name", "rules", "action", "direction", "tcp", "mac", "priority",
                                                    "filterref", "parameters", "match", "srcipaddr", "chain", "x"]),
                                                   inner, max_size=4)), max_leaves=12)


@PROPERTY
@given(JSONISH)
def test_random_dicts_are_refused_cleanly(data):
    _only_engine_errors(filter_from_dict, data)
    _only_engine_errors(binding_from_dict, data)
