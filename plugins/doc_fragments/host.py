# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every module shares in its documentation: the store option, what a
managed host needs, and the attributes (each module states its own support
for check and diff mode, or takes one of the fragments below)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  root:
    description: Directory of the on-host store (shared by the modules and the learner service).
    type: path
    default: /etc/vmguard
requirements:
  - "On the managed host: Linux with nf_tables, Python 3.9 or later (the modules use only its standard library),
    and libnftables (C(libnftables.so.1): package C(libnftables1) on Debian and Ubuntu, C(nftables) on the RHEL family,
    Fedora and openSUSE) or else the C(nft) command."
  - Root on the managed host (C(become=true)); the rules are kernel firewall state.
  - Nothing on the controller or in an execution environment beyond ansible-core.
notes:
  - The engine's compiled code is kept between runs in C(/var/cache/vmguard/bytecode) (as root; other users
    C($XDG_CACHE_HOME/vmguard/bytecode)), check mode included, as Python keeps its own bytecode; it is used only
    if the directory is the user's own and no one else can write to it. The environment variable
    C(VMGUARD_BYTECODE_CACHE) (the task's C(environment)) moves it to another absolute path, and an empty value turns
    it off.
attributes:
  check_mode:
    description: Can run in check mode and predict the change without modifying the host.
  diff_mode:
    description: Returns details on what has changed (or would change in check mode).
  platform:
    description: Target OS families that can be operated against.
    support: full
    platforms: posix
  action_group:
    description: Part of an action group, for setting options such as O(root) through C(module_defaults).
    support: full
    membership: [vmguard.nwfilter.all]
"""

    # the _info modules: read-only
    INFO_MODULE = r"""
attributes:
  check_mode:
    support: full
    details: Read-only; runs the same in check mode.
  diff_mode:
    support: none
"""

    # the modules that compile bindings (nwfilter, nwfilter_binding): check mode and filters not defined yet
    COMPILES_BINDINGS = r"""
attributes:
  check_mode:
    support: full
    details:
      - Changes nothing in the store or the kernel. A binding whose tree names a filter not defined yet (an earlier
        task may define it) is reported with a warning, its rules not compiled.
"""
