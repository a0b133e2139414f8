#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: network
short_description: The firewall of virtual networks (NAT, routed, open, isolated), as libvirt's network driver builds it
version_added: 0.2.0
description:
  - Defines a virtual network's firewall - how the guests on a bridge reach the outside - or removes it.
    The same rules as libvirt's network driver for each forward mode - C(nat) (masquerade, tcp/udp source ports
    1024-65535 unless O(nat.ports) says otherwise, replies to guests' connections pass, new connections from outside
    do not), C(route) (no NAT), C(isolated) (guests reach only each other and the host) and C(open) (no rules) -
    plus DNS and DHCP from the bridge to the host.
  - The bridge and the forward device are matched by name; neither has to exist when the network is applied,
    and either may be deleted and re-created. This module does not create the bridge or run DHCP/DNS.
  - All networks live in one nftables table of their own (C(inet vmguard-net)), apart from the per-port filters;
    each change is one transaction. The host's IP forwarding is turned on for networks that forward, as libvirt does.
  - The bulk form O(networks) sets many networks in one transaction; with O(exclusive=true) the host's networks
    become exactly that list.
author: vmguard developers (@vmguard)
options:
  name:
    description: The network's name (letters, digits, C(.), C(_), C(-)).
    type: str
  bridge:
    description: The bridge the guests are on (for example C(virbr0)).
    type: str
  forward:
    description: How guests reach the outside.
    type: dict
    suboptions:
      mode:
        description: libvirt's forward mode.
        type: str
        choices: [nat, route, open, isolated]
        default: isolated
      dev:
        description: Forward only through this device (matched by name).
        type: str
  ipv4:
    description:
      - The host's IPv4 addresses on the bridge with their prefixes (C(192.168.122.1/24) or C({address, prefix}) or
        C({address, netmask})); the networks they are in are the guests' networks.
    type: list
    elements: raw
    default: []
  ipv6:
    description: The host's IPv6 addresses on the bridge with their prefixes (C(2001:db8::1/64)).
    type: list
    elements: raw
    default: []
  nat:
    description: NAT options, for O(forward.mode=nat).
    type: dict
    suboptions:
      addresses:
        description: Translate to these IPv4 addresses (C(start-end)) instead of the outgoing interface's.
        type: str
      ports:
        description: Source ports for translated tcp and udp (C(start-end)).
        type: str
      ipv6:
        description: NAT IPv6 too (otherwise a nat network's IPv6 ranges are routed, as in libvirt).
        type: bool
        default: false
  xml:
    description: A libvirt C(<network>) definition instead of the options above; only name, forward (mode, dev, nat),
      bridge name and ip addresses are used, the rest is ignored.
    type: str
  state:
    description: Whether the network should exist (single form).
    type: str
    choices: [present, absent]
    default: present
  networks:
    description: Bulk form, a list of networks with the keys C(name), C(bridge), C(forward), C(ipv4), C(ipv6), C(nat)
      (or C(xml)).
    type: list
    elements: dict
  exclusive:
    description: With O(networks), remove every network not in the list.
    type: bool
    default: false
extends_documentation_fragment:
  - vmguard.nwfilter.host
attributes:
  check_mode:
    support: full
    details: Changes nothing in the store or the kernel.
  diff_mode:
    support: full
    details: The canonical network XML before and after.
"""

EXAMPLES = r"""
- name: libvirt's default network - NAT through any device
  vmguard.nwfilter.network:
    name: default
    bridge: virbr0
    forward: {mode: nat}
    ipv4: [192.168.122.1/24]

- name: A routed network, out through eth1 only, with IPv6
  vmguard.nwfilter.network:
    name: lab
    bridge: br-lab
    forward: {mode: route, dev: eth1}
    ipv4: [10.10.0.1/24]
    ipv6: [2001:db8:10::1/64]

- name: From libvirt's own XML
  vmguard.nwfilter.network:
    xml: "{{ lookup('ansible.builtin.file', 'default.xml') }}"

- name: Exactly these networks on the host
  vmguard.nwfilter.network:
    exclusive: true
    networks:
      - {name: default, bridge: virbr0, forward: {mode: nat}, ipv4: [192.168.122.1/24]}
      - {name: private, bridge: virbr1, ipv4: [10.20.0.1/24]}
"""

RETURN = r"""
networks:
  description: The names of the networks defined, changed or removed (or that would be, in check mode).
  returned: success
  type: list
  elements: str
  sample: [default]
repaired:
  description:
    - What of the stored networks' table the kernel lacked or held otherwise (for example after C(nft flush ruleset))
      and this run put back (in check mode, would put back), one line each; the run then reports C(changed).
  returned: success
  type: list
  elements: str
  sample: ["table inet vmguard-net is missing"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmguard.nwfilter.plugins.module_utils.common import ROOT_OPTION, diff_of, engine_call, host_for
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.network_forms import (
    network_from_dict, network_from_xml)

FIELDS = ("name", "bridge", "forward", "ipv4", "ipv6", "nat")


def _network(module: AnsibleModule, data: dict):
    if data.get("xml"):
        return engine_call(module, network_from_xml, data["xml"])
    data = {key: value for key, value in data.items() if key in FIELDS and value not in (None, [], {})}
    for key in ("forward", "nat"):
        if isinstance(data.get(key), dict):
            data[key] = {k: v for k, v in data[key].items() if v is not None}
    return engine_call(module, network_from_dict, data)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            bridge=dict(type="str"),
            forward=dict(type="dict", options=dict(
                mode=dict(type="str", choices=["nat", "route", "open", "isolated"], default="isolated"),
                dev=dict(type="str"))),
            ipv4=dict(type="list", elements="raw", default=[]),
            ipv6=dict(type="list", elements="raw", default=[]),
            nat=dict(type="dict", options=dict(addresses=dict(type="str"), ports=dict(type="str"),
                                               ipv6=dict(type="bool", default=False))),
            xml=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            networks=dict(type="list", elements="dict"),
            exclusive=dict(type="bool", default=False),
            root=ROOT_OPTION,
        ),
        mutually_exclusive=[("networks", "name", "xml"), ("xml", "bridge"), ("xml", "forward"), ("xml", "nat"),
                            ("networks", "bridge")],
        required_one_of=[("networks", "name", "xml")],
        required_if=[("state", "present", ("bridge", "xml", "networks"), True)],
        supports_check_mode=True,
    )
    params = module.params
    networks = host_for(module).networks
    check = module.check_mode
    if params["networks"] is not None:
        wanted = [_network(module, item) for item in params["networks"]]
        result = engine_call(module, networks.define, wanted, exclusive=params["exclusive"], check=check)
    elif params["state"] == "absent":
        name = params["name"] or _network(module, params).name
        result = engine_call(module, networks.undefine, [name], check=check)
    else:
        result = engine_call(module, networks.define, [_network(module, params)], check=check)
    output = dict(changed=result.changed, networks=result.networks, repaired=result.repaired)
    if module._diff:  # pylint: disable=protected-access
        output["diff"] = diff_of(result)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
