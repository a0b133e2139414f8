# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules share: the store option, running an engine call so that
a user error ends in fail_json with the engine's one-line message, the diff
of a change and its repair, the warning when layer-3/4 rules cannot see
bridged traffic, and the check-mode warning for bindings whose filters an
earlier task would define."""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Union

from ansible_collections.vmguard.nwfilter.plugins.module_utils import payload_import

payload_import.install()  # before the engine's first import

# pylint: disable=wrong-import-position
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.errors import NwfilterError
from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.host import ChangeResult, Host

if TYPE_CHECKING:  # only the network modules need the networks' code at run time
    from ansible_collections.vmguard.nwfilter.plugins.module_utils.engine.networks import NetworkChange

ROOT_OPTION = dict(type="path", default="/etc/vmguard")
MIN_PYTHON = (3, 9)  # the engine's oldest need: xml.etree.ElementTree.indent


def host_for(module: Any) -> Host:
    """The Host of the module's store, once the managed host's Python is known to be new enough."""
    # A module run is a process that ends with its task: the cyclic garbage collector would only walk
    # what a change built once more before the exit (about 25 ms after a bulk bind of 1,000 ports).
    gc.disable()
    if sys.version_info < MIN_PYTHON:
        module.fail_json(msg=f"vmguard.nwfilter needs Python {'.'.join(map(str, MIN_PYTHON))} or later on the managed "
                             f"host, found {sys.version.split()[0]} (set ansible_python_interpreter)")
    return engine_call(module, Host, module.params["root"])


def engine_call(module: Any, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except NwfilterError as exc:
        module.fail_json(msg=str(exc))
        raise  # fail_json exits; this only satisfies linters


def diff_of(result: Union[ChangeResult, NetworkChange], *more: Dict[str, str]) -> Union[Dict[str, str], List[Dict[str, str]]]:
    """The change's diff, then ``more`` diffs, and, when the kernel lacked
    rules of ours, one saying what was (or would be) repaired."""
    diffs = [dict(before=result.before or "", after=result.after or ""), *more]
    if result.repaired:
        diffs.append(dict(before_header="kernel (vmguard tables)", after_header="kernel (repaired)",
                          before="".join(f"{line}\n" for line in result.repaired), after="as stored\n"))
    return diffs[0] if len(diffs) == 1 else diffs


def warn_if_layer3_unseen(module: Any, host: Host) -> None:
    warning = host.layer3_warning()
    if warning:
        module.warn(warning)


def warn_unchecked(module: Any, result: ChangeResult) -> None:
    """Check mode writes nothing, so a filter an earlier task of the run would
    define is not there: say which bindings could not be compiled, and why."""
    for portdev, names in sorted(result.unchecked.items()):
        module.warn(f"check mode: binding {portdev!r} uses {', '.join(repr(n) for n in names)}, not defined on the "
                    "host yet (an earlier task of this run may define it): its rules were not compiled, "
                    "so only the real run can check them")
