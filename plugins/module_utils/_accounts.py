# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which account QEMU runs as on this host, and the credentials to become it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import os
import pwd
from collections import namedtuple

__all__ = [
    "Account",
    "AccountError",
    "NO_QEMU_ACCOUNT",
    "QEMU_ACCOUNT_NAMES",
    "account_switch_needed",
    "group_name",
    "is_digits",
    "resolve_account",
    "to_dict",
]

# Fedora/RHEL packages create "qemu", Debian/Ubuntu "libvirt-qemu".
QEMU_ACCOUNT_NAMES = ("qemu", "libvirt-qemu")
# The reason auto gives when it found no QEMU account and fell back to the module's own.
NO_QEMU_ACCOUNT = "no QEMU account found (neither qemu.conf's user nor %s exists); probing as the module's own account" % (
    " nor ".join(QEMU_ACCOUNT_NAMES)
)

Account = namedtuple("Account", "name uid gid groups source reason")

# libvirt's "+N": a number, taken as such without looking up an account.


class AccountError(Exception):
    """The account asked for does not exist on this host."""


def is_digits(text):
    """Whether text is a decimal number int() takes: ASCII digits only, as str.isdigit() also accepts "²"."""
    return text.isdigit() and text.isascii()


def _is_libvirt_number(text):
    """libvirt's "+107": an id that is a number even where an account has that name."""
    return text[:1] == "+" and is_digits(text[1:])


def _from_passwd(entry, source, reason):
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, source, reason)


def _lookup(spec):
    """A passwd entry for a name, a numeric uid or libvirt's "+107" form; None when absent."""
    text = str(spec).strip()
    try:
        if is_digits(text) or _is_libvirt_number(text):
            return pwd.getpwuid(int(text.lstrip("+")))
        return pwd.getpwnam(text)
    except (KeyError, ValueError, OverflowError):
        # ValueError: a NUL in the name; OverflowError: a uid beyond what the kernel can hold.
        return None


def _set_in_file(setting):
    return bool(setting) and setting.get("source") not in (None, "compiled default")


def _unjudgeable(setting, what):
    if setting.get("source") == "unreadable":
        raise AccountError(
            "cannot tell QEMU's account: %s; fix the file or set the account explicitly" % setting.get("error", "qemu.conf's %s cannot be judged" % what)
        )


def _configured_gid(group, default):
    """The gid libvirt gives QEMU: qemu.conf's group (a name or "+N") when set, else default."""
    if not _set_in_file(group):
        return default
    _unjudgeable(group, "group")
    text = str(group["value"]).strip()
    if _is_libvirt_number(text):
        return int(text[1:])
    try:
        return grp.getgrnam(text).gr_gid
    except (KeyError, ValueError):
        raise AccountError('cannot tell QEMU\'s account: group = "%s" (%s) is not a group on this host' % (text, group["source"])) from None


def _default_group():
    for name in QEMU_ACCOUNT_NAMES:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return None


def _configured_account(user, group):
    """The account and group qemu.conf names; AccountError when they name none on this host.

    libvirt takes "+N" as a uid or gid whether or not an account has it. Never root in their
    place: a setting that was not understood is a failure, not a default.
    """
    _unjudgeable(user, "user")
    value, source = str(user["value"]).strip(), user["source"]
    entry = _lookup(value)
    reason = 'user = "%s" in %s' % (value, source)
    if entry is not None:
        gid = _configured_gid(group, entry.pw_gid)
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
        return Account(entry.pw_name, entry.pw_uid, gid, groups, "auto", reason)
    if not _is_libvirt_number(value):
        raise AccountError('cannot tell QEMU\'s account: user = "%s" (%s) is not an account on this host; fix it or set the account explicitly' % (
            value,
            source,
        ))
    gid = _configured_gid(group, _default_group())
    if gid is None:
        raise AccountError('cannot tell QEMU\'s account: user = "%s" (%s) has no account, and qemu.conf sets no group' % (value, source))
    return Account(value, int(value[1:]), gid, (gid,), "auto", reason + " (no account has that uid)")


def _auto_account(configured, group=None):
    if _set_in_file(configured):
        return _configured_account(configured, group or {})
    for name in QEMU_ACCOUNT_NAMES:
        entry = _lookup(name)
        if entry is not None:
            return _from_passwd(entry, "auto", "account %s exists (libvirt's default QEMU account)" % name)
    entry = pwd.getpwuid(os.geteuid())
    return _from_passwd(entry, "auto", NO_QEMU_ACCOUNT)


def resolve_account(spec="auto", configured=None, group=None):
    """Resolve ``auto``, a name or a numeric uid to an Account; AccountError when unknown.

    configured and group are qemu.conf's user and group settings as _launcher reads them
    ({value, source}), for ``auto``.
    """
    if spec is None or str(spec).strip() in ("", "auto"):
        return _auto_account(configured, group)
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
