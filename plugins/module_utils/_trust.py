# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a path is root's alone: the rule for everything the modules run, read or create as root.

QEMU's account is assumed hostile (a guest that escapes QEMU lands there). A file root runs or
reads, or a directory root writes into, must be one that no other account can replace or
redirect: every component owned by root (or by whoever runs the module), none writable by group
or others. That is OpenSSH's rule for the programs it runs as root, with one addition: a sticky
directory such as /tmp is allowed, because there only an entry's owner may rename or remove it,
and the next component's owner is checked in turn.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

__all__ = [
    "UntrustedPath",
    "check_chain",
    "components",
    "untrusted_reason",
]


class UntrustedPath(Exception):
    """A component of the path could be changed by another account."""

    def __init__(self, component, reason):
        self.component = component
        self.reason = reason
        super(UntrustedPath, self).__init__("%s %s" % (component, reason))


def untrusted_reason(info):
    """Why the file or directory with lstat() result info could be changed by another account; None when it cannot."""
    if info.st_uid not in (0, os.geteuid()):
        return "is owned by uid %d" % info.st_uid
    sticky_dir = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_dir:
        return "is writable by %s" % ("every account" if info.st_mode & stat.S_IWOTH else "group %d" % info.st_gid)
    return None


def components(path):
    """"/", "/a", "/a/b", ... for an absolute path."""
    found = [os.sep]
    for part in [p for p in path.split(os.sep) if p]:
        found.append(os.path.join(found[-1], part))
    return found


def check_chain(path, missing_ok=False):
    """UntrustedPath unless no other account can change path or a directory above it.

    Symlinks are not followed: a symlink anywhere is refused, so give a real path
    (os.path.realpath). With missing_ok, the components that do not exist yet are not checked
    (their trusted parent decides who may create them).
    """
    for component in components(path):
        try:
            info = os.lstat(component)
        except OSError:
            if missing_ok:
                return
            raise
        if stat.S_ISLNK(info.st_mode):
            raise UntrustedPath(component, "is a symlink")
        reason = untrusted_reason(info)
        if reason:
            raise UntrustedPath(component, reason)
