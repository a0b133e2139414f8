# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules share: the store option, running an engine call so that
a user error ends in fail_json with the engine's one-line message, the diff
of a change and its repair, and the warning when layer-3/4 rules cannot see
bridged traffic."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Union

from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.errors import NwfilterError
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.host import ChangeResult, Host

ROOT_OPTION = dict(type="path", default="/etc/vmguard")


def engine_call(module: Any, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except NwfilterError as exc:
        module.fail_json(msg=str(exc))
        raise  # fail_json exits; this only satisfies linters


def diff_of(result: ChangeResult) -> Union[Dict[str, str], List[Dict[str, str]]]:
    """The change's diff and, when the kernel lacked rules of ours, a second
    one saying what was (or would be) repaired."""
    diff = dict(before=result.before or "", after=result.after or "")
    if not result.repaired:
        return diff
    return [diff, dict(before_header="kernel (vmguard tables)", after_header="kernel (repaired)",
                       before="".join(f"{line}\n" for line in result.repaired), after="as stored\n")]


def warn_if_layer3_unseen(module: Any, host: Host) -> None:
    warning = host.layer3_warning()
    if warning:
        module.warn(warning)
