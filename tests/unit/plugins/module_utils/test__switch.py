# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The child runner: results, account switch, and every way a child can go wrong."""

import faulthandler
import os
import signal
import time

import hostctl
import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import resolve_account
from ansible_collections.hypervisor.migration.plugins.module_utils._switch import ChildError, run_in_child


def no_zombie_children():
    return hostctl.child_pids() == []


def test_result_comes_back_through_the_pipe():
    assert run_in_child(lambda: {"pid": os.getpid(), "list": [1, 2]})["list"] == [1, 2]
    assert run_in_child(os.getpid) != os.getpid()


def test_large_result_is_read_whole():
    blob = "x" * 1000000
    assert run_in_child(lambda: blob) == blob


def test_child_becomes_the_account(test_user):
    account = resolve_account(test_user.pw_name)
    ids = run_in_child(lambda: [os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups())], account)
    assert ids == [test_user.pw_uid, test_user.pw_uid, test_user.pw_gid, sorted(account.groups)]


def test_exception_in_child_is_one_line_error():
    def boom():
        raise ValueError("no good")

    with pytest.raises(ChildError, match="^probe failed: no good$"):
        run_in_child(boom)
    assert no_zombie_children()


@pytest.mark.parametrize("sig, name", [(signal.SIGSEGV, "SIGSEGV"), (signal.SIGKILL, "SIGKILL"), (signal.SIGABRT, "SIGABRT")])
def test_child_killed_by_signal_is_named(sig, name):
    with pytest.raises(ChildError, match="killed by signal %s" % name):
        # pytest's faulthandler would print the dying child's stack; nobody needs it here.
        run_in_child(lambda: (faulthandler.disable(), os.kill(os.getpid(), sig)))
    assert no_zombie_children()


def test_hung_child_is_killed_at_the_timeout():
    start = time.monotonic()
    with pytest.raises(ChildError, match="did not finish within 1 seconds and was killed"):
        run_in_child(lambda: time.sleep(30), timeout=1)
    assert time.monotonic() - start < 5
    assert no_zombie_children()


def test_child_exiting_without_answer():
    with pytest.raises(ChildError, match="exited with status 3 without a result"):
        run_in_child(lambda: os._exit(3))


def test_switch_refused_is_reported(test_user):
    account = resolve_account(test_user.pw_name)

    def as_account_then_back():
        return run_in_child(os.getpid, resolve_account("root"))

    # Once unprivileged, becoming root again must fail, and say so.
    with pytest.raises(ChildError, match="could not switch to account root"):
        run_in_child(as_account_then_back, account)
