#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nwfilter_binding
short_description: Bind network filters to VM interfaces
version_added: 0.1.0
description:
  - Binds a filter, with its parameters, to a VM's interface (its tap, C(portdev)), or removes the binding.
  - The rules match the interface by name, so they are in force before the tap exists and stay in force when it
    is deleted and re-created.
  - O(xml) takes libvirt's C(<filterbinding>) XML unchanged, as C(virsh nwfilter-binding-dumpxml) prints it.
  - The bulk form O(bindings) sets many bindings in one nftables transaction; with O(exclusive=true) the host's
    bindings become exactly that list.
  - When the only variables missing from the filter tree are C(IP) and/or C(IPV6) and C(CTRL_IP_LEARNING) is not
    C(none), the binding is stored, restrictive learning rules are enforced at once and RV(learning) names it;
    the learner service (role C(vmguard.nwfilter.learner)) then learns the addresses (C(IPV6) by DHCPv6 snooping
    in mode C(dhcp), trusted servers in C(DHCPSERVERV6)).
author: vmguard developers (@vmguard)
options:
  xml:
    description:
      - The binding as libvirt C(<filterbinding>) XML, instead of O(portdev), O(mac), O(filter), O(parameters),
        O(owner) and O(linkdev). With O(state=absent) only its C(portdev) is used.
    type: str
  portdev:
    description: The VM's interface on the host (for example C(vnet0)).
    type: str
  mac:
    description: The VM's MAC address on that interface (fills the C(MAC) variable).
    type: str
  filter:
    description: The filter to bind.
    type: str
  parameters:
    description: Variables for the filter tree; a value is a string or a list of strings.
    type: dict
    default: {}
  owner:
    description: The VM that owns the interface.
    type: dict
    suboptions:
      name:
        description: The VM's name.
        type: str
      uuid:
        description: The VM's UUID.
        type: str
  linkdev:
    description: The lower device of a macvtap interface.
    type: str
  state:
    description: Whether the binding should exist (single form).
    type: str
    choices: [present, absent]
    default: present
  bindings:
    description:
      - Bulk form, a list of bindings with the keys C(portdev), C(mac), C(filter), C(parameters), C(owner), C(linkdev),
        or each with the single key C(xml) (libvirt C(<filterbinding>) XML).
    type: list
    elements: dict
  exclusive:
    description: With O(bindings), remove every binding not in the list.
    type: bool
    default: false
extends_documentation_fragment:
  - vmguard.nwfilter.host
  - vmguard.nwfilter.host.compiles_bindings
attributes:
  diff_mode:
    support: full
    details: The canonical binding XML before and after.
notes:
  - Warns when a binding of the task has the same MAC, IP or IPV6 address as another binding (a failover pair may
    share one; otherwise it is an inventory mistake, and anti-spoofing lets each of those VMs use the address).
  - Refuses C(MAC) in O(parameters), which comes from O(mac).
  - Every run first makes the kernel hold what the store says (our tables, base chains, per-port chains and map
    elements), repairing what anyone removed or altered in one transaction and reporting it in RV(repaired);
    nothing outside our own tables is touched.
  - Warns when bindings have layer-3/4 rules and C(net.bridge.bridge-nf-call-iptables) or C(-ip6tables) is not 1 (those rules then see no bridged traffic).
"""

EXAMPLES = r"""
- name: Anti-spoofing for one VM interface
  vmguard.nwfilter.nwfilter_binding:
    portdev: vnet0
    mac: 52:54:00:aa:00:01
    filter: clean-traffic
    parameters:
      IP: [192.0.2.10, 192.0.2.11]

- name: Let the host learn the address (DHCP snooping, trusted server only)
  vmguard.nwfilter.nwfilter_binding:
    portdev: vnet1
    mac: 52:54:00:aa:00:02
    filter: clean-traffic
    parameters: {CTRL_IP_LEARNING: dhcp, DHCPSERVER: 192.0.2.1}

- name: Exactly these bindings on the host, in one transaction
  vmguard.nwfilter.nwfilter_binding:
    exclusive: true
    bindings:
      - {portdev: vnet0, mac: "52:54:00:aa:00:01", filter: clean-traffic, parameters: {IP: 192.0.2.10}}
      - {portdev: vnet1, mac: "52:54:00:aa:00:02", filter: clean-traffic, parameters: {IP: 192.0.2.11}}

- name: A binding exported from libvirt (virsh nwfilter-binding-dumpxml vnet0)
  vmguard.nwfilter.nwfilter_binding:
    xml: "{{ lookup('file', 'vnet0-binding.xml') }}"
