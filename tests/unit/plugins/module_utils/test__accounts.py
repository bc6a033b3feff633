# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which account is QEMU's: libvirt's qemu.conf, then the usual account names, then our own."""

import grp
import os

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _accounts, _launcher


def write_conf(tmp_path, text):
    path = tmp_path / "qemu.conf"
    path.write_text(text)
    return str(path)


def auto_from(conf):
    """resolve_account("auto") with qemu.conf's user and group as the facts module reads them."""
    settings = _launcher.read_libvirt_settings(None, conf)[0]
    return _accounts.resolve_account("auto", settings["user"], settings["group"])


def test_libvirt_user_setting_wins(tmp_path, test_user):
    conf = write_conf(tmp_path, '# user = "root"\nuser = "%s"\ngroup = "%s"\n' % (test_user.pw_name, grp.getgrgid(test_user.pw_gid).gr_name))
    account = auto_from(conf)
    assert (account.name, account.source) == (test_user.pw_name, "auto")
    assert account.reason == 'user = "%s" in %s line 2' % (test_user.pw_name, conf)


@pytest.mark.parametrize("form", ['"+%d"', "'+%d'", '"""+%d"""', "'%s'", '"""%s"""', '  "%s"  # QEMU runs as this'])
def test_every_string_form_libvirt_reads(tmp_path, test_user, form):
    value = form % (test_user.pw_uid if "+" in form else test_user.pw_name)
    assert auto_from(write_conf(tmp_path, "user = %s\n" % value)).uid == test_user.pw_uid


@pytest.mark.parametrize(
    "text, message",
    [
        ('user = "no-such-account-x"\n', 'user = "no-such-account-x" (%s line 1) is not an account on this host'),
        ('user = "+4000000"\ngroup = "no-such-group-x"\n', 'group = "no-such-group-x" (%s line 2) is not a group on this host'),
        ("user = qemu\n", "%s line 1:"),
        ('user = "qemu\n', "%s line 1:"),
        ("user = 107\n", "%s line 1: user must be a string, got the number 107"),
        ('user = ["qemu"]\n', "%s line 1: user must be a string, got a list"),
    ],
)
def test_a_user_that_cannot_be_understood_is_an_error_never_root(tmp_path, text, message):
    conf = write_conf(tmp_path, text)
    with pytest.raises(_accounts.AccountError) as raised:
        auto_from(conf)
    assert "cannot tell QEMU's account" in str(raised.value)
    settings, errors, _state = _launcher.read_libvirt_settings(None, conf)
    assert (message % conf if "%s" in message else message) in " ".join([str(raised.value)] + errors)


def test_libvirt_numbers_need_no_account_and_group_sets_the_gid(tmp_path, test_user):
    # libvirt starts QEMU as "+N" whether or not an account has that uid, with qemu.conf's group.
    account = auto_from(write_conf(tmp_path, 'user = "+4000000"\ngroup = "+4000001"\n'))
    assert (account.name, account.uid, account.gid, account.groups) == ("+4000000", 4000000, 4000001, (4000001,))
    account = auto_from(write_conf(tmp_path, 'user = "%s"\ngroup = "+%d"\n' % (test_user.pw_name, 4000002)))
    assert (account.uid, account.gid) == (test_user.pw_uid, 4000002) and 4000002 in account.groups


def test_commented_setting_falls_through_to_own_account(tmp_path):
    if any(_accounts._lookup(n) for n in _accounts.QEMU_ACCOUNT_NAMES):
        pytest.skip("this host has a qemu account")
    account = auto_from(write_conf(tmp_path, '#user = "nobody"\n'))
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


@pytest.mark.parametrize("text, digits", [("0", True), ("64055", True), ("", False), ("+1", False), ("²", False), ("١٢", False), ("1 ", False)])
def test_is_digits_takes_only_what_int_reads_as_a_plain_decimal(text, digits):
    # str.isdigit() alone accepts "²", which int() refuses, and other scripts' digits, which int() reads.
    assert _accounts.is_digits(text) is digits
