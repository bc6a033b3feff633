# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only facts about the host and the current process, from /proc and /sys."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import pwd
import stat

from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import group_name, is_digits

__all__ = [
    "CAP_SYS_PTRACE",
    "DEVICE_PATH",
    "SYSCTL_PATH",
    "device_info",
    "errno_name",
    "hugepage_sizes",
    "kernel_release",
    "page_size",
    "process_status",
    "unprivileged_userfaultfd",
    "userfaultfd_rdev",
]

DEVICE_PATH = "/dev/userfaultfd"
SYSCTL_PATH = "/proc/sys/vm/unprivileged_userfaultfd"
HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"
MISC_DEV = "/sys/class/misc/userfaultfd/dev"
CAP_SYS_PTRACE = 19


def errno_name(number):
    if not number:
        return None
    return errno.errorcode.get(number, str(number))


def kernel_release():
    return os.uname().release


def page_size():
    return os.sysconf("SC_PAGE_SIZE")


def _read_int(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (IOError, OSError, ValueError):
        return None


def unprivileged_userfaultfd(path=SYSCTL_PATH):
    """The sysctl's value; None when the kernel has no such sysctl (or it cannot be read)."""
    return _read_int(path)


def userfaultfd_rdev(path=MISC_DEV):
    """The device number the kernel gave /dev/userfaultfd ("10:257" in sysfs); None when unknown."""
    try:
        with open(path) as handle:
            major, _sep, minor = handle.read().strip().partition(":")
        return os.makedev(int(major), int(minor))
    except (IOError, OSError, ValueError):
        return None


def hugepage_sizes(base=HUGEPAGES_DIR):
    """{size_in_bytes: {total, free}} for every huge page size the kernel offers."""
    sizes = {}
    try:
        entries = os.listdir(base)
    except OSError:
        return sizes
    for entry in entries:
        kib = entry[len("hugepages-"):-len("kB")]
        if entry.startswith("hugepages-") and entry.endswith("kB") and is_digits(kib):
            folder = os.path.join(base, entry)
            sizes[int(kib) * 1024] = {
                "total": _read_int(os.path.join(folder, "nr_hugepages")) or 0,
                "free": _read_int(os.path.join(folder, "free_hugepages")) or 0,
            }
    return dict(sorted(sizes.items()))


def process_status(path="/proc/self/status"):
    """Seccomp mode and whether CAP_SYS_PTRACE is effective, for the calling process."""
    fields = {}
    try:
        with open(path) as handle:
            for line in handle:
                key, _sep, value = line.partition(":")
                fields[key] = value.strip()
    except (IOError, OSError):
        pass
    seccomp = int(fields["Seccomp"]) if is_digits(fields.get("Seccomp", "")) else None
    cap_eff = fields.get("CapEff")
    namespace = user_namespace()
    cap_sys_ptrace = bool(int(cap_eff, 16) & (1 << CAP_SYS_PTRACE)) if cap_eff else None
    if cap_sys_ptrace and namespace == "nested":
        # The sysctl check asks for CAP_SYS_PTRACE in the initial user namespace; a
        # rootless container's "root" has it only in its own.
        cap_sys_ptrace = False
    return {"seccomp": seccomp, "cap_sys_ptrace": cap_sys_ptrace, "user_namespace": namespace}


def user_namespace(path="/proc/self/uid_map"):
    """"initial" when the process maps every uid onto itself (the host's namespace), "nested" otherwise."""
    try:
        with open(path) as handle:
            lines = [line.split() for line in handle]
    except (IOError, OSError):
        return None
    return "initial" if lines == [["0", "0", "4294967295"]] else "nested"


def _owner_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def device_info(path=DEVICE_PATH):
    """Presence, mode and ownership of /dev/userfaultfd (6.1+)."""
    try:
        info = os.stat(path)
    except OSError:
        return {"path": path, "present": False, "mode": None, "owner": None, "group": None, "char_device": False}
    return {
        "path": path,
        "present": True,
        "mode": "%04o" % stat.S_IMODE(info.st_mode),
        "owner": _owner_name(info.st_uid),
        "group": group_name(info.st_gid),
        "char_device": stat.S_ISCHR(info.st_mode),
    }
