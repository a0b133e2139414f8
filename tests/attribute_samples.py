"""A value for every attribute of every element (with what it needs beside
it), for tests that compile or install each one."""

from engine import schema

SAMPLES = {
    "mac": "52:54:00:00:00:09", "macmask": "ff:ff:ff:00:00:00", "ipv4": "192.0.2.9", "ipv4mask": "24",
    "ipv6": "2001:db8::9", "ipv6mask": "64", "uint8": "8", "uint16": "0x10", "uint32": "7", "port": "22",
    "dscp": "10", "vlanid": "10", "ethertype": "0x0800", "ipproto": "udp", "arpopcode": "Request",
    "state": "NEW,ESTABLISHED", "tcpflags": "SYN,ACK/SYN", "boolean": "true", "comment": "a comment",
    "ipsetname": "myset", "ipsetflags": "src,dst", "ndlladdr": "52:54:00:00:00:09",
}
# a second value of each type, as another port of the same filter gives it
OTHER_SAMPLES = {
    **SAMPLES, "mac": "52:54:00:ab:cd:0e", "macmask": "ff:ff:00:00:00:00", "ipv4": "198.51.100.77", "ipv4mask": "16",
    "ipv6": "2001:db8:5::77", "ipv6mask": "48", "uint8": "200", "uint16": "0x1234", "uint32": "70000", "port": "8080",
    "dscp": "46", "vlanid": "4000", "ethertype": "0x86dd", "ipproto": "17", "arpopcode": "Reply",
    "ndlladdr": "52:54:00:ab:cd:0e",
}
REFUSED = {("arp", "gratuitous"), ("rarp", "gratuitous")} | {
    (name, attr) for name, spec in schema.ELEMENTS.items() for attr in spec.attributes if attr.startswith("ipset")}
CASES = [(name, attr) for name, spec in sorted(schema.ELEMENTS.items()) for attr in spec.attributes]


def attributes(element, attribute, samples=None):
    samples = samples or SAMPLES
    attrs = {attribute: samples[schema.ELEMENTS[element].attributes[attribute]]}
    if element in ("ip", "ipv6") and "port" in attribute:
        attrs["protocol"] = "tcp"
    spec = schema.ELEMENTS[element]
    if attribute.endswith("mask"):
        base = attribute[:-4] + ("" if attribute.endswith("-mask") else "addr")
        base = base.rstrip("-")
        attrs[base] = samples[spec.attributes[base]]
    if attribute == "state":
        attrs[attribute] = "NEW"
    if attribute.startswith("vmguard-nd"):
        attrs["type"] = "136"  # neighbour advertisement
    return attrs
