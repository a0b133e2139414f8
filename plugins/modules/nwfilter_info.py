#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nwfilter_info
short_description: Report the network filters and bindings of a host, and the rules in force
version_added: 0.1.0
description:
  - Returns the bindings asked for, each with its resolved rules and the exact nftables rules in force,
    and the filters asked for as canonical XML.
  - By default only what the user defined is returned; the built-in filters only with O(builtins=true) or by O(name).
  - Reads the store once and lists the nftables rules once per call, whatever the number of bindings.
author: vmguard developers (@vmguard)
options:
  name:
    description: Report only this filter (built-in or not).
    type: str
  portdev:
    description:
      - Report only this binding, and as RV(filters) only the filters of its tree.
      - Nothing is returned for a valid name without a binding; an invalid interface name fails.
    type: str
  builtins:
    description: Also return the built-in filters (those not overridden) among RV(filters).
    type: bool
    default: false
extends_documentation_fragment:
  - vmguard.nwfilter.host
  - vmguard.nwfilter.host.info_module
notes:
  - Warns for every binding whose rules the kernel does not hold as stored (for example after C(nft flush ruleset)).
  - Warns when bindings have layer-3/4 rules and C(net.bridge.bridge-nf-call-iptables) or C(-ip6tables) is not 1 (those rules then see no bridged traffic).
"""

EXAMPLES = r"""
- name: What is enforced on vnet0
  vmguard.nwfilter.nwfilter_info:
    portdev: vnet0
  register: info

- ansible.builtin.debug:
    var: info.bindings.vnet0.nft

- name: The built-in clean-traffic filter as XML
  vmguard.nwfilter.nwfilter_info:
    name: clean-traffic
  register: builtin
"""

RETURN = r"""
filters:
  description:
    - The filters asked for, by name; with O(portdev), those of its tree; built-ins only with O(builtins=true) or O(name).
  returned: always
  type: dict
  contains:
    xml:
      description: The filter as canonical libvirt XML.
      type: str
      sample: '<filter name="web" chain="root"><filterref filter="clean-traffic"/></filter>'
    builtin:
      description: True for a built-in filter that no user filter overrides.
      type: bool
      sample: false
  sample: {web: {xml: '<filter name="web" chain="root"><filterref filter="clean-traffic"/></filter>', builtin: false}}
bindings:
  description: The bindings asked for, by portdev.
  returned: always
  type: dict
  sample:
    vnet0: {portdev: vnet0, mac: "52:54:00:aa:00:01", filter: web, parameters: {IP: 192.0.2.10}, learning: false,
            learned: {}, locked: {}, resolved_rules: ["out mac: 500 return mac srcmacaddr=52:54:00:aa:00:01"],
            nft: "table bridge vmguard {...}", port_id: 1, tree: [clean-traffic, web]}
  contains:
    portdev:
      description: The VM's interface.
      type: str
      sample: vnet0
    mac:
      description: The VM's MAC address.
      type: str
      sample: "52:54:00:aa:00:01"
    filter:
      description: The bound filter.
      type: str
      sample: clean-traffic
    parameters:
      description: The binding's variables (a string or a list of strings each); absent when none.
      type: dict
      returned: when the binding has parameters
      sample: {IP: 192.0.2.10}
    owner:
      description: The VM that owns the interface (C(name), C(uuid)).
      type: dict
      returned: when given
      sample: {name: web1}
    linkdev:
      description: The lower device of a macvtap interface.
      type: str
      returned: when given
      sample: eth0
    learning:
      description: Whether the binding waits for its IP address (learning rules are in force, not yet the full rules).
      type: bool
      sample: false
    locked:
      description:
        - While learning, per variable learned (C(IP), C(IPV6)), the address the kernel has locked (the first one the
          VM used, or its DHCP server gave it), or none yet; empty once the full rules are in force.
      type: dict
      sample: {IP: [192.0.2.10]}
    learned:
      description: Addresses the learner found, per variable (C(IP), C(IPV6)).
      type: dict
      sample: {IP: [192.0.2.10]}
    resolved_rules:
      description: The resolved rules, one line each (empty while learning).
      type: list
      elements: str
      sample: ["out root: jump mac (priority -800)", "out mac: 500 return mac srcmacaddr=52:54:00:aa:00:01", "out mac: 500 drop mac"]
    nft:
      description:
        - The nftables rules in force for this binding, as C(nft list) prints them, read from the kernel.
        - Chains that many bindings share are shown with this binding's elements of their sets only.
      type: str
      sample: "table bridge vmguard {\n\tchain p/vnet0/o {\n\t\tether type ip jump p/vnet0/o/ipv4-ip\n\t\tdrop\n\t}\n}\n"
    port_id:
      description: The binding's port number in the nftables rules (packet mark bits).
      type: int
      sample: 1
    tree:
      description: The names of the filters the binding's tree uses, built-ins included.
      type: list
      elements: str
      sample: [allow-incoming-ipv4, clean-traffic, no-arp-spoofing, no-ip-spoofing, no-mac-spoofing, web]
    in_force:
      description:
        - Whether the kernel holds the binding's rules as stored, each chain with the rules we put there as the kernel
          encodes them (for example not after C(nft flush ruleset), nor after one of its rules was replaced in place).
      type: bool
      sample: true
    not_in_force_because:
      description: Why the rules are not in force, one line.
      type: str
      returned: when C(in_force) is false
      sample: table bridge vmguard is missing
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmguard.nwfilter.plugins.module_utils.common import ROOT_OPTION, engine_call, host_for, warn_if_layer3_unseen
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.dict_form import binding_to_dict
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.model import check_ifname
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.xml_form import filter_to_xml


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(name=dict(type="str"), portdev=dict(type="str"), builtins=dict(type="bool", default=False),
                           root=ROOT_OPTION),
        supports_check_mode=True,
    )
    params = module.params
    portdev = params["portdev"]
    if portdev is not None:
        engine_call(module, check_ifname, portdev, "portdev")
    host = host_for(module)
    stored = engine_call(module, host.bindings, None if portdev is None else [portdev])
    ports = None if portdev is None else [portdev] if portdev in stored else []
    bindings = {p: dict(binding_to_dict(stored[p]), **status) for p, status in engine_call(module, host.report, ports).items()}
    user = engine_call(module, host.user_filters)
    every = engine_call(module, host.filters)
    if params["name"] is not None:
        wanted = {params["name"]}
    else:
        wanted = set(every) if portdev is None else {name for found in bindings.values() for name in found["tree"]}
        if not params["builtins"]:
            wanted &= set(user)
    filters = {name: dict(xml=filter_to_xml(every[name]), builtin=name not in user) for name in sorted(wanted & set(every))}
    for found in bindings.values():
        if not found["in_force"]:
            module.warn(f"the rules of {found['portdev']} are not in force: {found['not_in_force_because']} (the next "
                        "change through a vmguard module, or the learner service, puts them back)")
    warn_if_layer3_unseen(module, host)
    module.exit_json(changed=False, filters=filters, bindings=bindings)


if __name__ == "__main__":
    main()
