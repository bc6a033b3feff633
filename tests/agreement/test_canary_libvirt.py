# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""postcopy_canary with launcher libvirt, run as a managed host runs it, against real libvirt.

The module runs where a Debian root's libvirt runs with the root as ``/`` (tests/tools/libvirt_root.py):
``ansible`` sends it through AnsiballZ, pipelined, to the root's own python3 entered with
``nsenter`` into libvirt's mount and pid namespaces, so the module finds that root's virsh,
qemu.conf, QEMU and daemon exactly as on a hypervisor. Its two QEMUs are then libvirt's transient
domains, and QEMU's post-copy check runs inside libvirt's confinement. The answers must be those
The launchers guide (docs/docsite/rst/launchers.rst) records for QEMU under libvirt (launcher_conditions.py), and nothing may be left:
no domain, no file, no QEMU, the host's /dev/userfaultfd and sysctl as they were.

    PYTHONPATH=.build/collections .venv/bin/pytest tests/agreement/test_canary_libvirt.py
"""

import json
import os
import signal
import subprocess
import sys
import time

import hostctl
import libvirt_root
import pytest
from launcher_conditions import LAUNCHER_CONDITIONS, SUITE_VERSIONS
from libvirt_root import LibvirtRoot
from test_launchers import _descendants, _node, _settled, resting_host, roots  # noqa: F401 pylint: disable=unused-import

# roots and resting_host (imported above) are fixtures, used by name.
CONDITIONS = {condition.id: condition for condition in LAUNCHER_CONDITIONS}
# (condition, sysctl): the canary's answer must be QEMU's answer under that libvirt
CASES = [("trixie-defaults", 0), ("trixie-acl-without-device", 0), ("bookworm-defaults", 0), ("bookworm-defaults", 1)]
CANARY_ARGS = "launcher=libvirt accel=tcg memory_mb=64 timeout=240"
# Where libvirt and the canary would leave something behind, inside the root.
LEFTOVER_DIRS = ("/tmp", "/var/log/libvirt/qemu", "/run/libvirt/qemu", "/var/lib/libvirt/qemu")
ANSIBLE_TIMEOUT = 400


def _collections_path():
    for entry in sys.path:
        if os.path.isdir(os.path.join(entry, "ansible_collections", "hypervisor", "migration")):
            return os.path.abspath(entry)
    raise RuntimeError("PYTHONPATH must reach ansible_collections/hypervisor/migration (.build/collections)")


def _interpreter(libvirt, directory):
    """A root-owned script that is the managed host's python3: the root's own, inside libvirt's namespaces."""
    path = os.path.join(str(directory), "python3-in-root")
    with open(path, "w") as handle:
        handle.write('#!/bin/sh\nexec nsenter -t %d -m -p -r -w /usr/bin/python3 "$@"\n' % libvirt.init_pid)
    os.chmod(path, 0o755)
    return path


def _ansible_argv(interpreter, args, check=False):
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    argv = [ansible, "localhost", "-c", "local", "-e", "ansible_python_interpreter=%s" % interpreter,
            "-m", "hypervisor.migration.postcopy_canary", "-a", args]
    return argv + (["--check"] if check else [])


