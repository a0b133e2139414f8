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
  - Returns every filter (built-in or defined) as canonical XML, and every binding with its resolved rules
    and the exact nftables rules in force for it.
author: vmguard developers (@vmguard)
options:
  name:
    description: Report only this filter.
    type: str
  portdev:
    description: Report only this binding.
    type: str
  root:
    description: Directory of the on-host store.
    type: path
    default: /etc/vmguard
notes:
  - Read-only; supports check mode.
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
"""

RETURN = r"""
filters:
  description: Filter name to C(xml) (canonical XML) and C(builtin) (true for a built-in not overridden).
  returned: always
  type: dict
bindings:
  description:
    - portdev to the binding (C(mac), C(filter), C(parameters), C(owner), C(linkdev)), C(learning), C(learned)
      addresses, C(resolved_rules) (one line per rule), C(nft) (the nftables rules in force), C(in_force) (whether
      the kernel holds the binding's rules as stored) and, when not, C(not_in_force_because) (why, one line).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmguard.nwfilter.plugins.module_utils.common import ROOT_OPTION, engine_call, warn_if_layer3_unseen
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.dict_form import binding_to_dict
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.host import Host
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.xml_form import filter_to_xml


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(name=dict(type="str"), portdev=dict(type="str"), root=ROOT_OPTION),
        supports_check_mode=True,
    )
    params = module.params
    host = engine_call(module, Host, params["root"])
    user = engine_call(module, host.user_filters)
    filters = {name: dict(xml=filter_to_xml(flt), builtin=name not in user)
               for name, flt in engine_call(module, host.filters).items()
               if params["name"] in (None, name)}
    bindings = {}
    in_force = engine_call(module, host.in_force)
    for portdev, binding in engine_call(module, host.bindings).items():
        if params["portdev"] in (None, portdev):
            bindings[portdev] = dict(binding_to_dict(binding), **engine_call(module, host.status, portdev),
                                     in_force=in_force.get(portdev) is None)
            if in_force.get(portdev):
                bindings[portdev]["not_in_force_because"] = in_force[portdev]
                module.warn(f"the rules of {portdev} are not in force: {in_force[portdev]} (the next change through "
                            "a vmguard module, or the learner service, puts them back)")
    warn_if_layer3_unseen(module, host)
    module.exit_json(changed=False, filters=filters, bindings=bindings)


if __name__ == "__main__":
    main()
