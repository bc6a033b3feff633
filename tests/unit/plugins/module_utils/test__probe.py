# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The probe against this machine's kernel: as root, as an unprivileged account, under seccomp,
with /dev/userfaultfd opened up, with huge pages reserved. Nothing here is mocked but the
QEMU 9.1 stand-in (``qemu9``), which only answers --version."""

import os
import pwd
import subprocess

import hostctl
import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import QEMU_ACCOUNT_NAMES
from ansible_collections.hypervisor.migration.plugins.module_utils._facts import gather_postcopy_facts
from ansible_collections.hypervisor.migration.plugins.module_utils._ffi import BACKENDS, select_backend
from ansible_collections.hypervisor.migration.plugins.module_utils._launcher import read_libvirt_settings
from ansible_collections.hypervisor.migration.plugins.module_utils._probe import observe

QEMU72 = "/usr/bin/qemu-system-x86_64"


def _account_exists(name):
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def causes_of(facts):
    return sorted((c["feature"], c["cause"]) for c in facts["postcopy"]["causes"])


def comparable(facts):
    """Facts with the two keys allowed to differ between backends removed."""
    details = dict(facts["postcopy"])
    details.pop("backend")
    details.pop("duration_ms")
    return dict(facts, postcopy=details)


@pytest.mark.parametrize("backend", BACKENDS)
def test_root_is_supported(root, backend):
    facts = gather_postcopy_facts({"ffi_backend": backend, "memory_backends": ["anonymous", "shmem"]})
    assert facts["postcopy_supported"] is True
    assert facts["postcopy_missing_features"] == []
    details = facts["postcopy"]
    assert details["backend"] == backend
    assert details["probe_user"]["uid"] == 0
    assert details["access"]["syscall"]["usable"] is True
    assert details["register"]["anonymous"]["ok"] is True
    assert {"WAKE", "COPY", "ZEROPAGE"} <= set(details["register"]["anonymous"]["ioctls"])
    assert details["register"]["shmem"]["ok"] is True
    assert details["cap_sys_ptrace"] is True


def test_qemu_version_decides_which_path_is_used(root, qemu9):
    old = gather_postcopy_facts({"qemu_binary": QEMU72})
    new = gather_postcopy_facts({"qemu_binary": qemu9})
    assert (old["postcopy"]["qemu"]["uses_device"], old["postcopy"]["access"]["used"]) == (False, "syscall")
    assert (new["postcopy"]["qemu"]["version"], new["postcopy"]["access"]["used"]) == ("9.1.0", "device")


@pytest.mark.parametrize("backend", BACKENDS)
def test_account_with_sysctl_0_is_refused_by_the_sysctl(test_user, backend):
    facts = hostctl.steady(lambda: gather_postcopy_facts({"probe_user": test_user.pw_name, "ffi_backend": backend}), sysctl=0)
    assert facts["postcopy_supported"] is False
    assert facts["postcopy_missing_features"] == ["userfaultfd"]
    assert causes_of(facts) == [("userfaultfd", "unprivileged_userfaultfd_sysctl")]
    syscall = facts["postcopy"]["access"]["syscall"]
    assert (syscall["errno"], syscall["user_mode_only_usable"]) == ("EPERM", True)
    assert facts["postcopy"]["probe_user"] == {
        "name": test_user.pw_name,
        "uid": test_user.pw_uid,
        "gid": test_user.pw_gid,
        "source": "option",
        "reason": "probe_user option",
        "switched": True,
        "qemu_account": test_user.pw_name,
    }
    assert facts["postcopy"]["cap_sys_ptrace"] is False


@pytest.mark.parametrize("backend", BACKENDS)
def test_account_with_sysctl_1_is_supported(test_user, backend):
    facts = hostctl.steady(lambda: gather_postcopy_facts({"probe_user": str(test_user.pw_uid), "ffi_backend": backend}), sysctl=1)
    assert facts["postcopy_supported"] is True
    assert facts["postcopy"]["access"]["used"] == "syscall"


def test_open_device_counts_only_for_qemu_8(test_user, qemu9):
    def both():
        return [gather_postcopy_facts({"probe_user": test_user.pw_name, "qemu_binary": q}) for q in (QEMU72, qemu9)]

    old, new = hostctl.steady(both, sysctl=0, mode=0o666)
    assert old["postcopy_supported"] is False
    assert causes_of(old) == [("userfaultfd", "qemu_too_old_for_device"), ("userfaultfd", "unprivileged_userfaultfd_sysctl")]
    assert old["postcopy"]["access"]["device"]["usable"] is True
    assert new["postcopy_supported"] is True
    assert new["postcopy"]["access"]["used"] == "device"


def test_closed_device_is_named_for_qemu_8(test_user, qemu9):
    facts = hostctl.steady(lambda: gather_postcopy_facts({"probe_user": test_user.pw_name, "qemu_binary": qemu9}), sysctl=0, mode=0o600)
    assert causes_of(facts) == [("userfaultfd", "device_permissions"), ("userfaultfd", "unprivileged_userfaultfd_sysctl")]
    device = facts["postcopy"]["access"]["device"]
    assert (device["errno"], device["failed_step"], device["mode"]) == ("EACCES", "open", "0600")


@pytest.mark.parametrize("errno_name", ["EPERM", "ENOSYS"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_seccomp_filter_is_named(root, gather, errno_name, backend):
    out = gather({"ffi_backend": backend, "qemu_binary": QEMU72}, deny=["userfaultfd:" + errno_name])
    facts = out["ansible_facts"]
    assert facts["postcopy_missing_features"] == ["userfaultfd"]
    # Root still opens the device, which QEMU 7.2 never tries: both facts are worth saying.
    assert causes_of(facts) == [("userfaultfd", "qemu_too_old_for_device"), ("userfaultfd", "seccomp")]
    assert facts["postcopy"]["seccomp"] == 2
    assert facts["postcopy"]["access"]["syscall"]["errno"] == errno_name


def test_seccomp_on_the_syscall_leaves_the_device_to_qemu_8(root, gather, qemu9):
    facts = gather({"qemu_binary": qemu9}, deny=["userfaultfd:EPERM"])["ansible_facts"]
    assert facts["postcopy_supported"] is True
    assert facts["postcopy"]["access"]["used"] == "device"


def test_account_under_seccomp_is_blamed_on_seccomp(test_user, gather):
    # The account cannot read root's interpreter; Debian's python3 runs the probe for it.
    def run():
        return gather({"qemu_binary": QEMU72}, deny=["userfaultfd:EPERM"], user=test_user.pw_name, python="/usr/bin/python3")

    facts = hostctl.steady(run, sysctl=1)["ansible_facts"]
    assert causes_of(facts) == [("userfaultfd", "seccomp")]


OLDEST_PYTHON = "/root/.pyenv/versions/3.8.18/bin/python"


def can_import(python, name):
    return subprocess.run([python, "-c", "import " + name], stderr=subprocess.DEVNULL, check=False).returncode == 0


@pytest.mark.parametrize(
    "python, backend",
    [
        # Debian 12's python3 has python3-cffi-backend (cryptography pulls it in) but not cffi itself:
        # the precompiled type table is all the cffi backend needs.
        ("/usr/bin/python3", "cffi"),
        # 3.8, the oldest Python a managed host may run, has neither here: ctypes.
        (OLDEST_PYTHON, "ctypes"),
    ],
)
def test_python_without_the_cffi_package_still_gets_facts(root, gather, python, backend):
    if not os.access(python, os.X_OK):
        pytest.skip("no %s on this machine" % python)
    assert not can_import(python, "cffi")
    assert can_import(python, "_cffi_backend") is (backend == "cffi")
    out = gather({"memory_backends": ["anonymous", "shmem"]}, python=python)
    assert out["ansible_facts"]["postcopy_supported"] is True
    assert out["ansible_facts"]["postcopy"]["backend"] == backend


def test_shmem_is_supported(root):
    facts = gather_postcopy_facts({"memory_backends": ["shmem"]})
    assert facts["postcopy_supported"] is True
    assert facts["postcopy"]["register"]["shmem"]["ok"] is True


def test_hugetlbfs_needs_reserved_pages(root):
    with hostctl.hugepages_set(0):
        bare = gather_postcopy_facts({"memory_backends": ["anonymous", "hugetlbfs"]})
    with hostctl.hugepages_set(4) as granted:
        if granted < 1:
            pytest.skip("the kernel could not reserve a 2 MiB page")
        reserved = gather_postcopy_facts({"memory_backends": ["anonymous", "hugetlbfs"]})
    assert bare["postcopy_missing_features"] == ["hugepages_reserved"]
    assert causes_of(bare) == [("hugepages_reserved", "resource_limit")]
    assert reserved["postcopy_supported"] is True
    assert reserved["postcopy"]["register"]["hugetlbfs"]["sizes"]["2097152"]["ok"] is True
    assert "COPY" in reserved["postcopy"]["register"]["hugetlbfs"]["sizes"]["2097152"]["ioctls"]


def test_target_page_larger_than_host_page(root):
    facts = gather_postcopy_facts({"target_page_size": 65536})
    assert facts["postcopy_missing_features"] == ["target_page_size"]
    assert causes_of(facts) == [("target_page_size", "page_size")]


def test_backends_agree_on_every_condition(test_user, qemu9):
    conditions = [
        {},
        {"memory_backends": ["anonymous", "shmem", "hugetlbfs"]},
        {"probe_user": test_user.pw_name},
        {"probe_user": test_user.pw_name, "qemu_binary": qemu9},
        {"target_page_size": 16384},
    ]
    for params in conditions:
        pair = hostctl.steady(lambda p=params: [gather_postcopy_facts(dict(p, ffi_backend=b)) for b in BACKENDS], sysctl=0, mode=0o600)
        assert comparable(pair[0]) == comparable(pair[1]), params


def _open_fds():
    return sorted(os.listdir("/proc/self/fd"))


def _mappings():
    with open("/proc/self/maps") as maps:
        return len(maps.readlines())


@pytest.mark.parametrize("backend", BACKENDS)
def test_observe_leaks_no_fd_and_no_mapping(root, backend):
    impl = select_backend(backend)
    observe(impl, 4096, ["anonymous", "shmem"], {})
    fds, maps = _open_fds(), _mappings()
    for _run in range(300):
        observe(impl, 4096, ["anonymous", "shmem"], {})
    assert _open_fds() == fds
    assert _mappings() == maps


def test_without_root_the_probe_runs_as_self_and_warns(test_user, gather):
    out = gather({"probe_user": "nobody"}, user=test_user.pw_name, python="/usr/bin/python3")
    who = out["ansible_facts"]["postcopy"]["probe_user"]
    assert (who["name"], who["uid"]) == (test_user.pw_name, test_user.pw_uid)
    assert who["reason"].startswith("asked for nobody")
    assert (who["switched"], who["qemu_account"]) == (False, "nobody")
    assert out["warnings"] == [
        "probed as %s, not as QEMU's account nobody: switching accounts needs root (run with --become)" % test_user.pw_name
    ]


def test_auto_without_a_qemu_account_says_none_was_found(root):
    if read_libvirt_settings(None)[0]["user"]["source"] != "compiled default" or any(_account_exists(name) for name in QEMU_ACCOUNT_NAMES):
        pytest.skip("this machine has a QEMU account")
    who = gather_postcopy_facts({})["postcopy"]["probe_user"]
    assert (who["name"], who["switched"], who["qemu_account"]) == ("root", False, None)


def test_munlockall_denied_is_named_like_qemu_does(root, gather):
    # QEMU 7.2 refuses post-copy when munlockall() fails (tests/agreement shows it); so do we.
    facts = gather({"qemu_binary": QEMU72}, deny=["munlockall:EPERM"])["ansible_facts"]
    assert facts["postcopy_missing_features"] == ["munlockall"]
    assert causes_of(facts) == [("munlockall", "seccomp")]
    assert facts["postcopy"]["memlock"] == {"ok": False, "errno": "EPERM"}


def test_capability_in_a_user_namespace_does_not_count(test_user, gather):
    # A rootless container's root: CAP_SYS_PTRACE in its own namespace, not in the host's.
    def run():
        return gather({"qemu_binary": QEMU72}, user=test_user.pw_name, python="/usr/bin/python3", prefix=["unshare", "--user", "--map-root-user"])

    facts = hostctl.steady(run, sysctl=0)["ansible_facts"]
    assert facts["postcopy"]["user_namespace"] == "nested"
    assert facts["postcopy"]["cap_sys_ptrace"] is False
    assert causes_of(facts) == [("userfaultfd", "unprivileged_userfaultfd_sysctl")]