"""

RETURN = r"""
repaired:
  description:
    - What of the store's rules the kernel lacked or held differently (for example after C(nft flush ruleset)) and
      this run put back (in check mode, would put back), one line each; the run then reports C(changed). Every run of
      the module checks this first.
  returned: success
  type: list
  elements: str
  sample: ["table bridge vmguard is missing"]
learning:
  description:
    - The portdevs of this task's bindings that wait for their IP address (the learner service fills it in).
    - Always a list, in the single form too (C([vnet1]) or C([])), so that one test serves both forms.
  returned: success
  type: list
  elements: str
  sample: [vnet1]
rebuilt:
  description: The portdevs whose rules were, or in check mode would be, (re)built.
  returned: success
  type: list
  elements: str
  sample: [vnet0, vnet1]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmguard.nwfilter.plugins.module_utils.common import ROOT_OPTION, diff_of, engine_call, host_for, warn_if_layer3_unseen, warn_unchecked
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.dict_form import binding_from_dict
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.model import check_ifname
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.overlaps import binding_addresses, shared_addresses
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.xml_form import binding_from_xml

FIELDS = ("portdev", "mac", "filter", "parameters", "owner", "linkdev")


def _binding(module: AnsibleModule, data: dict):
    if "xml" in data:
        others = sorted(key for key in data if key != "xml")
        if others:
            module.fail_json(msg=f"a binding given as xml takes no other keys, found {', '.join(others)}")
        return engine_call(module, binding_from_xml, data["xml"])
    data = {key: value for key, value in data.items() if value not in (None, {}) or key == "filter"}
    if isinstance(data.get("owner"), dict):
        data["owner"] = {k: v for k, v in data["owner"].items() if v is not None}
    return engine_call(module, binding_from_dict, data)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            xml=dict(type="str"),
            portdev=dict(type="str"),
            mac=dict(type="str"),
            filter=dict(type="str"),
            parameters=dict(type="dict", default={}),
            owner=dict(type="dict", options=dict(name=dict(type="str"), uuid=dict(type="str"))),
            linkdev=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            bindings=dict(type="list", elements="dict"),
            exclusive=dict(type="bool", default=False),
            root=ROOT_OPTION,
        ),
        mutually_exclusive=[("bindings", name) for name in ("xml", "portdev", "mac", "filter", "owner", "linkdev")]
        + [("xml", name) for name in ("portdev", "mac", "filter", "parameters", "owner", "linkdev")],
        required_one_of=[("bindings", "portdev", "xml")],
        required_if=[("state", "present", ("mac", "filter", "bindings", "xml"), True)],
        supports_check_mode=True,
    )
    params = module.params
    host = host_for(module)
    check = module.check_mode
    wanted = []
    if params["bindings"] is not None:
        wanted = [_binding(module, item) for item in params["bindings"]]
        result = engine_call(module, host.set_bindings, wanted, exclusive=params["exclusive"], check=check)
        learning = result.learning
    elif params["state"] == "absent":
        portdev = _binding(module, {"xml": params["xml"]}).portdev if params["xml"] is not None else params["portdev"]
        engine_call(module, check_ifname, portdev, "portdev")
        result = engine_call(module, host.unbind, portdev, check=check)
        learning = []
    else:
        given = {"xml": params["xml"]} if params["xml"] is not None else {key: params[key] for key in FIELDS}
        binding = _binding(module, given)
        wanted = [binding]
        result = engine_call(module, host.bind, binding, check=check)
        waiting = binding.portdev in result.learning or (
            not result.changed and binding.portdev in engine_call(module, host.waiting, [binding.portdev]))
        learning = [binding.portdev] if waiting else []
    output = dict(changed=result.changed, rebuilt=result.rebuilt, learning=learning, repaired=result.repaired)
    if module._diff:  # pylint: disable=protected-access
        output["diff"] = diff_of(result)
    # the bindings bound to these addresses (the store's index: no binding is read), for the shared-address
    # warning; with exclusive, no other binding is left
    exclusive = params["exclusive"] and params["bindings"] is not None
    addresses = sorted({address for b in wanted for address in binding_addresses(b)})
    after = engine_call(module, host.holding, addresses) if addresses and not exclusive else {}
    after.update((b.portdev, binding_addresses(b)) for b in wanted)
    for line in shared_addresses(after, {b.portdev for b in wanted}):
        module.warn(f"{line}: anti-spoofing lets each of them use it (a failover pair may mean to; "
                    "otherwise check the inventory)")
    warn_if_layer3_unseen(module, host)
    warn_unchecked(module, result)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
