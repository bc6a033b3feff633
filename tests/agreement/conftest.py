# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the QEMU-agreement suite: root, the test account, the accelerator, no QEMU left behind.

    PYTHONPATH=.build/collections .venv/bin/pytest tests/agreement [--agreement-report=docs/docsite/rst/agreement.rst]
"""

import ctypes
import os
import signal
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.abspath(os.path.join(HERE, "..", "tools"))
for _path in (TOOLS, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import hostctl  # noqa: E402
from agreement_harness import QEMU, RESULTS, kvm_usable, qemu_descendants  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36
_START = []


def pytest_addoption(parser):
    parser.addoption(
        "--agreement-report",
        metavar="PATH",
        default=None,
        help="write the measured condition table as the RST guide to PATH (docs/docsite/rst/agreement.rst)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "kvm: runs QEMU with -accel kvm (skipped where /dev/kvm does not work)")
    _START.append(time.monotonic())
    # QEMUs whose parent dies (a crashed canary) are handed to this process rather than to init,
    # so the check after each test still sees them.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("--agreement-report")
    if not path or not RESULTS["measured"]:
        return
    from agreement_report import render

    text = render(RESULTS["measured"], RESULTS["canary"], time.monotonic() - _START[0], any(k[1] == "kvm" for k in RESULTS["measured"]))
    with open(path, "w") as handle:
        handle.write(text)


@pytest.fixture(scope="session")
def agreement_user():
    """The unprivileged test account; the suite needs root and QEMU."""
    if os.geteuid() != 0:
        pytest.skip("needs root: switches accounts and changes host settings")
    if not os.access(QEMU, os.X_OK):
        pytest.skip("no QEMU at %s (Debian package qemu-system-x86)" % QEMU)
    return hostctl.ensure_test_user()


@pytest.fixture
def accel_ready(accel):
    if accel == "kvm" and not kvm_usable():
        pytest.skip("/dev/kvm does not work here")
    return accel


@pytest.fixture(autouse=True)
def no_qemu_left_behind():
    """After every test: no QEMU below this process (the subreaper catches orphans too)."""
    yield
    left = qemu_descendants()
    for pid, _cmdline in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid, _cmdline in left:
        try:
            os.waitpid(pid, 0)  # a child now, if it was orphaned to us
        except ChildProcessError:
            pass
    assert left == [], "QEMU processes left behind: %s" % left
