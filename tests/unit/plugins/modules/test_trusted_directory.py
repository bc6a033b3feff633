# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""trusted_directory: root creates directories only where no other account can redirect it.

The attack these tests make for real: an account that can write a parent directory puts a
symlink where root is about to create a directory, so that root creates, chmods or writes
elsewhere (seen with a stat task followed by a file task: a root 0700 dir became 0755).
"""

import os
import stat

import hostctl
import pytest
from ansible_collections.hypervisor.migration.plugins.modules import trusted_directory
from module_main import run_module_main


def run_module(capsys, args, check_mode=False):
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    return run_module_main(trusted_directory.main, args, capsys)


@pytest.fixture
def base(tmp_path, root):
    tmp_path.chmod(0o755)
    return tmp_path


def test_creates_the_missing_directories_with_the_mode_and_is_idempotent(capsys, base):
    target = base / "etc" / "facts.d"
    first = run_module(capsys, {"path": str(target)})
    assert first["changed"] is True and first["created"] == [str(base / "etc"), str(target)]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 and target.stat().st_uid == 0
    second = run_module(capsys, {"path": str(target)})
    assert second["changed"] is False and second["created"] == []


def test_check_mode_creates_nothing_and_says_what_it_would(capsys, base):
    target = base / "new"
    result = run_module(capsys, {"path": str(target)}, check_mode=True)
    assert result["changed"] is True and result["created"] == [str(target)]
    assert not target.exists()


@pytest.mark.parametrize("mode", ["0775", "0777", "rwx", "99999"])
def test_a_mode_others_could_write_or_not_octal_is_one_line(capsys, base, mode):
    result = run_module(capsys, {"path": str(base / "x"), "mode": mode})
    assert result["failed"] and result["msg"].startswith("mode must be an octal mode without group or other write permission")
    assert not (base / "x").exists()


def test_a_symlink_planted_by_another_account_is_refused_and_its_target_left_alone(capsys, base):
    user = hostctl.ensure_test_user()
    parent = base / "shared"
    parent.mkdir()
    os.chown(str(parent), user.pw_uid, user.pw_gid)
    private = base / "private"
    private.mkdir(mode=0o700)
    # What the account does between a stat and a mkdir, done here as the account would.
    os.symlink(str(private), str(parent / "facts.d"))
    os.lchown(str(parent / "facts.d"), user.pw_uid, user.pw_gid)
    result = run_module(capsys, {"path": str(parent / "facts.d")})
    assert result["failed"] and result["msg"] == (
        "refusing to write below %s: %s is owned by uid %d, not root, so another account could redirect what root writes there"
        % (parent / "facts.d", parent, user.pw_uid)
    )
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_a_group_writable_parent_is_refused(capsys, base):
    parent = base / "team"
    parent.mkdir()
    parent.chmod(0o775)
    result = run_module(capsys, {"path": str(parent / "d")})
    assert result["failed"] and "%s is writable by accounts other than root (mode 0775)" % parent in result["msg"]
    assert not (parent / "d").exists()


def test_roots_own_symlink_to_roots_own_directory_is_followed(capsys, base):
    real = base / "real"
    real.mkdir()
    (base / "link").symlink_to(real)
    result = run_module(capsys, {"path": str(base / "link" / "d")})
    assert result["changed"] and (real / "d").is_dir()


def test_roots_symlink_into_a_directory_another_account_controls_is_refused(capsys, base):
    user = hostctl.ensure_test_user()
    theirs = base / "theirs"
    theirs.mkdir()
    os.chown(str(theirs), user.pw_uid, user.pw_gid)
    (base / "link").symlink_to(theirs)
    result = run_module(capsys, {"path": str(base / "link" / "d")})
    assert result["failed"] and "(the target of symlink %s)" % (base / "link") in result["msg"]
    assert not (theirs / "d").exists()


def test_a_file_in_the_way_is_refused(capsys, base):
    (base / "file").write_text("")
    result = run_module(capsys, {"path": str(base / "file" / "d")})
    assert result["failed"] and "%s is not a directory" % (base / "file") in result["msg"]
