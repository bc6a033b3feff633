# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The launcher model: what libvirt's version and qemu.conf decide about QEMU's way to userfaultfd.

The model is held to real libvirt and QEMU by the agreement suite (tests/agreement); these tests
pin each rule, and the private /dev is made for real in a probe child.
"""

import os
import stat

import hostctl
import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _launcher
from ansible_collections.hypervisor.migration.plugins.module_utils._private_dev import make_private_dev
from ansible_collections.hypervisor.migration.plugins.module_utils._switch import run_in_child


def settings_from(tmp_path, text, version=(11, 3, 0)):
    conf = tmp_path / "qemu.conf"
    conf.write_text(text)
    settings, errors, state = _launcher.read_libvirt_settings(version, str(conf))
    assert not errors and state == "read"
    return settings


@pytest.mark.parametrize(
    "version, text, expected, blocked_by",
    [
        ((11, 3, 0), "", "libvirt_private_dev", None),
        ((10, 1, 0), "", "libvirt_private_dev", None),
        ((10, 0, 0), "", "none", "libvirt_too_old_for_device"),
        ((9, 0, 0), "", "none", "libvirt_too_old_for_device"),
        ((9, 0, 0), "namespaces = []\n", "none", "libvirt_too_old_for_device"),  # its own default ACL lacks the node
        ((9, 0, 0), 'cgroup_device_acl = ["/dev/null", "/dev/kvm", "/dev/userfaultfd"]\n', "none", "libvirt_too_old_for_device"),
        ((11, 3, 0), "namespaces = []\n", "host_node", None),
        ((11, 3, 0), 'cgroup_device_acl = ["/dev/null", "/dev/kvm"]\n', "none", "device_not_in_cgroup_acl"),
        ((11, 3, 0), 'cgroup_device_acl = [\n  "/dev/null",\n  "/dev/userfaultfd",\n]\n', "libvirt_private_dev", None),
        ((11, 3, 0), 'namespaces = []\ncgroup_device_acl = ["/dev/kvm"]\n', "none", "device_not_in_cgroup_acl"),
        (None, "", "libvirt_private_dev", None),  # an unknown version counts as current
    ],
)
def test_libvirt_decides_the_way_to_the_device(tmp_path, version, text, expected, blocked_by):
    path = _launcher.choose_device_path("libvirt", version, settings_from(tmp_path, text, version), True, True)
    assert (path["kind"], path["blocked_by"]) == (expected, blocked_by), path["reason"]
    assert path["host_grant_helps"] is (expected == "host_node")
    assert path["libvirt_grants"] is (expected == "libvirt_private_dev")


def test_without_a_host_node_or_with_an_old_qemu_there_is_no_device(tmp_path):
    settings = settings_from(tmp_path, "")
    assert _launcher.choose_device_path("libvirt", (11, 3, 0), settings, False, True)["kind"] == "none"
    assert _launcher.choose_device_path("libvirt", (11, 3, 0), settings, True, False)["kind"] == "none"
    assert _launcher.choose_device_path("qemu", None, settings, True, True)["kind"] == "host_node"


def test_settings_say_where_each_value_comes_from(tmp_path):
    settings = settings_from(tmp_path, '# a comment\nuser = "+107"\nnamespaces = [ "mount" ]\nseccomp_sandbox = 0\n')
    assert settings["user"] == {"value": "+107", "source": "%s line 2" % (tmp_path / "qemu.conf")}
    assert settings["seccomp_sandbox"]["value"] == 0
    assert settings["group"] == {"value": None, "source": "compiled default"}
    assert settings["dynamic_ownership"] == {"value": True, "source": "compiled default"}
    assert "/dev/userfaultfd" in settings["cgroup_device_acl"]["value"]
    assert set(settings) == set(_launcher.LIBVIRT_SETTINGS)


def test_a_file_libvirt_refuses_is_an_error_and_no_device(tmp_path):
    conf = tmp_path / "qemu.conf"
    conf.write_text('user = "qemu"\nnamespaces = [ "mount"\n')
    facts = _launcher.launcher_facts("libvirt", True, True, conf_path=str(conf), daemons=())
    assert facts["config"]["errors"] and facts["config"]["errors"][0].startswith(str(conf) + " line ")
    assert facts["device_path"]["kind"] == "none" and facts["device_path"]["blocked_by"] == "libvirt_config"


@pytest.mark.parametrize("name, version", [("libvirt.so.0.11003.0", (11, 3, 0)), ("libvirt.so.0.9000.0", (9, 0, 0)), ("libvirt.so.0.10010.2", (10, 10, 2))])
def test_the_library_name_tells_libvirts_version_without_running_it(tmp_path, name, version):
    (tmp_path / name).write_text("")
    (tmp_path / "libvirt.so.0").symlink_to(name)
    assert _launcher.library_version((str(tmp_path / "missing"), str(tmp_path))) == version


def test_auto_is_libvirt_only_where_its_qemu_daemon_is_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(_launcher.library_version, "__defaults__", ((),))  # no library found: the daemon answers --version
    daemon = tmp_path / "virtqemud"
    assert _launcher.launcher_facts("auto", True, True, conf_path=str(tmp_path / "none.conf"), daemons=(str(daemon),))["kind"] == "qemu"
    daemon.write_text("#!/bin/sh\necho 'virtqemud (libvirt) 10.0.0'\n")
    daemon.chmod(0o755)
    tmp_path.chmod(0o755)
    facts = _launcher.launcher_facts("auto", True, True, conf_path=str(tmp_path / "none.conf"), daemons=(str(daemon),))
    assert (facts["kind"], facts["version"], facts["config"]["state"]) == ("libvirt", "10.0.0", "absent")
    assert facts["device_path"]["blocked_by"] == "libvirt_too_old_for_device"


@pytest.mark.parametrize(
    "lsms, driver, expected",
    [([], "", 0), (["apparmor"], "", 1), (["apparmor"], 'security_driver = "none"\n', 0), (["selinux"], 'security_driver = "apparmor"\n', 0)],
)
def test_an_enforcing_label_is_named_as_not_reproduced(tmp_path, lsms, driver, expected):
    # The host here enforces no LSM: the lists stand in for hosts that do.
    assert len(_launcher.not_reproduced("libvirt", settings_from(tmp_path, driver), lsms)) == expected


def _open_private_node(account):
    node = os.stat("/dev/userfaultfd")

    def prepare():
        make_private_dev(node, account.uid, account.gid)

    def probe():
        info = os.stat("/dev/userfaultfd")
        fd = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
        return {"owner": info.st_uid, "rdev": info.st_rdev, "dev_entries": sorted(os.listdir("/dev"))}

    return run_in_child(probe, account, prepare=prepare)


@pytest.mark.skipif(not os.path.exists("/dev/userfaultfd"), reason="needs a kernel with /dev/userfaultfd (6.1+)")
def test_the_private_node_opens_as_qemus_account_and_the_host_node_is_untouched(root, test_user):
    from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import resolve_account

    account = resolve_account(test_user.pw_name)
    before = os.stat("/dev/userfaultfd")
    with hostctl.device_mode_set(0o600):
        seen = _open_private_node(account)
        host = os.stat("/dev/userfaultfd")
    assert seen == {"owner": account.uid, "rdev": before.st_rdev, "dev_entries": ["userfaultfd"]}
    assert (host.st_uid, host.st_gid, stat.S_IMODE(host.st_mode)) == (before.st_uid, before.st_gid, 0o600)
    assert "userfaultfd" in os.listdir("/dev") and len(os.listdir("/dev")) > 1  # the tmpfs stayed in the child


@pytest.mark.parametrize(
    "launcher, qemu, words",
    [
        (
            {"kind": "libvirt", "version": "11.3.0", "device_path": {"kind": "libvirt_private_dev"}},
            "10.0.7",
            "libvirt 11.3, QEMU 10.0, device via libvirt's private /dev",
        ),
        (
            {"kind": "libvirt", "version": None, "device_path": {"kind": "none"}},
            None,
            "libvirt (version unknown), QEMU (version unknown), no device, syscall only",
        ),
        ({"kind": "qemu", "version": None, "device_path": {"kind": "host_node"}}, "8.2.2", "bare QEMU 8.2, device via the host's /dev/userfaultfd"),
    ],
)
def test_one_phrase_says_launcher_versions_and_device_path(launcher, qemu, words):
    assert _launcher.describe_launcher(launcher, qemu) == words
    assert set(_launcher._DEVICE_PATH_WORDS) == set(_launcher.DEVICE_PATHS)
