# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host settings the tests change, each changed for one block and always put back.

Shared by the unit tests and the agreement suite. Everything here touches the real
host (root needed): vm.unprivileged_userfaultfd, the mode of /dev/userfaultfd, reserved
huge pages, and the unprivileged test account.
"""

import contextlib
import os
import pwd
import subprocess

__all__ = [
    "DEVICE",
    "child_pids",
    "SECCOMP_EXEC",
    "SYSCTL",
    "TEST_USER",
    "device_mode_set",
    "ensure_test_user",
    "fake_qemu",
    "hugepages_set",
    "read_sysctl",
    "steady",
    "sysctl_set",
]

TOOLS = os.path.dirname(os.path.abspath(__file__))
SECCOMP_EXEC = os.path.join(TOOLS, "seccomp_exec.py")
SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd"
DEVICE = "/dev/userfaultfd"
HUGEPAGES = "/sys/kernel/mm/hugepages/hugepages-%dkB/nr_hugepages"
TEST_USER = os.environ.get("HVM_TEST_USER", "hvm-probe-test")


def _read_int(path):
    with open(path) as handle:
        return int(handle.read().strip())


def _write_int(path, value):
    with open(path, "w") as handle:
        handle.write("%d\n" % value)


def read_sysctl():
    return _read_int(SYSCTL)


def device_mode():
    return os.stat(DEVICE).st_mode & 0o7777


@contextlib.contextmanager
def sysctl_set(value):
    """vm.unprivileged_userfaultfd = value inside the block."""
    old = read_sysctl()
    try:
        _write_int(SYSCTL, value)
        yield
    finally:
        _write_int(SYSCTL, old)


@contextlib.contextmanager
def device_mode_set(mode, gid=None):
    """chmod (and optionally chgrp) /dev/userfaultfd inside the block."""
    info = os.stat(DEVICE)
    try:
        if gid is not None:
            os.chown(DEVICE, -1, gid)
        os.chmod(DEVICE, mode)
        yield
    finally:
        os.chown(DEVICE, -1, info.st_gid)
        os.chmod(DEVICE, info.st_mode & 0o7777)


@contextlib.contextmanager
def hugepages_set(count, size_kb=2048):
    """Reserve count huge pages of size_kb inside the block; yields how many the kernel gave."""
    path = HUGEPAGES % size_kb
    old = _read_int(path)
    try:
        _write_int(path, count)
        yield _read_int(path)
    finally:
        _write_int(path, old)


def steady(func, sysctl=None, mode=None, attempts=4):
    """func() under the given sysctl and device mode, taken again if another run moved them meanwhile."""
    for _attempt in range(attempts):
        with contextlib.ExitStack() as stack:
            if sysctl is not None:
                stack.enter_context(sysctl_set(sysctl))
            if mode is not None:
                stack.enter_context(device_mode_set(mode))
            result = func()
            unmoved = (sysctl is None or read_sysctl() == sysctl) and (mode is None or device_mode() == mode)
        if unmoved:
            return result
    raise RuntimeError("vm.unprivileged_userfaultfd or %s mode kept changing under the test" % DEVICE)


def ensure_test_user():
    """The unprivileged test account's passwd entry, created when missing (dev.sh removes it)."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", TEST_USER], check=False)
        return pwd.getpwnam(TEST_USER)


def fake_qemu(directory, version):
    """A stand-in for a QEMU that cannot be installed here: it only answers --version.

    Debian 12 ships QEMU 7.2; the device path is taken by QEMU 8.0 and newer, so tests of
    that path judge this stand-in's version. It is never started as a VM.
    """
    path = os.path.join(str(directory), "qemu-system-x86_64")
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\necho 'QEMU emulator version %s (stand-in for tests)'\n" % version)
    os.chmod(path, 0o755)
    return path


def child_pids():
    """Pids (as strings) whose parent is this process: a reaped child is not one."""
    me = str(os.getpid())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % pid) as stat:
                if stat.read().rsplit(")", 1)[1].split()[1] == me:
                    found.append(pid)
        except (OSError, IndexError):
            continue
    return found
