# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which account QEMU runs as on this host, and the credentials to become it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import os
import pwd
import re
from collections import namedtuple

__all__ = [
    "Account",
    "AccountError",
    "QEMU_ACCOUNT_NAMES",
    "account_switch_needed",
    "group_name",
    "resolve_account",
    "to_dict",
]

# Fedora/RHEL packages create "qemu", Debian/Ubuntu "libvirt-qemu".
QEMU_ACCOUNT_NAMES = ("qemu", "libvirt-qemu")

Account = namedtuple("Account", "name uid gid groups source reason")

# ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
_NUMERIC_UID = re.compile(r"^\+?[0-9]+$")


class AccountError(Exception):
    """The account asked for does not exist on this host."""


def _from_passwd(entry, source, reason):
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, source, reason)


def _lookup(spec):
    """A passwd entry for a name, a numeric uid or libvirt's "+107" form; None when absent."""
    text = str(spec).strip()
    try:
        if _NUMERIC_UID.match(text):
            return pwd.getpwuid(int(text.lstrip("+")))
        return pwd.getpwnam(text)
    except (KeyError, ValueError, OverflowError):
        # ValueError: a NUL in the name; OverflowError: a uid beyond what the kernel can hold.
        return None


def _configured_account(configured):
    """The account qemu.conf's user names; AccountError when it names none on this host.

    Never root in its place: a setting that was not understood is a failure, not a default.
    """
    value, source = configured["value"], configured["source"]
    if source == "unreadable":
        raise AccountError("cannot tell QEMU's account: qemu.conf's user cannot be judged; fix the file or set the account explicitly")
    entry = _lookup(value)
    if entry is None:
        raise AccountError('cannot tell QEMU\'s account: user = "%s" (%s) is not an account on this host; fix it or set the account explicitly' % (
            value,
            source,
        ))
    return _from_passwd(entry, "auto", 'user = "%s" in %s' % (value, source))


def _auto_account(configured):
    if configured and configured.get("source") not in (None, "compiled default"):
        return _configured_account(configured)
    for name in QEMU_ACCOUNT_NAMES:
        entry = _lookup(name)
        if entry is not None:
            return _from_passwd(entry, "auto", "account %s exists (libvirt's default QEMU account)" % name)
    entry = pwd.getpwuid(os.geteuid())
    reason = "no QEMU account found (neither qemu.conf's user nor %s exists); probing as the module's own account" % " nor ".join(QEMU_ACCOUNT_NAMES)
    return _from_passwd(entry, "auto", reason)


def resolve_account(spec="auto", configured=None):
    """Resolve ``auto``, a name or a numeric uid to an Account; AccountError when unknown.

    configured is qemu.conf's user setting as _launcher reads it ({value, source}), for ``auto``.
    """
    if spec is None or str(spec).strip() in ("", "auto"):
        return _auto_account(configured)
    entry = _lookup(spec)
    if entry is None:
        raise AccountError("no such account %r on this host (give an account name, a numeric uid, or auto)" % str(spec))
    return _from_passwd(entry, "option", "probe_user option")


def account_switch_needed(account):
    """True when becoming ``account`` needs a credential change; only root can make one."""
    return account.uid != os.geteuid() or account.gid != os.getegid()


def to_dict(account):
    return {
        "name": account.name,
        "uid": account.uid,
        "gid": account.gid,
        "groups": list(account.groups),
        "source": account.source,
        "reason": account.reason,
    }


def group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
