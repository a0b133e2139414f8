#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: network_info
short_description: Report the virtual networks of a host and the firewall rules enforced for them
version_added: 0.2.0
description:
  - Returns every network defined with M(vmguard.nwfilter.network) - its definition in the YAML form and as
    canonical libvirt XML, its nftables rules, and whether the kernel holds them.
author: vmguard developers (@vmguard)
options:
  name:
    description: Report only this network.
    type: str
extends_documentation_fragment:
  - vmguard.nwfilter.host
  - vmguard.nwfilter.host.info_module
"""

EXAMPLES = r"""
- name: The host's virtual networks
  vmguard.nwfilter.network_info:
  register: info

- ansible.builtin.debug:
    var: info.networks.default.nft
"""

RETURN = r"""
networks:
  description:
    - Network name to its definition (C(name), C(bridge), C(forward), C(ipv4), C(ipv6), C(nat)), C(xml) (canonical
      libvirt XML), C(nft) (its rules in the C(inet vmguard-net) table, one per line) and C(enforced) (true when
      the kernel holds all of its chains and the table's base chains with the rules we put there, read back
      after our last change, and its map elements).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmguard.nwfilter.plugins.module_utils.common import ROOT_OPTION, engine_call, host_for
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.network_forms import network_to_dict


def main() -> None:
    module = AnsibleModule(argument_spec=dict(name=dict(type="str"), root=ROOT_OPTION), supports_check_mode=True)
    networks = host_for(module).networks
    defined = engine_call(module, networks.all)
    status = engine_call(module, networks.status)
    name = module.params["name"]
    if name is not None and name not in defined:
        module.fail_json(msg=f"no network {name!r}")
    shown = {n: {**network_to_dict(network), **status[n]} for n, network in defined.items() if name in (None, n)}
    module.exit_json(changed=False, networks=shown)


if __name__ == "__main__":
    main()
