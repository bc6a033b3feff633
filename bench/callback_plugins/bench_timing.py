# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark callback: per-task wall time and which modules ran, one JSON line per playbook run.

Only for bench/: enabled by bench/bench.py with ANSIBLE_CALLBACKS_ENABLED=bench_timing, writes
to the file named by BENCH_TIMING_FILE (does nothing when unset).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_timing
type: aggregate
short_description: per-task wall time for bench/
description: Appends one JSON line per playbook run to the file named by BENCH_TIMING_FILE.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self._path = os.environ.get("BENCH_TIMING_FILE")
        self._start = time.monotonic()
        self._tasks = []
        self._actions = {}

    def _close_task(self, now):
        if self._tasks and self._tasks[-1]["seconds"] is None:
            self._tasks[-1]["seconds"] = now - self._tasks[-1]["start"]

    def v2_playbook_on_task_start(self, task, is_conditional):
        now = time.monotonic()
        self._close_task(now)
        self._tasks.append({"name": task.get_name(), "action": task.action, "start": now, "seconds": None})

    def _count(self, result, status):
        action = result._task.action
        counts = self._actions.setdefault(action, {})
        counts[status] = counts.get(status, 0) + 1

    def v2_runner_on_ok(self, result):
        self._count(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._count(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._count(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        now = time.monotonic()
        self._close_task(now)
        if not self._path:
            return
        record = {
            "wall": now - self._start,
            "tasks": [{"name": t["name"], "action": t["action"], "seconds": t["seconds"]} for t in self._tasks],
            "actions": self._actions,
        }
        with open(self._path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
