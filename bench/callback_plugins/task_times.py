# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback for bench.ansible_overhead: each task's time from its start to
its result (what profile_tasks shows), written as JSON lines to the file
named by VMGUARD_TASK_TIMES."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_times
type: aggregate
short_description: task start to result times, for vmguard's benchmark
description: Writes one JSON line per task result (name, seconds) to the file named by VMGUARD_TASK_TIMES.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._started = {}

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._started[task._uuid] = time.perf_counter()  # pylint: disable=protected-access

    def _record(self, result) -> None:
        task = result._task  # pylint: disable=protected-access
        elapsed = time.perf_counter() - self._started[task._uuid]  # pylint: disable=protected-access
        with open(os.environ["VMGUARD_TASK_TIMES"], "a", encoding="utf-8") as out:
            out.write(json.dumps({"name": task.get_name(), "seconds": elapsed,
                                  "failed": result.is_failed()}) + "\n")

    v2_runner_on_ok = _record
    v2_runner_on_failed = _record
