"""Hypothesis strategies for valid filters and bindings over every element and attribute."""

from hypothesis import strategies as st

from engine import schema

NAMES = st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9_.:-]{0,20}", fullmatch=True)
VARNAMES = st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True)
VARVALUES = st.from_regex(r"[a-zA-Z0-9_.:-]{1,30}", fullmatch=True)
MACS = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
IPV4 = st.lists(st.integers(0, 255), min_size=4, max_size=4).map(lambda b: ".".join(map(str, b)))
IPV6 = st.sampled_from(["2001:db8::1", "fe80::1", "::", "2001:db8:0:1::abcd", "ff02::1:2"])


def _number(low, high):
    return st.integers(low, high).flatmap(lambda n: st.sampled_from([str(n), hex(n)]))


def _flags(items):
    return st.lists(st.sampled_from(items), min_size=1, max_size=len(items), unique=True).map(",".join)


TCP_FLAG_SETS = st.one_of(st.just("ALL"), st.just("NONE"), _flags(["SYN", "ACK", "URG", "PSH", "FIN", "RST"]))
BY_KIND = {
    "mac": MACS, "macmask": MACS,
    "ipv4": IPV4, "ipv4mask": st.one_of(_number(0, 32).filter(lambda t: not t.startswith("0x")),
                                        st.just("255.255.255.0")),
    "ipv6": IPV6, "ipv6mask": st.integers(0, 128).map(str),
    "uint8": _number(0, 255), "uint16": _number(0, 65535), "uint32": _number(0, 2 ** 32 - 1),
    "port": _number(0, 65535), "dscp": _number(0, 63), "vlanid": _number(0, 4095),
    "ethertype": st.one_of(_number(0x600, 0xFFFF), st.sampled_from(["arp", "rarp", "ipv4", "ipv6", "vlan"])),
    "ipproto": st.one_of(_number(0, 255), st.sampled_from(["tcp", "udp", "icmp", "igmp", "sctp", "esp", "ah"])),
    "arpopcode": st.one_of(_number(0, 65535), st.sampled_from(["Request", "Reply", "Request_Reverse", "ARP_NAK"])),
    "state": _flags(["NEW", "ESTABLISHED", "RELATED", "INVALID", "NONE"]),
    "tcpflags": st.tuples(TCP_FLAG_SETS, TCP_FLAG_SETS).map("/".join),
    "boolean": st.sampled_from(["true", "false", "1", "0"]),
    "comment": st.from_regex(r"[a-zA-Z0-9 _.,:;()=+-]{0,60}", fullmatch=True),
    "ipsetname": st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}", fullmatch=True),
    "ipsetflags": _flags(["src", "dst"]),
    "ndlladdr": st.one_of(MACS, st.sampled_from(["none", "NONE"])),
}
REFERENCES = st.one_of(VARNAMES.map(lambda n: "$" + n), st.tuples(VARNAMES, st.integers(0, 3)).map(
    lambda t: f"${t[0]}[{t[1]}]"), st.tuples(VARNAMES, st.integers(0, 3)).map(lambda t: f"${t[0]}[@{t[1]}]"))


@st.composite
def rules(draw):
    from engine.model import Match, Rule
    protocol = draw(st.one_of(st.none(), st.sampled_from(sorted(schema.ELEMENTS))))
    attributes = {}
    if protocol:
        spec = schema.ELEMENTS[protocol]
        for name in draw(st.lists(st.sampled_from(list(spec.attributes)), max_size=4, unique=True)):
            use_ref = spec.attributes[name] != "comment" and draw(st.booleans())
            value = draw(REFERENCES) if use_ref else draw(BY_KIND[spec.attributes[name]])
            attributes[name] = Match(value, draw(st.booleans()))
        attributes = {n: attributes[n] for n in spec.attributes if n in attributes}
    return Rule(draw(st.sampled_from(schema.ACTIONS)), draw(st.sampled_from(schema.DIRECTIONS)),
                draw(st.integers(-1000, 1000)), draw(st.booleans()), protocol, attributes)


PARAMETERS = st.dictionaries(VARNAMES.filter(lambda n: n != "CTRL_IP_LEARNING"),
                             st.lists(VARVALUES, min_size=1, max_size=3).map(tuple), max_size=3)


@st.composite
def filterrefs(draw):
    from engine.model import FilterRef
    return FilterRef(draw(NAMES), draw(PARAMETERS))


CHAINS = st.one_of(st.just("root"), st.tuples(st.sampled_from(["mac", "stp", "vlan", "ipv4", "ipv6", "arp", "rarp"]),
                                              st.from_regex(r"[a-z0-9_-]{0,4}", fullmatch=True)).map("".join))


@st.composite
def filters(draw):
    from engine.model import Filter
    return Filter(draw(NAMES), draw(CHAINS), draw(st.one_of(st.none(), st.integers(-1000, 1000))),
                  draw(st.one_of(st.none(), st.uuids().map(str))),
                  tuple(draw(st.lists(st.one_of(rules(), filterrefs()), max_size=6))))


@st.composite
def bindings(draw):
    from engine.model import Binding
    return Binding(draw(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)), draw(MACS), draw(filterrefs()),
                   draw(st.from_regex(r"[a-zA-Z0-9 _.-]{0,20}", fullmatch=True)),
                   draw(st.one_of(st.none(), st.uuids().map(str))),
                   draw(st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True))))
