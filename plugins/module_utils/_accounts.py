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
    "LIBVIRT_QEMU_CONF",
    "NO_QEMU_ACCOUNT",
    "QEMU_ACCOUNT_NAMES",
    "account_switch_needed",
    "group_name",
    "libvirt_configured_user",
    "resolve_account",
    "to_dict",
]

LIBVIRT_QEMU_CONF = "/etc/libvirt/qemu.conf"
# Fedora/RHEL packages create "qemu", Debian/Ubuntu "libvirt-qemu".
QEMU_ACCOUNT_NAMES = ("qemu", "libvirt-qemu")
# The reason auto gives when it found no QEMU account and fell back to the module's own.
NO_QEMU_ACCOUNT = "no libvirt QEMU account found; probing as the module's own account"

Account = namedtuple("Account", "name uid gid groups source reason")

# ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
_NUMERIC_UID = re.compile(r"^\+?[0-9]+$")
_CONF_USER = re.compile(r'^\s*user\s*=\s*"([^"]*)"', re.MULTILINE)


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


def libvirt_configured_user(path=LIBVIRT_QEMU_CONF):
    """The ``user`` libvirt starts QEMU as, or None when the file or the setting is absent."""
    try:
        with open(path) as conf:
            match = _CONF_USER.search(conf.read())
    except (IOError, OSError):
        return None
    return match.group(1) if match else None


def _auto_account(conf_path):
    configured = libvirt_configured_user(conf_path)
    if configured:
        entry = _lookup(configured)
        if entry is not None:
            return _from_passwd(entry, "auto", "user = %s in %s" % (configured, conf_path))
    for name in QEMU_ACCOUNT_NAMES:
        entry = _lookup(name)
        if entry is not None:
            return _from_passwd(entry, "auto", "account %s exists (libvirt's default QEMU account)" % name)
    entry = pwd.getpwuid(os.geteuid())
    return _from_passwd(entry, "auto", NO_QEMU_ACCOUNT)


def resolve_account(spec="auto", conf_path=LIBVIRT_QEMU_CONF):
    """Resolve ``auto``, a name or a numeric uid to an Account; AccountError when unknown."""
    if spec is None or str(spec).strip() in ("", "auto"):
        return _auto_account(conf_path)
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
