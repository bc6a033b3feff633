# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU as the oracle: what it answers to migrate-set-capabilities postcopy-ram.

Real kernel, real QEMU (Debian's 7.2 here).  QEMU < 8.0 answers over QMP
only "Postcopy is not supported" and writes the reason on stderr; QEMU >= 8.0
puts the reason in the QMP error and also tries /dev/userfaultfd first.
"""

import os
import re
import shutil
import time

import pytest
import qemu_oracle  # tests/tools/, put on sys.path by tests/unit/conftest.py
from hostctl import DEVICE, SYSCTL, device_mode, device_mode_set, read_sysctl, sysctl_set
from hostctl import steady as under_host_state
from hvm_tools_helpers import QEMU, child_processes, require_qemu, require_root, wait_for

NOT_SUPPORTED = "Postcopy is not supported"


@pytest.fixture(autouse=True)
def _needs_root_and_qemu():
    require_root()
    require_qemu()


@pytest.fixture(autouse=True)
def _no_leftovers(monkeypatch):
    """Every ask leaves no QEMU process and no private directory behind."""
    made = []
    real_mkdtemp = qemu_oracle.tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        path = real_mkdtemp(*args, **kwargs)
        made.append(path)
        return path

    monkeypatch.setattr(qemu_oracle.tempfile, "mkdtemp", recording_mkdtemp)
    yield made
    assert child_processes() == []
    assert [d for d in made if os.path.exists(d)] == []


def qemu_version():
    return tuple(int(x) for x in ask().qemu_version.split("."))


def ask(**kwargs):
    return qemu_oracle.ask_qemu(qemu_binary=QEMU, **kwargs)


def assert_refused(verdict, *fragments):
    assert not verdict.accepted, verdict
    assert verdict.qmp_error is not None and verdict.qmp_error.startswith(NOT_SUPPORTED), verdict
    for fragment in fragments:
        assert fragment in verdict.message, verdict


# ----------------------------------------------------------------------------
# the conditions


def test_root_is_accepted():
    verdict = ask()
    assert verdict.accepted, verdict
    assert verdict.message is None
    assert verdict.qmp_error is None
    assert re.match(r"^\d+\.\d+\.\d+$", verdict.qemu_version)


def test_user_with_sysctl_0_is_refused(test_user):
    verdict = under_host_state(lambda: ask(user=test_user.pw_name), sysctl=0)
    assert_refused(verdict, "userfaultfd not available", "Operation not permitted")
    if tuple(int(x) for x in verdict.qemu_version.split(".")[:2]) < (8, 0):
        # QEMU 7.2's exact words: QMP says only this, the reason goes to stderr
        assert verdict.qmp_error == "Postcopy is not supported"
        assert verdict.stderr == ("postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted",)


def test_user_with_sysctl_1_is_accepted(test_user):
    verdict = under_host_state(lambda: ask(user=test_user.pw_name), sysctl=1)
    assert verdict.accepted, verdict


def test_sysctl_is_restored_even_on_failure():
    if not os.path.exists(SYSCTL):
        pytest.skip("no %s" % SYSCTL)
    before = read_sysctl()
    with pytest.raises(RuntimeError):
        with sysctl_set(1 - before):
            raise RuntimeError("boom")
    assert wait_for(lambda: read_sysctl() == before)


def test_user_on_source_side_is_not_checked(test_user):
    """QEMU checks userfaultfd only on the destination (-incoming)."""
    verdict = under_host_state(lambda: ask(user=test_user.pw_name, incoming=False), sysctl=0)
    assert verdict.accepted, verdict


def test_user_with_open_device_and_sysctl_0(test_user):
    """QEMU < 8.0 never opens /dev/userfaultfd: a 0666 device does not help it."""
    version = qemu_version()
    verdict = under_host_state(lambda: ask(user=test_user.pw_name), sysctl=0, mode=0o666)
    if version < (8, 0):
        assert_refused(verdict, "userfaultfd not available", "Operation not permitted")
    else:
        assert verdict.accepted, verdict


def test_device_mode_is_restored_even_on_failure():
    if not os.path.exists(DEVICE):
        pytest.skip("no %s" % DEVICE)
    before = device_mode()
    with pytest.raises(RuntimeError):
        with device_mode_set(0o666):
            raise RuntimeError("boom")
    assert wait_for(lambda: device_mode() == before)


@pytest.mark.parametrize(
    "deny,text",
    [
        ("userfaultfd:ENOSYS", "userfaultfd not available: Function not implemented"),
        ("userfaultfd:EPERM", "userfaultfd not available: Operation not permitted"),
        ("userfaultfd:EACCES", "userfaultfd not available: Permission denied"),
        ("userfaultfd:EMFILE", "userfaultfd not available: Too many open files"),
        ("userfaultfd:ENOMEM", "userfaultfd not available: Cannot allocate memory"),
    ],
)
def test_root_under_seccomp_denying_userfaultfd_is_refused(deny, text):
    assert_refused(ask(deny=[deny]), text)


def test_user_with_sysctl_1_under_seccomp_is_refused(test_user):
    verdict = under_host_state(
        lambda: ask(user=test_user.pw_name, deny=["userfaultfd:EPERM"]), sysctl=1)
    assert_refused(verdict, "userfaultfd not available: Operation not permitted")


@pytest.mark.parametrize(
    "request_errno,text",
    [
        ("0xC018AA3F:EINVAL", "UFFDIO_API failed: Invalid argument"),  # UFFDIO_API
        ("0xC018AA3F:ENOMEM", "UFFDIO_API failed: Cannot allocate memory"),
        ("0xC020AA00:EINVAL", "userfault register: Invalid argument"),  # UFFDIO_REGISTER
        ("0x8010AA01:EINVAL", "userfault unregister: Invalid argument"),  # UFFDIO_UNREGISTER
    ],
)
def test_root_with_failing_uffd_ioctl_is_refused(request_errno, text):
    assert_refused(ask(deny_ioctl=[request_errno]), text)


def test_root_with_failing_munlockall_is_refused():
    assert_refused(ask(deny=["munlockall:EPERM"]), "munlockall: Operation not permitted")


def test_wrapped_without_denies_is_still_accepted():
    """The filter itself (Seccomp: 2, no_new_privs) does not change QEMU's answer."""
    assert ask(deny=["perf_event_open:EPERM"]).accepted


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv (util-linux)")
def test_root_without_cap_sys_ptrace_and_sysctl_0_is_refused():
    verdict = under_host_state(
        lambda: ask(prefix=["setpriv", "--bounding-set", "-sys_ptrace", "--"]), sysctl=0)
    assert_refused(verdict, "userfaultfd not available: Operation not permitted")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv (util-linux)")
def test_user_with_ambient_cap_sys_ptrace_and_sysctl_0_is_accepted(test_user):
    name = test_user.pw_name
    prefix = ["setpriv", "--reuid=" + name, "--regid=" + name, "--init-groups",
              "--inh-caps=+sys_ptrace", "--ambient-caps=+sys_ptrace", "--"]
    verdict = under_host_state(lambda: ask(prefix=prefix, dir_owner=name), sysctl=0)
    assert verdict.accepted, verdict


def test_shared_memfd_ram_is_accepted():
    verdict = ask(extra_args=["-object", "memory-backend-memfd,id=ram0,size=64M,share=on",
                              "-machine", "memory-backend=ram0"])
    assert verdict.accepted, verdict


def test_qemu_own_sandbox_does_not_block_userfaultfd():
    """-sandbox on (as libvirt starts QEMU) leaves userfaultfd alone."""
    verdict = ask(extra_args=["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"])
    assert verdict.accepted, verdict


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm")
def test_root_with_kvm_is_accepted():
    assert ask(accel="kvm").accepted


# ----------------------------------------------------------------------------
# the oracle's own behaviour


def test_qemu_that_cannot_start_is_an_error():
    with pytest.raises(qemu_oracle.OracleError, match="before QMP was up: .*memory-backend"):
        ask(deny=["memfd_create:EPERM"],
            extra_args=["-object", "memory-backend-memfd,id=ram0,size=64M",
                        "-machine", "memory-backend=ram0"])


def test_bad_filter_spec_is_an_error():
    with pytest.raises(qemu_oracle.OracleError, match="unknown syscall 'no_such_call'"):
        ask(deny=["no_such_call"])


def test_missing_qemu_is_an_error():
    with pytest.raises(qemu_oracle.OracleError, match="no QEMU at"):
        qemu_oracle.ask_qemu(qemu_binary="/nonexistent/qemu-system-x86_64")


def test_unknown_user_is_an_error():
    with pytest.raises(qemu_oracle.OracleError, match="unknown user"):
        ask(user="no-such-user-hvm")


def test_hang_is_killed_at_the_timeout():
    start = time.monotonic()
    with pytest.raises(qemu_oracle.OracleError, match="did not answer within"):
        # sh sleeps in QEMU's place and never opens the QMP socket
        ask(prefix=["sh", "-c", "exec sleep 60", "sh"], timeout=1)
    assert time.monotonic() - start < 10


def test_cli_reports_verdict_and_exit_status(capsys):
    assert qemu_oracle.main(["--qemu", QEMU]) == 0
    assert "accepted" in capsys.readouterr().out
    assert qemu_oracle.main(["--qemu", QEMU, "--deny", "userfaultfd:ENOSYS", "--json"]) == 1
    out = capsys.readouterr().out
    assert '"accepted": false' in out and "Function not implemented" in out
    assert qemu_oracle.main(["--qemu", "/nonexistent/qemu"]) == 2
