# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which account is QEMU's: libvirt's qemu.conf, then the usual account names, then our own."""

import os

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _accounts


def write_conf(tmp_path, text):
    path = tmp_path / "qemu.conf"
    path.write_text(text)
    return str(path)


def test_libvirt_user_setting_wins(tmp_path, test_user):
    conf = write_conf(tmp_path, '# user = "root"\nuser = "%s"\ngroup = "kvm"\n' % test_user.pw_name)
    account = _accounts.resolve_account("auto", conf)
    assert (account.name, account.source) == (test_user.pw_name, "auto")
    assert account.reason == "user = %s in %s" % (test_user.pw_name, conf)


def test_libvirt_numeric_user_form(tmp_path, test_user):
    conf = write_conf(tmp_path, 'user = "+%d"\n' % test_user.pw_uid)
    assert _accounts.resolve_account("auto", conf).uid == test_user.pw_uid


def test_commented_setting_falls_through_to_own_account(tmp_path):
    if any(_accounts._lookup(n) for n in _accounts.QEMU_ACCOUNT_NAMES):
        pytest.skip("this host has a qemu account")
    account = _accounts.resolve_account("auto", write_conf(tmp_path, '#user = "nobody"\n'))
    assert account.uid == os.geteuid()
    assert "module's own account" in account.reason


@pytest.mark.parametrize("spec", ["nobody", "65534", "+65534"])
def test_explicit_name_or_uid(spec):
    account = _accounts.resolve_account(spec)
    assert (account.name, account.uid, account.source) == ("nobody", 65534, "option")


def test_unknown_account_is_a_clear_error():
    with pytest.raises(_accounts.AccountError, match="no such account 'no-such-user-x'"):
        _accounts.resolve_account("no-such-user-x")


def test_switch_needed():
    assert _accounts.account_switch_needed(_accounts.resolve_account(str(os.geteuid()))) is (os.getegid() != os.getgid())
    assert _accounts.account_switch_needed(_accounts.resolve_account("nobody")) is (os.geteuid() != 65534)
