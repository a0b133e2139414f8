# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules share: the store option, running an engine call so that
a user error ends in fail_json with the engine's one-line message, and the
warning when layer-3/4 rules cannot see bridged traffic."""

from __future__ import annotations

from typing import Any, Callable

from ansible_collections.vmguard.nwfilter.plugins.module_utils import bytecode_cache  # noqa: F401  # pylint: disable=unused-import  # first: serves the engine
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.errors import NwfilterError
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.host import Host

ROOT_OPTION = dict(type="path", default="/etc/vmguard")


def engine_call(module: Any, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except NwfilterError as exc:
        module.fail_json(msg=str(exc))
        raise  # fail_json exits; this only satisfies linters


def warn_if_layer3_unseen(module: Any, host: Host) -> None:
    warning = host.layer3_warning()
    if warning:
        module.warn(warning)
