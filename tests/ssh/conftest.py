# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SSH fleet of these tests (tests/tools/sshfleet.py): one sshd on several loopback addresses,
one address per inventory host, and a second sshd for the host that goes away mid-run."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(os.path.dirname(HERE), "tools")
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

from sshfleet import SSHD, Fleet  # noqa: E402

CALLBACKS = os.path.join(HERE, "callback_plugins")
MAIN_ADDRESSES = ["127.0.0.%d" % n for n in range(2, 9)]
STOPPED_ADDRESS = "127.0.0.9"


@pytest.fixture(scope="module")
def fleet():
    if os.geteuid() != 0:
        pytest.skip("the SSH fleet needs root (accounts, sudoers, sshd)")
    if not os.access(SSHD, os.X_OK):
        pytest.fail("%s is missing: install Debian's openssh-server (./dev.sh setup does)" % SSHD)
    fleet = Fleet({"main": MAIN_ADDRESSES, "stopped": [STOPPED_ADDRESS]})
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()
