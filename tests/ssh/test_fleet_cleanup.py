# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SSH fleet (tests/tools/sshfleet.py, also bench/'s fleet_ssh and fleet_mitogen figures) leaves
nothing behind: after stop() no sshd or client of it runs, its login account, sudoers drop-in and
directory are gone, and Fleet.leftovers() (what bench reports) says so; while it runs it names them."""

import os
import subprocess

import pytest
from sshfleet import SSHD, Fleet

# Apart from conftest's 127.0.0.x and bench's 127.1.x.x.
ADDRESS = "127.3.0.1"


def test_a_stopped_fleet_leaves_nothing_behind():
    if os.geteuid() != 0:
        pytest.skip("the SSH fleet needs root (accounts, sudoers, sshd)")
    if not os.access(SSHD, os.X_OK):
        pytest.fail("%s is missing: install Debian's openssh-server (./dev.sh setup does)" % SSHD)
    fleet = Fleet({"cleanup": [ADDRESS]})
    try:
        fleet.start()
        env = fleet.env(control_persist="60s")
        # A login that goes through sudo, with an SSH master left running as Ansible's would be.
        ssh = ["ssh", "-i", fleet.client_key, "-p", str(fleet.port)] + env["ANSIBLE_SSH_ARGS"].split() + ["%s@%s" % (fleet.login, ADDRESS)]
        out = subprocess.run(ssh + ["sudo", "-n", "id", "-u"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
        assert out.stdout.decode().strip() == "0", out.stderr.decode()[-500:]
        running = fleet.leftovers()
        assert "account %s" % fleet.login in running and fleet.dir in running and fleet.sudoers in running
        assert any(item.startswith("process ") for item in running)
    finally:
        fleet.stop()
    assert fleet.leftovers() == []
