# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nothing opened up: what the module and the canary may run, touch and leave, checked on this host.

The threat model these tests hold the code to is docs/docsite/rst/threat-model.rst.
"""

import ast
import glob
import json
import os
import resource
import signal
import stat
import sys
import time

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
    canary = fault_kit.Background(spec, {"accel": "tcg", "memory_mb": 16, "timeout": 60, "probe_user": user.pw_name}, str(tmp_path))
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
    # Root's: QEMU's account may pass through, not list or change it.
    assert stat.S_IMODE(info.st_mode) == 0o711 and info.st_uid == 0
    assert set(os.listdir(workdir)) == {"firmware.bin", "qemu"}, "no log or socket of root's has a name"
    qemu_dir = os.path.join(workdir, "qemu")
    info = os.stat(qemu_dir)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == user.pw_uid
    sockets = [name for name in os.listdir(qemu_dir) if stat.S_ISSOCK(os.stat(os.path.join(qemu_dir, name)).st_mode)]
    assert sockets, "QEMU's sockets are inside the private dir"
    for role in ("source", "destination"):
        pid = canary.qemu_pid(role)
        with open("/proc/%d/status" % pid) as status:
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        assert set(int(u) for u in uids) == {user.pw_uid}
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
        assert b"-sandbox" in argv and argv[argv.index(b"-sandbox") + 1].startswith(b"on,")


# ---------------------------------------------------------------------------------------------
# QEMU's account is hostile: the attacks a guest that escaped into it would make, run for real.

SECRET = b"root-only secret: must never reach a log, a fact or an attacker\n"


def _hostile(tmpdir, target, user, seconds):
    """Start tests/tools/hostile_account.py as the test account; it reports in JSON when it stops."""
    sys.path.insert(0, fault_kit.TOOLS)
    import subprocess

    return subprocess.Popen(
        ["/usr/bin/python3", "-I", os.path.join(fault_kit.TOOLS, "hostile_account.py"), tmpdir, target, str(seconds)],
        stdout=subprocess.PIPE,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        cwd="/",
    )


@pytest.fixture
def shared_tmpdir(monkeypatch, tmp_path_factory):
    """A TMPDIR every account may list, as /tmp is (sticky, world-writable)."""
    import tempfile

    tmp_path_factory.getbasetemp()
    path = tempfile.mkdtemp(prefix="pcs-", dir="/tmp")
    os.chmod(path, 0o1777)
    monkeypatch.setenv("TMPDIR", path)
    monkeypatch.setattr(tempfile, "tempdir", path)
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _root_only_secret(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    return secret


@pytest.mark.skipif(not os.path.exists("/usr/bin/qemu-system-x86_64"), reason="needs Debian's QEMU (dev.sh installs it)")
@pytest.mark.parametrize("target", ["root-only file", "dangling path"])
def test_qemus_account_cannot_make_the_canary_write_or_read_roots_files(root, tmp_path, shared_tmpdir, target):
    from ansible_collections.hypervisor.migration.plugins.module_utils import _canary

    sys.path.insert(0, fault_kit.TOOLS)
    import hostctl

    user = hostctl.ensure_test_user()
    secret = _root_only_secret(tmp_path)
    before = os.stat(str(secret))
    aim = secret if target == "root-only file" else tmp_path / "created-by-root"
    attacker = _hostile(shared_tmpdir, str(aim), user, 60)
    try:
        time.sleep(0.3)  # the attacker is watching before the canary starts
        with hostctl.sysctl_set(1):  # supported: the canary runs its whole course, the attacker has time
            facts = _canary.run_canary(_canary.make_settings(probe_user=user.pw_name, accel="tcg", memory_mb=16, timeout=60))
    finally:
        open(os.path.join(shared_tmpdir, "stop"), "w").close()
        out, _err = attacker.communicate(timeout=30)
    report = json.loads(out)
    assert report["workdirs"], "the attacker never saw the canary's work dir: %s" % report
    workdir = report["workdirs"][0]
    root_dir_plants = {path: result for path, result in report["plants"].items() if os.path.dirname(path) == workdir}
    # ENOENT: the attacker came back after the canary had removed its dir.
    assert "EACCES" in root_dir_plants.values() and set(root_dir_plants.values()) <= {"EACCES", "ENOENT"}, report
    assert report["qmp_bytes"] == 0, "root sent QMP to the attacker's socket: %s" % report
    after = os.stat(str(secret))
    assert secret.read_bytes() == SECRET and (after.st_mtime_ns, after.st_mode, after.st_uid) == (before.st_mtime_ns, before.st_mode, before.st_uid)
    assert not (tmp_path / "created-by-root").exists()
    assert b"secret" not in json.dumps(facts).encode()
    assert os.listdir(shared_tmpdir) == ["stop"], "the canary left its work dir behind"


def test_qmp_client_refuses_a_socket_whose_peer_is_not_qemu(tmp_path):
    import socket

    from ansible_collections.hypervisor.migration.plugins.module_utils._qmp import QMPClient, QMPError

    path = str(tmp_path / "impostor.qmp")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        client = QMPClient(path, peer_pid=os.getppid())
        with pytest.raises(QMPError, match="belongs to process %d, not to QEMU" % os.getpid()):
            client.connect(5)
        conn, _addr = listener.accept()
        conn.settimeout(1)
        assert conn.recv(100) == b"", "the client sent something to a peer that is not QEMU"
        conn.close()
    finally:
        listener.close()


def test_probe_child_starts_from_a_minimal_environment(monkeypatch):
    monkeypatch.setenv("HOME", "/root")
    monkeypatch.setenv("LD_PRELOAD_NOT_REALLY", "x")
    env = run_in_child(lambda: dict(os.environ))
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/", "LC_ALL": "C"}


@pytest.mark.skipif(not os.path.exists("/usr/bin/qemu-system-x86_64"), reason="needs Debian's QEMU (dev.sh installs it)")
def test_canary_qemu_gets_no_part_of_roots_environment(canary_as_account):
    canary, _user = canary_as_account
    for role in ("source", "destination"):
        with open("/proc/%d/environ" % canary.qemu_pid(role), "rb") as handle:
            env = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if item)
        assert set(env) == {b"PATH", b"HOME", b"LC_ALL"}
        assert env[b"HOME"].endswith(b"/qemu") and env[b"PATH"] == b"/usr/sbin:/usr/bin:/sbin:/bin"


# qemu_binary: root reads and may run it, so no other account may be able to replace it.


def _bannerless_qemu(directory, marker):
    """A QEMU that carries no banner: the module would have to run it; running it leaves marker."""
    path = os.path.join(str(directory), "qemu-system-x86_64")
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\ntouch %s\necho 'QEMU emulator version 9.1.0'\n" % marker)
    os.chmod(path, 0o755)
    return path


@pytest.mark.parametrize("how", ["owned by QEMU's account", "group-writable", "writable by all"])
def test_qemu_binary_in_a_directory_another_account_controls_is_refused_and_never_run(root, tmp_path, how):
    from ansible_collections.hypervisor.migration.plugins.module_utils._qemu import QemuBinaryError, find_qemu_binary

    sys.path.insert(0, fault_kit.TOOLS)
    import hostctl

    user = hostctl.ensure_test_user()
    tmp_path.chmod(0o755)
    swappable = tmp_path / "bin"
    swappable.mkdir()
    if how == "owned by QEMU's account":
        os.chown(str(swappable), user.pw_uid, user.pw_gid)
    else:
        swappable.chmod(0o775 if how == "group-writable" else 0o777)
    marker = tmp_path / "ran-as-root"
    binary = _bannerless_qemu(swappable, marker)
    with pytest.raises(QemuBinaryError, match="qemu_binary .*: %s is .*; refusing to read or run it as root" % swappable):
        find_qemu_binary(binary)
    answer = fault_kit.run_module_process(fault_kit.process("fault_exec"), {"qemu_binary": binary, "probe_user": user.pw_name}, str(tmp_path)).answer
    assert answer.get("failed") and "refusing to read or run it as root" in answer["msg"], answer
    assert not marker.exists()


def test_qemu_binary_through_a_symlink_is_judged_and_run_by_its_real_path(root, tmp_path):
    from ansible_collections.hypervisor.migration.plugins.module_utils._qemu import find_qemu_binary

    tmp_path.chmod(0o755)
    real = _bannerless_qemu(tmp_path, tmp_path / "ran")
    link = tmp_path / "qemu-link"
    link.symlink_to(real)
    assert find_qemu_binary(str(link)) == real


def test_banner_scan_of_a_huge_sparse_file_stops_at_its_limit(root, tmp_path):
    from ansible_collections.hypervisor.migration.plugins.module_utils import _qemu

    tmp_path.chmod(0o755)
    huge = tmp_path / "qemu-system-x86_64"
    with open(str(huge), "wb") as handle:
        handle.truncate(16 << 30)
    huge.chmod(0o755)
    started = time.monotonic()
    assert _qemu.qemu_version(str(huge), timeout=1) is None
    # Not a speed figure: a scan of all 16 GiB takes tens of seconds; the bound is _SCAN_LIMIT.
    assert time.monotonic() - started < 10


def test_banner_of_a_fifo_is_not_waited_for(root, tmp_path):
    from ansible_collections.hypervisor.migration.plugins.module_utils import _qemu

    fifo = str(tmp_path / "qemu-fifo")
    os.mkfifo(fifo)
    assert _qemu.embedded_version(fifo, timeout=1) is None


# qemu.conf: root reads it to learn QEMU's account; it must never make the module judge as root,
# read without bound, or hang. The host's /etc/libvirt/qemu.conf is put in place for each test and
# the host left as found.

QEMU_CONF = "/etc/libvirt/qemu.conf"


@pytest.fixture
def host_qemu_conf():
    """Install a /etc/libvirt/qemu.conf (any kind of file) for one test; restore what was there."""
    import shutil
    import tempfile

    made_dir = not os.path.isdir(os.path.dirname(QEMU_CONF))
    saved = None
    if os.path.lexists(QEMU_CONF):
        saved = tempfile.mkdtemp(prefix="hvm-qemu-conf-")
        shutil.move(QEMU_CONF, os.path.join(saved, "qemu.conf"))
    if made_dir:
        os.makedirs(os.path.dirname(QEMU_CONF), 0o755)

    def install(make):
        make(QEMU_CONF)
        return QEMU_CONF

    try:
        yield install
    finally:
        if os.path.lexists(QEMU_CONF) or os.path.isdir(QEMU_CONF):
            (shutil.rmtree if os.path.isdir(QEMU_CONF) and not os.path.islink(QEMU_CONF) else os.unlink)(QEMU_CONF)
        if saved:
            shutil.move(os.path.join(saved, "qemu.conf"), QEMU_CONF)
            os.rmdir(saved)
        if made_dir:
            os.rmdir(os.path.dirname(QEMU_CONF))


def _text(content):
    def make(path):
        with open(path, "w") as handle:
            handle.write(content)

    return make


def _module_answer(tmp_path, options):
    return fault_kit.run_module_process(fault_kit.process("fault_exec"), options, str(tmp_path)).answer


@pytest.mark.parametrize("form", ['"+{uid}"', "'{name}'", '"""{name}"""', '"{name}"  # QEMU runs as this'])
def test_every_form_of_user_libvirt_reads_names_qemus_account(root, tmp_path, host_qemu_conf, form):
    sys.path.insert(0, fault_kit.TOOLS)
    import hostctl

    user = hostctl.ensure_test_user()
    host_qemu_conf(_text("user = %s\n" % form.format(uid=user.pw_uid, name=user.pw_name)))
    answer = _module_answer(tmp_path, {"launcher": "qemu"})
    assert answer["ansible_facts"]["postcopy"]["probe_user"]["uid"] == user.pw_uid, answer


@pytest.mark.parametrize(
    "content, message",
    [
        ('user = "no-such-account-x"\n', 'user = "no-such-account-x" (/etc/libvirt/qemu.conf line 1) is not an account on this host'),
        ('user = "qemu\n', "/etc/libvirt/qemu.conf line 1:"),
        ("user = 107\n", "/etc/libvirt/qemu.conf line 1: user must be a string"),
    ],
)
def test_a_user_that_is_not_understood_fails_the_task_never_root(root, tmp_path, host_qemu_conf, content, message):
    host_qemu_conf(_text(content))
    for options in ({"launcher": "qemu"}, {"launcher": "libvirt"}):
        answer = _module_answer(tmp_path, options)
        assert answer.get("failed") and "cannot tell QEMU's account" in answer["msg"] and message in answer["msg"], answer


def _sparse(path):
    with open(path, "wb") as handle:
        handle.truncate(300 << 20)


@pytest.mark.parametrize(
    "make, refusal",
    [
        (_sparse, "is larger than the limit of 10485760 bytes"),
        (lambda path: os.symlink("/dev/zero", path), "/dev/zero is writable by accounts other than root"),
        (os.mkfifo, "is a FIFO, not a regular file"),
        (os.mkdir, "is a directory, not a regular file"),
    ],
    ids=["300 MB", "symlink to /dev/zero", "FIFO", "directory"],
)
def test_a_qemu_conf_that_is_not_a_small_regular_file_is_refused_unread(root, tmp_path, host_qemu_conf, make, refusal):
    host_qemu_conf(make)
    answer = _module_answer(tmp_path, {"launcher": "libvirt", "timeout": 5})
    # The account cannot be told from a file libvirt would refuse: a clear failure, never root.
    assert answer.get("failed") and refusal in answer["msg"] and "cannot tell QEMU's account" in answer["msg"], answer
