# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""errno -> cause mapping. The kernels and policies that cannot exist on this machine (no
CONFIG_USERFAULTFD, SELinux denials, missing ioctls) are described here as observations,
the same dicts the child returns; the real-kernel cases are in test__probe.py."""

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils._diagnose import (
    CAUSES,
    FEATURES,
    REMEDIES,
    access_cause,
    diagnose,
    errno_cause,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._probe import MEMORY_BACKENDS


@pytest.mark.parametrize(
    "errno_name, seccomp, sysctl, cap, user_mode_only, cause",
    [
        ("ENOSYS", 0, None, True, False, "kernel_config"),  # kernel without CONFIG_USERFAULTFD
        ("ENOSYS", 2, None, True, False, "seccomp"),
        ("ENOSYS", 0, 0, False, False, "seccomp"),  # the sysctl exists, so the kernel has it
        ("EPERM", 0, 0, False, True, "unprivileged_userfaultfd_sysctl"),
        ("EPERM", 2, 0, False, True, "unprivileged_userfaultfd_sysctl"),
        ("EPERM", 2, 1, False, False, "seccomp"),
        ("EPERM", 2, 0, False, False, "seccomp"),
        ("EPERM", 0, 0, False, False, "unprivileged_userfaultfd_sysctl"),  # kernel < 5.11: no user-mode-only flag
        ("EPERM", 0, 1, False, False, "lsm"),
        ("EACCES", 0, 1, False, False, "lsm"),
        ("EMFILE", 0, 1, False, False, "resource_limit"),
        ("ENFILE", 0, 1, False, False, "resource_limit"),
        ("ENOMEM", 0, 1, False, False, "resource_limit"),
        ("EINVAL", 0, 1, False, False, "kernel_config"),
    ],
)
def test_access_cause(errno_name, seccomp, sysctl, cap, user_mode_only, cause):
    syscall = {"errno": errno_name, "user_mode_only_usable": user_mode_only}
    assert access_cause(syscall, seccomp, sysctl, cap) == cause


@pytest.mark.parametrize(
    "errno_name, seccomp, cause",
    [
        ("EPERM", 2, "seccomp"),
        ("ENOSYS", 2, "seccomp"),
        ("EACCES", 0, "lsm"),
        ("ENOMEM", 2, "resource_limit"),
        ("EINVAL", 0, "kernel_config"),
        ("EPERM", 0, "kernel_config"),
    ],
)
def test_errno_cause(errno_name, seccomp, cause):
    assert errno_cause(errno_name, seccomp) == cause


def test_every_cause_has_a_one_line_remedy():
    assert set(REMEDIES) == set(CAUSES)
    assert all("\n" not in text and text.endswith(".") for text in REMEDIES.values())


def test_every_memory_backend_reports_feature_ids_and_causes_of_the_tables():
    # Its registration's id, missing_<name> when it needs a kernel feature, and what else the host may lack.
    # Each id a row reports is the kernel's or one of the row's own features, which FEATURES lists.
    kernel = FEATURES[: FEATURES.index("target_page_size") + 1]
    for memory in MEMORY_BACKENDS:
        own = set(memory.features)
        assert own <= set(FEATURES)
        assert memory.feature in own | set(kernel) and (memory.needs is None or "missing_" + memory.name in own)
        lacking = memory.shortfall({})
        assert lacking is None or (lacking[0] in own and lacking[1] in CAUSES)
    assert [m.name for m in MEMORY_BACKENDS if m.shortfall({})] == ["hugetlbfs"]


def _obs(**over):
    obs = {
        "status": {"seccomp": 0, "cap_sys_ptrace": True},
        "access": {
            "device": {"present": True, "usable": True, "errno": None, "failed_step": None},
            "syscall": {"usable": True, "errno": None, "user_mode_only_usable": True},
            "used": "syscall",
        },
        "api": {
            "ok": True,
            "errno": None,
            "step": "handshake",
            "features": ["MISSING_HUGETLBFS", "MISSING_SHMEM"],
            "ioctls": ["REGISTER", "UNREGISTER", "API"],
        },
        "register": {"anonymous": {"ok": True, "errno": None, "step": None, "ioctls": ["WAKE", "COPY", "ZEROPAGE"], "unregister_ok": True}},
    }
    obs.update(over)
    return obs


def _ctx(**over):
    ctx = {
        "sysctl": 0,
        "uses_device": True,
        "qemu_version": "9.1.0",
        "account_name": "qemu",
        "device": {"mode": "0600", "owner": "root", "group": "root"},
        "page_size": 4096,
        "target_page_size": 4096,
        "memory_backends": ["anonymous"],
        "hugepages": {},
    }
    ctx.update(over)
    return ctx


def test_supported_observation_has_no_causes():
    assert diagnose(_obs(), _ctx()) == ([], [])


def test_old_kernel_without_zeropage_and_copy():
    # Linux 4.2-era registration answers: no ZEROPAGE, no COPY (cannot happen on 6.18).
    obs = _obs(register={"anonymous": {"ok": True, "errno": None, "step": None, "ioctls": ["WAKE"], "unregister_ok": True}})
    missing, causes = diagnose(obs, _ctx())
    assert missing == ["uffdio_copy", "uffdio_zeropage"]
    assert {c["cause"] for c in causes} == {"kernel_config"}


def test_api_without_register_ioctls():
    obs = _obs(api={"ok": True, "errno": None, "step": "handshake", "features": [], "ioctls": ["API"]})
    assert diagnose(obs, _ctx())[0] == ["uffdio_register", "uffdio_unregister"]


def test_api_failure_under_seccomp():
    obs = _obs(status={"seccomp": 2, "cap_sys_ptrace": True}, api={"ok": False, "errno": "EPERM", "step": "query"})
    missing, causes = diagnose(obs, _ctx())
    assert (missing, causes[0]["cause"]) == (["uffdio_api"], "seccomp")


def test_shmem_and_hugetlbfs_features_missing_on_an_old_kernel():
    obs = _obs(api={"ok": True, "errno": None, "step": "handshake", "features": [], "ioctls": ["REGISTER", "UNREGISTER", "API"]})
    obs["register"]["shmem"] = {"ok": False, "errno": "EINVAL", "step": "register", "ioctls": []}
    missing, _causes = diagnose(obs, _ctx(memory_backends=["anonymous", "shmem", "hugetlbfs"]))
    assert missing == ["missing_shmem", "missing_hugetlbfs"]


def test_hugepage_register_without_copy():
    obs = _obs()
    obs["register"]["hugetlbfs"] = {"sizes": {"2097152": {"ok": True, "ioctls": ["WAKE"], "unregister_ok": True}}}
    missing, causes = diagnose(obs, _ctx(memory_backends=["hugetlbfs"], hugepages={2097152: {"total": 4, "free": 4}}))
    assert missing == ["hugetlbfs_register"]
    assert "COPY" in causes[0]["detail"]


def test_busy_hugepages_are_not_a_defect():
    obs = _obs()
    obs["register"]["hugetlbfs"] = {"sizes": {"2097152": {"ok": None, "step": "skipped", "errno": None, "ioctls": []}}}
    assert diagnose(obs, _ctx(memory_backends=["hugetlbfs"], hugepages={2097152: {"total": 4, "free": 0}})) == ([], [])


def test_unregister_failure():
    obs = _obs(register={"anonymous": {"ok": True, "errno": "EINVAL", "step": "unregister", "ioctls": ["WAKE", "COPY", "ZEROPAGE"], "unregister_ok": False}})
    assert diagnose(obs, _ctx())[0] == ["uffdio_unregister"]


def test_missing_features_follow_the_documented_order():
    obs = _obs(access=dict(_obs()["access"], used=None, syscall={"errno": "EPERM", "usable": False, "user_mode_only_usable": True}))
    missing, _causes = diagnose(obs, _ctx(target_page_size=65536))
    assert missing == ["userfaultfd", "target_page_size"]
    assert missing == [f for f in FEATURES if f in missing]


def test_sysctl_is_offered_for_an_old_qemu_only_when_it_is_the_cause():
    device = {"present": True, "usable": True, "errno": None, "failed_step": None}
    ctx = _ctx(uses_device=False, qemu_version="7.2.22")
    by_sysctl = _obs(
        status={"seccomp": 0, "cap_sys_ptrace": False},
        access={"device": device, "syscall": {"usable": False, "errno": "EPERM", "user_mode_only_usable": True}, "used": None},
    )
    by_filter = _obs(
        status={"seccomp": 2, "cap_sys_ptrace": True},
        access={"device": device, "syscall": {"usable": False, "errno": "EPERM", "user_mode_only_usable": False}, "used": None},
    )
    old_qemu = [c for c in diagnose(by_sysctl, ctx)[1] + diagnose(by_filter, ctx)[1] if c["cause"] == "qemu_too_old_for_device"]
    assert "vm.unprivileged_userfaultfd=1" in old_qemu[0]["remedy"]
    assert old_qemu[1]["remedy"] == "Upgrade QEMU to 8.0+, which opens /dev/userfaultfd (usable here) first."
