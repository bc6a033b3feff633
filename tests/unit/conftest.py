# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures shared by the unit tests: the real host, changed only inside a test and put back."""

import json
import os
import subprocess
import sys

import pytest

TOOLS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "tools"))
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

import hostctl  # noqa: E402

GATHER = os.path.join(TOOLS, "gather_facts.py")


def pytest_configure(config):
    config.addinivalue_line("markers", "root: needs root (account switch, host settings)")


@pytest.fixture(scope="session")
def root():
    if os.geteuid() != 0:
        pytest.skip("needs root: switches accounts and changes host settings")


@pytest.fixture(scope="session")
def test_user(root):
    return hostctl.ensure_test_user()


@pytest.fixture
def qemu9(tmp_path):
    """A QEMU 9.1 stand-in (only --version): Debian 12 cannot install a QEMU that uses /dev/userfaultfd."""
    return hostctl.fake_qemu(tmp_path, "9.1.0")


def gather_in_process(params, deny=(), python=None, user=None, prefix=()):
    """Run the real gather in a new process, optionally under seccomp_exec.py and a prefix command; return its output."""
    command = list(prefix) + [python or sys.executable, GATHER, json.dumps(params)]
    if deny or user:
        wrapper = [sys.executable, hostctl.SECCOMP_EXEC]
        for spec in deny:
            wrapper += ["--deny", spec]
        if user:
            wrapper += ["--user", user]
        command = wrapper + ["--"] + command
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(os.path.join(p, "ansible_collections")))
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.decode())


@pytest.fixture
def gather():
    return gather_in_process
