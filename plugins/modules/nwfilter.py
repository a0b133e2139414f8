#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nwfilter
short_description: Define or undefine a libvirt-style network filter
version_added: 0.1.0
description:
  - Defines a network filter on the host from libvirt nwfilter XML or from the equivalent YAML form,
    or removes it.
  - Redefining a filter rebuilds, in the same nftables transaction, every binding whose filter tree uses it;
    if any of them cannot be built, nothing changes.
  - A filter with the name of a built-in filter overrides it, with a warning naming the bindings that lose rules
    (RV(lost_rules)); undefining the override restores the built-in.
author: vmguard developers (@vmguard)
options:
  name:
    description:
      - The filter's name. With O(xml) it may be omitted; if given it must match the XML's name.
    type: str
  state:
    description: Whether the filter should be defined.
    type: str
    choices: [present, absent]
    default: present
  xml:
    description: The filter as libvirt nwfilter XML (C(<filter>)).
    type: str
  chain:
    description: The filter's chain (YAML form).
    type: str
  priority:
    description: The filter's chain priority (YAML form), a whole number from -1000 to 1000 (or its decimal text).
    type: raw
  uuid:
    description: The filter's UUID (YAML form).
    type: str
  rules:
    description:
      - The filter's rules and filter references in the YAML form (see docs/yaml-form.md).
      - Each item is either C({filterref, parameters}) or C({action, direction, priority, statematch, <element>}).
    type: list
    elements: dict
extends_documentation_fragment:
  - vmguard.nwfilter.host
  - vmguard.nwfilter.host.compiles_bindings
attributes:
  diff_mode:
    support: full
    details: The canonical XML before and after.
notes:
  - Every run first makes the kernel hold what the store says (our tables, base chains, per-port chains and map
    elements), repairing what anyone removed or altered in one transaction and reporting it in RV(repaired);
    nothing outside our own tables is touched.
  - While a binding learns its address, a redefinition that would add a variable without a value to its filter tree is refused.
  - Warns when bindings have layer-3/4 rules and C(net.bridge.bridge-nf-call-iptables) or C(-ip6tables) is not 1 (those rules then see no bridged traffic).
"""

EXAMPLES = r"""
- name: Define a filter from libvirt XML
  vmguard.nwfilter.nwfilter:
    xml: "{{ lookup('file', 'web.xml') }}"

- name: Define the same kind of filter in YAML
  vmguard.nwfilter.nwfilter:
    name: web-vm
    rules:
      - filterref: clean-traffic
      - action: accept
        direction: in
        tcp: {dstportstart: 22}
      - action: drop
        direction: inout
        all: {}

- name: Remove it
  vmguard.nwfilter.nwfilter:
    name: web-vm
    state: absent
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
filter:
  description: The filter's canonical XML after the change (absent after removal).
  returned: success
  type: str
  sample: '<filter name="web-vm" chain="root"><filterref filter="clean-traffic"/></filter>'
rebuilt:
  description: The bindings (portdev) whose rules were, or in check mode would be, rebuilt.
  returned: success
  type: list
  elements: str
  sample: [vnet0, vnet1]
learning:
  description: Rebuilt bindings that now wait for their IP address to be learned.
  returned: success
  type: list
  elements: str
  sample: [vnet1]
lost_rules:
  description:
    - When the filter newly overrides a built-in filter, per binding, the resolved rules (one line each, as
      nwfilter_info's C(resolved_rules)) that were in force and no longer are; empty otherwise.
    - Diff mode shows the same lines as a second diff.
  returned: success
  type: dict
  sample: {vnet0: ["out ipv4-ip: 500 return ip srcipaddr=192.0.2.10", "out ipv4-ip: 1000 drop all-frames"]}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmguard.nwfilter.plugins.module_utils.common import ROOT_OPTION, diff_of, engine_call, host_for, warn_if_layer3_unseen, warn_unchecked
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.builtin_filters import BUILTIN_FILTERS
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.dict_form import filter_from_dict
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.xml_form import filter_from_xml


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            xml=dict(type="str"),
            chain=dict(type="str"),
            priority=dict(type="raw"),  # the engine checks it: Ansible's int() would take '1_000'
            uuid=dict(type="str"),
            rules=dict(type="list", elements="dict"),
            root=ROOT_OPTION,
        ),
        mutually_exclusive=[("xml", "rules"), ("xml", "chain"), ("xml", "priority"), ("xml", "uuid")],
        required_if=[("state", "present", ("xml", "rules"), True), ("state", "absent", ("name",))],
        supports_check_mode=True,
    )
    params = module.params
    host = host_for(module)
    name, overriding = params["name"], False
    if params["state"] == "absent":
        result = engine_call(module, host.undefine_filter, params["name"], check=module.check_mode)
    else:
        if params["xml"] is not None:
            flt = engine_call(module, filter_from_xml, params["xml"])
            if params["name"] and params["name"] != flt.name:
                module.fail_json(msg=f"name {params['name']!r} does not match the XML's filter name {flt.name!r}")
        else:
            data = {key: params[key] for key in ("name", "chain", "priority", "uuid", "rules") if params[key] is not None}
            flt = engine_call(module, filter_from_dict, data)
        name = flt.name
        overriding = name in BUILTIN_FILTERS and name not in engine_call(module, host.user_filters)
        result = engine_call(module, host.define_filter, flt, check=module.check_mode)
    output = dict(changed=result.changed, rebuilt=result.rebuilt, learning=result.learning, lost_rules=result.lost,
                  repaired=result.repaired)
    if result.after is not None:
        output["filter"] = result.after
    if module._diff:  # pylint: disable=protected-access
        lost = [dict(before_header="rules in force", after_header=f"with the built-in {name!r} overridden", after="",
                     before="".join(f"{port}: {line}\n" for port, lines in sorted(result.lost.items()) for line in lines))]
        output["diff"] = diff_of(result, *(lost if result.lost else []))  # the rules each port loses
    if overriding and result.changed:
        losing = sorted(result.lost)
        shown = ", ".join(losing[:3]) + (f" and {len(losing) - 3} more" if len(losing) > 3 else "")
        module.warn(f"filter {name!r} overrides the built-in filter of that name for every binding whose tree uses it"
                    + (f"; {shown} lose rules (see lost_rules)" if losing else ""))
    warn_if_layer3_unseen(module, host)
    warn_unchecked(module, result)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
