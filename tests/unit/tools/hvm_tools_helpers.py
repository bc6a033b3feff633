# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the tests of tests/tools/ (seccomp_exec.py, qemu_oracle.py).

Host knobs (vm.unprivileged_userfaultfd, /dev/userfaultfd's mode) are changed
through tests/tools/hostctl.py, one block at a time and always put back; the
test account comes from tests/unit/conftest.py.  tests/unit/conftest.py also
puts tests/tools/ on sys.path.
"""

import os
import time

import pytest

QEMU = "/usr/bin/qemu-system-x86_64"


def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: switches account, changes vm.unprivileged_userfaultfd")


def require_qemu():
    if not os.access(QEMU, os.X_OK):
        pytest.skip("no QEMU at %s (Debian package qemu-system-x86)" % QEMU)


def wait_for(predicate, seconds=3.0):
    """True once predicate() holds (others' brief toggles end), False after seconds."""
    end = time.monotonic() + seconds
    while True:
        if predicate():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def child_processes():
    """(pid, cmdline) of this process's children: a killed and reaped QEMU is not one."""
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(pid), cmdline))
    return found
