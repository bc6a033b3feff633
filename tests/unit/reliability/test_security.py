# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nothing opened up: what the module and the canary may run, touch and leave, checked on this host.

The threat model these tests hold the code to is docs/threat-model.md.
"""

import ast
import glob
import os
import resource
import signal
import stat
import sys

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils._switch import run_in_child

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fault_kit  # noqa: E402

PLUGINS = sorted(glob.glob(os.path.join(fault_kit.REPO, "plugins", "*", "*.py")))
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}
PROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def _calls(path):
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(func):
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id, func.attr
    return None, getattr(func, "id", None)


@pytest.mark.parametrize("path", PLUGINS, ids=[os.path.relpath(p, fault_kit.REPO) for p in PLUGINS])
def test_no_option_value_can_reach_a_shell(path):
    for call in _calls(path):
        owner, name = _dotted(call.func)
        assert (owner, name) not in SHELL_CALLS, "%s:%d calls %s.%s" % (path, call.lineno, owner, name)
        for keyword in call.keywords:
            assert not (keyword.arg == "shell" and getattr(keyword.value, "value", False) is True), "%s:%d shell=True" % (path, call.lineno)
        if owner == "subprocess" and name in PROCESS_CALLS and call.args:
            # An argv list, never one string a shell would have to split.
            assert not isinstance(call.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)), "%s:%d argv is a string" % (path, call.lineno)


def test_probe_child_leaves_no_core_and_no_inherited_descriptor(tmp_path):
    spare = os.open(str(tmp_path), os.O_RDONLY)  # a descriptor of the module the child must not keep
    try:
        report = run_in_child(lambda: {"core": resource.getrlimit(resource.RLIMIT_CORE), "fds": os.listdir("/proc/self/fd")})
    finally:
        os.close(spare)
    assert report["core"] == [0, 0]
    # stdio, the result pipe, and the descriptor the listing itself used
    assert len([fd for fd in report["fds"] if int(fd) > 2]) <= 2
    assert str(spare) not in report["fds"] or int(spare) <= 2


def test_probe_child_alarm_guard_is_a_kill_even_under_a_python_handler():
    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        assert run_in_child(lambda: signal.getsignal(signal.SIGALRM) == signal.SIG_DFL) is True
    finally:
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def canary_as_account(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: the canary switches to the test account")
    user = fault_kit_test_user()
    # Stopped at its first userfaultfd() call, the destination QEMU waits while the test looks around.
    # Not "hang": a signal to the held thread restarts the call, which then goes through (seen in CI).
    spec = fault_kit.process("fault_exec", "--on", "userfaultfd=stop", module="canary")
    canary = fault_kit.Background(spec, {"accel": "tcg", "memory_mb": 16, "timeout": 60, "run_as": user.pw_name}, str(tmp_path))
    try:
        canary.held = canary.wait_event(1)
        yield canary, user
    finally:
        if canary.proc.poll() is None:
            os.kill(canary.module_pid(), signal.SIGTERM)
        canary.finish()


def fault_kit_test_user():
    sys.path.insert(0, fault_kit.TOOLS)
    import hostctl

    return hostctl.ensure_test_user()


def test_canary_work_dir_is_private_and_qemu_sandboxed(canary_as_account):
    canary, user = canary_as_account
    workdirs = os.listdir(canary.tmpdir)
    # Whoever made the held call, and whether the module still runs, say what went wrong if this fails.
    context = "held: %s; module running: %s; events: %s" % (canary.held, canary.proc.poll() is None, fault_kit.read_events(canary.log))
    assert len(workdirs) == 1, context
    assert workdirs[0].startswith("postcopy-canary-") and len(workdirs[0]) > len("postcopy-canary-") + 4
    workdir = os.path.join(canary.tmpdir, workdirs[0])
    info = os.stat(workdir)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == user.pw_uid
    sockets = [name for name in os.listdir(workdir) if stat.S_ISSOCK(os.stat(os.path.join(workdir, name)).st_mode)]
    assert sockets, "QEMU's sockets are inside the private dir"
    for role in ("source", "destination"):
        pid = canary.qemu_pid(role)
        with open("/proc/%d/status" % pid) as status:
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        assert set(int(u) for u in uids) == {user.pw_uid}
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
        assert b"-sandbox" in argv and argv[argv.index(b"-sandbox") + 1].startswith(b"on,")
