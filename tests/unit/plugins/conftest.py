# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for the tests that start real QEMU processes (the QMP client and the canary).

Other test suites may run QEMU on this machine at the same time, so "nothing left behind"
is checked for this test's own QEMUs: those whose command line names its private TMPDIR
(every path the canary gives QEMU lies under it), and unreaped children of this process.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import hostctl
import pytest

# Runs the canary driver in a fresh interpreter (possibly under seccomp_exec.py) and prints its facts.
DRIVER = r"""
import json, sys
from ansible_collections.hypervisor.migration.plugins.module_utils import _canary
facts = _canary.run_canary(_canary.make_settings(**json.loads(sys.argv[1])))
print(json.dumps(facts))
"""


def _cmdline(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _stat_fields(pid):
    """(comm, state, ppid) of a process, None when it is gone."""
    try:
        with open("/proc/%s/stat" % pid) as handle:
            text = handle.read()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    state, ppid = text[text.rindex(")") + 2 :].split()[:2]
    return comm, state, int(ppid)


def qemus_of(directory):
    """Pids of live QEMUs whose command line names directory, and of QEMU children this process has not reaped."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is None or not fields[0].startswith("qemu"):
            continue
        if directory in _cmdline(entry) or fields[2] == os.getpid():
            found.append(int(entry))
    return found


def wait_for_qemus(directory, count, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = qemus_of(directory)
        if len(pids) >= count:
            return pids
        time.sleep(0.01)
    raise AssertionError("%d QEMU processes did not appear under %s" % (count, directory))


@pytest.fixture
def canary_tmp(monkeypatch, tmp_path_factory):
    """A short private TMPDIR for QEMU's sockets and the canary's work dirs.

    Afterwards no QEMU of this test may be alive or unreaped and the directory must be empty;
    leftovers are killed and removed before the assertion, so one failure does not spread.
    """
    # pytest's own tmp_path must not follow TMPDIR into this directory.
    tmp_path_factory.getbasetemp()
    path = tempfile.mkdtemp(prefix="pct-", dir="/tmp")
    os.chmod(path, 0o755)
    monkeypatch.setenv("TMPDIR", path)
    monkeypatch.setattr(tempfile, "tempdir", path)
    yield path
    leftovers = qemus_of(path)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    remaining = os.listdir(path)
    shutil.rmtree(path, ignore_errors=True)
    assert leftovers == [], "QEMU processes left behind: %s" % leftovers
    assert remaining == [], "files left in the canary's TMPDIR: %s" % remaining


def _collections_pythonpath():
    return os.pathsep.join(p for p in sys.path if p and os.path.isdir(os.path.join(p, "ansible_collections")))


def _canary_command(params, deny=(), python=None):
    """argv that runs the canary driver in a new interpreter, under seccomp_exec.py when deny is given."""
    command = [python or sys.executable, "-c", DRIVER, json.dumps(params)]
    if deny:
        wrapper = [sys.executable, hostctl.SECCOMP_EXEC]
        for spec in deny:
            wrapper += ["--deny", spec]
        command = wrapper + ["--"] + command
    return command


def _canary_env(tmpdir):
    return dict(os.environ, TMPDIR=tmpdir, PYTHONPATH=_collections_pythonpath())


@pytest.fixture
def canary_in_process(canary_tmp):
    """Run the canary in a new process (optionally under a seccomp filter); its facts."""

    def run(params, deny=(), python=None):
        proc = subprocess.run(
            _canary_command(params, deny, python), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_canary_env(canary_tmp), timeout=120, check=False
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return json.loads(proc.stdout.decode())

    return run


@pytest.fixture
def canary_spawn(canary_tmp):
    """Start the canary in a new process and wait until both its QEMUs run: (Popen, their pids)."""

    def spawn(params):
        proc = subprocess.Popen(_canary_command(params), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_canary_env(canary_tmp))
        try:
            return proc, wait_for_qemus(canary_tmp, 2)
        except AssertionError:
            proc.kill()
            proc.communicate()
            raise

    return spawn


@pytest.fixture
def canary_qemus(canary_tmp):
    """A function listing this test's QEMU processes still alive or unreaped."""
    return lambda: qemus_of(canary_tmp)
