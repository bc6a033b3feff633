# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test callback: every task result as one JSON line, and an sshd stopped when the play starts.

Only for tests/ssh: enabled with ANSIBLE_CALLBACKS_ENABLED=ssh_record, writes to the file named by
HVM_SSH_RECORD (does nothing when unset). HVM_SSH_STOP_PID names an sshd the test started: it is
stopped once the play has begun, so that its host goes away in the middle of the run.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import signal
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: ssh_record
type: aggregate
short_description: task results as JSON lines for tests/ssh
description: Appends one JSON line per task result to the file named by HVM_SSH_RECORD.
"""

_STOP_WAIT = 10.0


def _stop(pid):
    """SIGTERM the sshd and wait until it is gone (the test reaps it)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + _STOP_WAIT
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    return
        except (OSError, IndexError):
            return
        time.sleep(0.02)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "ssh_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._path = os.environ.get("HVM_SSH_RECORD")

    def _record(self, status, result):
        if not self._path:
            return
        line = {"host": result._host.get_name(), "task": result._task.get_name(), "status": status, "result": result._result}
        with open(self._path, "a") as out:
            out.write(json.dumps(line, default=str) + "\n")

    def v2_playbook_on_play_start(self, play):
        pid = os.environ.get("HVM_SSH_STOP_PID")
        if pid:
            _stop(int(pid))

    def v2_runner_on_ok(self, result):
        self._record("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_unreachable(self, result):
        self._record("unreachable", result)

    def v2_runner_on_skipped(self, result):
        self._record("skipped", result)
