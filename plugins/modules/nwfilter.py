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
  - A filter with the name of a built-in filter overrides it; undefining the override restores the built-in.
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
    description: The filter's chain priority (YAML form).
    type: int
  uuid:
    description: The filter's UUID (YAML form).
    type: str
  rules:
    description:
      - The filter's rules and filter references in the YAML form (see docs/yaml-form.md).
      - Each item is either C({filterref, parameters}) or C({action, direction, priority, statematch, <element>}).
    type: list
    elements: dict
  root:
    description: Directory of the on-host store.
    type: path
    default: /etc/vmguard
notes:
  - Every run first makes the kernel hold what the store says (our tables, base chains, per-port chains and map
    elements), repairing what anyone removed or altered in one transaction and reporting it in RV(repaired);
    nothing outside our own tables is touched.
  - Supports check mode and diff mode (canonical XML before and after).
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
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmguard.nwfilter.plugins.module_utils.common import ROOT_OPTION, diff_of, engine_call, warn_if_layer3_unseen
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.dict_form import filter_from_dict
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.host import Host
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.xml_form import filter_from_xml


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            xml=dict(type="str"),
            chain=dict(type="str"),
            priority=dict(type="int"),
            uuid=dict(type="str"),
            rules=dict(type="list", elements="dict"),
            root=ROOT_OPTION,
        ),
        mutually_exclusive=[("xml", "rules"), ("xml", "chain"), ("xml", "priority"), ("xml", "uuid")],
        required_if=[("state", "present", ("xml", "rules"), True), ("state", "absent", ("name",))],
        supports_check_mode=True,
    )
    params = module.params
    host = engine_call(module, Host, params["root"])
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
        result = engine_call(module, host.define_filter, flt, check=module.check_mode)
    output = dict(changed=result.changed, rebuilt=result.rebuilt, learning=result.learning, repaired=result.repaired)
    if result.after is not None:
        output["filter"] = result.after
    if module._diff:  # pylint: disable=protected-access
        output["diff"] = diff_of(result)
    warn_if_layer3_unseen(module, host)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