def _ansible_env():
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    env.update(ANSIBLE_COLLECTIONS_PATH=_collections_path(), ANSIBLE_PIPELINING="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_DEPRECATION_WARNINGS="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    return env


def _task_result(stdout, stderr=""):
    """The one host's result from ad-hoc output ("localhost | SUCCESS => {...}")."""
    if "=> {" not in stdout:
        raise AssertionError("ansible printed no result: %s %s" % (stdout[-1000:], stderr[-2000:]))
    status, text = stdout.split("=> ", 1)
    result = json.loads(text)
    result["failed"] = "FAILED" in status
    return result


def run_canary_in_root(libvirt, tmp_path, args=CANARY_ARGS, check=False):
    proc = subprocess.run(_ansible_argv(_interpreter(libvirt, tmp_path), args, check), capture_output=True, text=True,
                          env=_ansible_env(), timeout=ANSIBLE_TIMEOUT, check=False)
    return _task_result(proc.stdout, proc.stderr)


def _inside(libvirt, path):
    try:
        return sorted(os.listdir(libvirt.path(path)))
    except FileNotFoundError:
        return []


def _qemus(libvirt):
    found = []
    for pid in libvirt_root._processes_in_ns(libvirt.pid_ns):
        try:
            with open("/proc/%d/comm" % pid) as handle:
                if handle.read().startswith("qemu"):
                    found.append(pid)
        except OSError:
            continue
    return found


def assert_nothing_left(libvirt, before):
    assert libvirt.virsh("list", "--all", "--name").stdout.split() == []
    assert {path: _inside(libvirt, path) for path in LEFTOVER_DIRS} == before
    assert _qemus(libvirt) == []


def _snapshot(libvirt):
    return {path: _inside(libvirt, path) for path in LEFTOVER_DIRS}


def _assert_run_by_libvirt(facts, suite):
    assert facts["launcher"] == "libvirt"
    assert facts["qemu_version"].startswith(SUITE_VERSIONS[suite][1] + ".")
    assert facts["run_as"]["name"] == "libvirt-qemu"
    assert sorted(facts["domains"]) == ["destination", "source"]
    assert "<qemu:arg value='-incoming'/>" in facts["domains"]["destination"]
    assert "-incoming" not in facts["domains"]["source"]


@pytest.fixture(scope="module")
def libvirts(roots):  # noqa: F811 (the fixture imported above)
    """One running libvirt per condition for this file's tests (its first domain costs libvirt's
    probe of QEMU), all stopped at the end: then no process is left below pytest."""
    started = {}

    def running(condition):
        if condition.id not in started:
            libvirt = LibvirtRoot(roots[condition.suite], qemu_conf=condition.qemu_conf)
            libvirt.start()
            started[condition.id] = libvirt
        return started[condition.id]

    try:
        yield running
    finally:
        for libvirt in started.values():
            libvirt.stop()
    assert all(libvirt.host_changes == [] and libvirt.cgroups_left == [] for libvirt in started.values())
    assert _descendants(os.getpid()) == []


@pytest.fixture
def host_kept(resting_host):  # noqa: F811 (the fixture imported above)
    """The sysctl and the host's /dev/userfaultfd owner and mode are as before the test (or as the
    session found them: other runs on a shared machine change them for a while, as in test_launchers)."""
    sysctl, node = hostctl.read_sysctl(), _node()
    yield
    assert _settled(hostctl.read_sysctl, sysctl, also=resting_host[0]) in (sysctl, resting_host[0])
    assert _settled(_node, node, also=resting_host[1]) in (node, resting_host[1])


@pytest.mark.parametrize("condition_id, sysctl", CASES, ids=["%s-sysctl%d" % case for case in CASES])
def test_canary_under_libvirt_agrees_with_qemu(condition_id, sysctl, libvirts, tmp_path, host_kept):
    """The canary's verdict is QEMU's answer under that libvirt (the launchers guide), in QEMU's words when not ok."""
    condition = CONDITIONS[condition_id]
    expected = condition.accepted[sysctl]
    libvirt = libvirts(condition)
    before = _snapshot(libvirt)
    result = hostctl.steady(lambda: run_canary_in_root(libvirt, tmp_path), sysctl=sysctl, mode=0o600)
    facts = result["ansible_facts"]["postcopy_canary"]
    assert result["failed"] is False, result
    _assert_run_by_libvirt(facts, condition.suite)
    assert facts["ok"] is expected, facts["error"]
    if expected:
        assert facts["status"] == "completed" and facts["postcopy_active_seen"] and facts["guest_running_after"]
        assert facts["postcopy_requests"] > 0
    else:
        # QEMU's words: the syscall it falls back to is refused (QEMU 7.2 says why only in its log)
        assert "Operation not permitted" in facts["error"], facts["error"]
    assert_nothing_left(libvirt, before)


def test_check_mode_shows_the_domains_and_starts_nothing(libvirts, tmp_path):
    libvirt = libvirts(CONDITIONS["trixie-defaults"])
    before = _snapshot(libvirt)
    result = run_canary_in_root(libvirt, tmp_path, check=True)
    facts = result["ansible_facts"]["postcopy_canary"]
    assert facts["ok"] is None
    _assert_run_by_libvirt(facts, "trixie")
    assert facts["commands"]["destination"][-3:] == ["create", "/dev/stdin", "--paused"]
    assert "<loader type='rom' readonly='yes'>&lt;workdir&gt;/firmware.bin</loader>" in facts["domains"]["source"]
    assert_nothing_left(libvirt, before)


def _module_pid(libvirt):
    """The module's python3 inside the namespace (AnsiballZ's child that runs the module)."""
    candidates = []
    for pid in libvirt_root._processes_in_ns(libvirt.pid_ns):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"python3"):
            candidates.append(pid)
    return max(candidates) if candidates else None


def test_sigterm_destroys_the_domains(libvirts, tmp_path, host_kept):
    """SIGTERM to the module while its domains run: both destroyed, logs and work dir removed, one-line failure."""
    libvirt = libvirts(CONDITIONS["trixie-defaults"])
    before = _snapshot(libvirt)
    ansible = subprocess.Popen(_ansible_argv(_interpreter(libvirt, tmp_path), CANARY_ARGS), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_ansible_env())
    try:
        deadline = time.monotonic() + 120
        while not libvirt.virsh("list", "--name").stdout.split() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert libvirt.virsh("list", "--name").stdout.split(), "no domain appeared"
        os.kill(_module_pid(libvirt), signal.SIGTERM)
        stdout, stderr = ansible.communicate(timeout=ANSIBLE_TIMEOUT)
    finally:
        if ansible.poll() is None:
            ansible.kill()
            ansible.wait()
    result = _task_result(stdout, stderr)
    assert result["failed"] is True, result
    assert result["msg"].startswith("postcopy canary interrupted by SIGTERM")
    assert_nothing_left(libvirt, before)
