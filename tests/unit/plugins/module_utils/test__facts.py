# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gather_postcopy_facts says so when libvirt's private /dev could not be reproduced."""

from ansible_collections.hypervisor.migration.plugins.module_utils import _facts


def test_a_private_dev_that_cannot_be_made_is_warned_once(monkeypatch, tmp_path):
    # This host has no libvirt: its launcher facts stand in for a libvirt 11 host's, and the
    # device node libvirt would copy is a path that does not exist.
    real_launcher_facts = _facts.launcher_facts

    def libvirt_host(*args):
        facts = real_launcher_facts(*args)
        facts["device_path"] = {"kind": "libvirt_private_dev", "reason": "stand-in"}
        return facts

    missing = str(tmp_path / "userfaultfd")
    monkeypatch.setattr(_facts, "launcher_facts", libvirt_host)
    monkeypatch.setattr(_facts, "DEVICE_PATH", missing)
    warnings = []
    facts = _facts.gather_postcopy_facts({"probe_user": "root"}, warnings.append)
    device_path = facts["postcopy"]["launcher"]["device_path"]
    assert device_path["reproduced"] is False
    assert missing in device_path["error"]
    assert len(warnings) == 1
    assert "could not be reproduced" in warnings[0] and missing in warnings[0]


def test_no_warning_where_libvirt_gives_no_private_dev():
    warnings = []
    facts = _facts.gather_postcopy_facts({"probe_user": "root", "launcher": "qemu"}, warnings.append)
    assert facts["postcopy"]["launcher"]["device_path"]["kind"] != "libvirt_private_dev"
    assert warnings == []
