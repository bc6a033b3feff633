# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a path is root's alone: the rule for everything the modules run, read or create as root.

QEMU's account is assumed hostile (a guest that escapes QEMU lands there). A file root runs or
reads, or a directory root writes into, must be one that no other account can replace or
redirect: every component owned by root (or by whoever runs the module), none writable by group
or others. That is OpenSSH's rule for the programs it runs as root, with one addition: a sticky
directory such as /tmp is allowed, because there only an entry's owner may rename or remove it,
and the next component's owner is checked in turn. Symbolic links are followed as the kernel
follows them, each from the directory it sits in, which has been checked already.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import stat

__all__ = [
    "MAX_SYMLINKS",
    "UntrustedPath",
    "check_chain",
    "components",
    "path_untrusted_reason",
    "trusted_owners",
    "trusted_walk",
    "untrusted_reason",
]

# The kernel's own bound on symbolic links in one path lookup (ELOOP).
MAX_SYMLINKS = 40
_GROUP_OR_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH


class UntrustedPath(Exception):
    """A component of the path could be changed by another account."""

    def __init__(self, component, reason):
        self.component = component
        self.reason = reason
        super(UntrustedPath, self).__init__(reason)


def _read_first_line(path):
    try:
        with open(path) as handle:
            return handle.readline().split()
    except (IOError, OSError):
        return []


def trusted_owners():
    """Root, the module's own account, and in a user namespace the overflow uid.

    Inside a user namespace (a rootless container) every file whose owner is not mapped there,
    the host's root included, shows as the overflow uid (65534): no account inside can change it.
    """
    owners = {0, os.geteuid()}
    if _read_first_line("/proc/self/uid_map") != ["0", "0", "4294967295"]:
        overflow = _read_first_line("/proc/sys/kernel/overflowuid")
        if overflow and overflow[0].isdigit():
            owners.add(int(overflow[0]))
    return owners


def untrusted_reason(info, name, owners=None):
    """Why the file or directory name, with lstat() result info, could be changed by another account; None when it cannot."""
    if info.st_uid not in (owners or trusted_owners()):
        return "%s is owned by uid %d, not root" % (name, info.st_uid)
    sticky_dir = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
    if info.st_mode & _GROUP_OR_OTHER_WRITE and not sticky_dir:
        return "%s is writable by accounts other than root (mode %04o)" % (name, stat.S_IMODE(info.st_mode))
    return None


def components(path):
    """"/", "/a", "/a/b", ... for an absolute path, as written (links not resolved)."""
    found = [os.sep]
    for part in [p for p in path.split(os.sep) if p]:
        found.append(os.path.join(found[-1], part))
    return found


def _step(current, part, pending, links, owners):
    """One component of the walk: (new current, links) after following part; (None, reason) when untrusted."""
    candidate = os.path.join(current, part)
    info = os.lstat(candidate)
    if stat.S_ISLNK(info.st_mode):
        if links >= MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), candidate)
        target = os.readlink(candidate)
        pending.extend(p for p in reversed(target.split("/")) if p)
        return ("/" if target.startswith("/") else current), links + 1, None
    reason = untrusted_reason(info, candidate, owners)
    if reason:
        return candidate, links, reason
    if pending and not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), candidate)
    return candidate, links, None


def trusted_walk(path):
    """(path with every link resolved, None) when root alone controls it, else (component, reason).

    Walks the path as the kernel does, checking "/", each directory entered and the last component.
    OSError (ENOENT, ENOTDIR, ELOOP) when a component cannot be looked up.
    """
    if not os.path.isabs(path):
        return path, "%s is not an absolute path" % path
    owners = trusted_owners()
    reason = untrusted_reason(os.lstat("/"), "/", owners)
    if reason:
        return "/", reason
    pending = [part for part in path.split("/") if part][::-1]
    current, links = "/", 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        current, links, reason = _step(current, part, pending, links, owners)
        if reason:
            return current, reason
    return current, None


def path_untrusted_reason(path):
    """None when no account but root can change what path leads to, else a one-line reason."""
    try:
        return trusted_walk(path)[1]
    except OSError as error:
        return "%s cannot be checked: %s" % (path, error.strerror)


def check_chain(path):
    """The path with its links resolved; UntrustedPath unless no other account can change any of it."""
    try:
        where, reason = trusted_walk(path)
    except OSError as error:
        raise UntrustedPath(path, "%s cannot be checked: %s" % (path, error.strerror)) from None
    if reason:
        raise UntrustedPath(where, reason)
    return where
