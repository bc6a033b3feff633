# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fault matrix: every way the probe's host can fail it, injected for real, and the module's answer.

One row per fault: what fails, how the fault is put in place on this machine's kernel, the
module options, and the one defined outcome: ``supported``/``unsupported`` with the missing
features and causes, ``fails`` with a one-line message, or (two rows) the interpreter dying
before any module code runs. Never a traceback, never a hang, nothing left running.
How each kind of injection works is in fault_kit.py. Rows marked ``ansible=True`` also run
through ansible-playbook, one host each, all in one play next to a healthy host.

docs/reliability.md carries this table: ``python tests/unit/reliability/test_fault_matrix.py``
prints it.
"""

import os
import signal
import subprocess
import sys
import time

import hostctl
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fault_kit import (  # noqa: E402
    QEMU72,
    Child,
    F,
    Process,
    Special,
    canary_done,
    canary_refused,
    child,
    deny,
    deny_device_open,
    deny_ioctl,
    deny_page_mmap,
    fails,
    interpreter_dies,
    note,
    process,
    supported,
    unsupported,
)

Q72 = {"qemu_binary": QEMU72}  # Debian's QEMU 7.2: the syscall only
Q9 = {"qemu_binary": "{qemu9}"}  # a QEMU 9.1 stand-in: /dev/userfaultfd first, then the syscall
SHM = {"memory_backends": ["anonymous", "shmem"]}
AS_USER = {"probe_user": "{user}"}
FAST = {"timeout": 1}
SWITCH_FAILED = r"^could not probe userfaultfd: probe failed: could not switch to account {user} \(uid \d+\): "
MIB = 1024 * 1024
# TCG: KVM start-up is slow under this machine's nested virtualisation; the migration is the same.
CANARY = {"accel": "tcg", "memory_mb": 64, "timeout": 60}
# Debian's QEMU 7.2 as destination calls userfaultfd() twice to check the capability, the third
# time when the source switches it to post-copy: faults aimed there land mid-migration.
AT_POSTCOPY_START = "--nth", "3"


def fallback(err, step):
    """QEMU >= 8 falls back from the device to the syscall, and so does the verdict."""
    return supported(access__used="syscall", access__device__errno=err, access__device__failed_step=step)


def no_userfaultfd(*causes):
    return unsupported(["userfaultfd"], *("userfaultfd:" + cause for cause in causes))


def no_register(cause):
    """Neither the anonymous nor the shared page could be registered."""
    return unsupported(["uffdio_register", "shmem_register"], "uffdio_register:" + cause, "shmem_register:" + cause)


def only(feature, cause):
    return unsupported([feature], "%s:%s" % (feature, cause))


OLD = "qemu_too_old_for_device"  # the device works as root, but QEMU 7.2 never opens it
IOC_NEW = "USERFAULTFD_IOC_NEW"


def o(*presets):
    merged = {}
    for preset in presets:
        merged.update(preset)
    return merged


FAULTS = [
    # --- userfaultfd(2) ------------------------------------------------------------------------------------------------------
    F("userfaultfd EPERM", child(deny("userfaultfd", "EPERM")), Q72, no_userfaultfd("seccomp", OLD)),
    F("userfaultfd ENOSYS", child(deny("userfaultfd", "ENOSYS")), Q72, no_userfaultfd("seccomp", OLD)),
    F("userfaultfd EACCES", child(deny("userfaultfd", "EACCES")), Q72, no_userfaultfd("lsm", OLD)),
    F("userfaultfd EINVAL", child(deny("userfaultfd", "EINVAL")), Q72, no_userfaultfd("kernel_config", OLD)),
    F("userfaultfd EMFILE", child(deny("userfaultfd", "EMFILE")), Q72, no_userfaultfd("resource_limit", OLD)),
    F("userfaultfd ENFILE", child(deny("userfaultfd", "ENFILE")), Q72, no_userfaultfd("resource_limit", OLD)),
    F("userfaultfd ENOMEM", child(deny("userfaultfd", "ENOMEM")), Q72, no_userfaultfd("resource_limit", OLD)),
    F("userfaultfd EPERM, device usable", child(deny("userfaultfd", "EPERM")), Q9, supported(access__used="device", access__syscall__errno="EPERM")),
    F("userfaultfd EPERM, whole module", process("seccomp_exec", "--deny", "userfaultfd:EPERM"), Q72,
      unsupported(["userfaultfd"], "userfaultfd:seccomp", "userfaultfd:" + OLD, seccomp=2), ansible=True),
    # --- open("/dev/userfaultfd", O_RDWR|O_CLOEXEC): QEMU >= 8 falls back to the syscall, and so does the verdict --------------
    F("device open EACCES", child(deny_device_open("EACCES")), Q9, fallback("EACCES", "open")),
    F("device open EPERM", child(deny_device_open("EPERM")), Q9, fallback("EPERM", "open")),
    F("device open ENOENT", child(deny_device_open("ENOENT")), Q9, fallback("ENOENT", "open")),
    F("device open ENXIO", child(deny_device_open("ENXIO")), Q9, fallback("ENXIO", "open")),
    F("device open ENODEV", child(deny_device_open("ENODEV")), Q9, fallback("ENODEV", "open")),
    F("device open EMFILE", child(deny_device_open("EMFILE")), Q9, fallback("EMFILE", "open")),
    F("device open ENFILE", child(deny_device_open("ENFILE")), Q9, fallback("ENFILE", "open")),
    F("device open ENOMEM", child(deny_device_open("ENOMEM")), Q9, fallback("ENOMEM", "open")),
    F("device open EACCES and userfaultfd EPERM", child(deny_device_open("EACCES"), deny("userfaultfd", "EPERM")), Q9,
      no_userfaultfd("seccomp", "device_permissions")),
    # --- ioctl(USERFAULTFD_IOC_NEW) on the device -------------------------------------------------------------------------------
    F("USERFAULTFD_IOC_NEW EINVAL", child(deny_ioctl(IOC_NEW, "EINVAL")), Q9, fallback("EINVAL", "ioctl")),
    F("USERFAULTFD_IOC_NEW EMFILE", child(deny_ioctl(IOC_NEW, "EMFILE")), Q9, fallback("EMFILE", "ioctl")),
    F("USERFAULTFD_IOC_NEW ENFILE", child(deny_ioctl(IOC_NEW, "ENFILE")), Q9, fallback("ENFILE", "ioctl")),
    F("USERFAULTFD_IOC_NEW ENOMEM", child(deny_ioctl(IOC_NEW, "ENOMEM")), Q9, fallback("ENOMEM", "ioctl")),
    F("USERFAULTFD_IOC_NEW ENOTTY", child(deny_ioctl(IOC_NEW, "ENOTTY")), Q9, fallback("ENOTTY", "ioctl")),
    F("USERFAULTFD_IOC_NEW EPERM", child(deny_ioctl(IOC_NEW, "EPERM")), Q9, fallback("EPERM", "ioctl")),
    F("USERFAULTFD_IOC_NEW EACCES", child(deny_ioctl(IOC_NEW, "EACCES")), Q9, fallback("EACCES", "ioctl")),
    F("USERFAULTFD_IOC_NEW and userfaultfd EMFILE", child(deny_ioctl(IOC_NEW, "EMFILE"), deny("userfaultfd", "EMFILE")), Q9, no_userfaultfd("resource_limit")),
    # --- ioctl(UFFDIO_API) -------------------------------------------------------------------------------------------------------
    F("UFFDIO_API EINVAL", child(deny_ioctl("UFFDIO_API", "EINVAL")), Q72, only("uffdio_api", "kernel_config")),
    F("UFFDIO_API EFAULT", child(deny_ioctl("UFFDIO_API", "EFAULT")), Q72, only("uffdio_api", "kernel_config")),
    F("UFFDIO_API ENOTTY", child(deny_ioctl("UFFDIO_API", "ENOTTY")), Q72, only("uffdio_api", "kernel_config")),
    F("UFFDIO_API EPERM", child(deny_ioctl("UFFDIO_API", "EPERM")), Q72, only("uffdio_api", "seccomp")),
    F("UFFDIO_API ENOSYS", child(deny_ioctl("UFFDIO_API", "ENOSYS")), Q72, only("uffdio_api", "seccomp")),
    F("UFFDIO_API EACCES", child(deny_ioctl("UFFDIO_API", "EACCES")), Q72, only("uffdio_api", "lsm")),
    F("UFFDIO_API ENOMEM", child(deny_ioctl("UFFDIO_API", "ENOMEM")), Q72, only("uffdio_api", "resource_limit")),
    F("UFFDIO_API EINVAL, whole module", process("seccomp_exec", "--deny-ioctl", "0xC018AA3F:EINVAL"), Q72,
      only("uffdio_api", "kernel_config"), ansible=True),
    # --- ioctl(UFFDIO_REGISTER): one anonymous page, one shared memfd page -----------------------------------------------------
    F("UFFDIO_REGISTER EINVAL", child(deny_ioctl("UFFDIO_REGISTER", "EINVAL")), o(Q72, SHM), no_register("kernel_config")),
    F("UFFDIO_REGISTER EBUSY", child(deny_ioctl("UFFDIO_REGISTER", "EBUSY")), o(Q72, SHM), no_register("kernel_config")),
    F("UFFDIO_REGISTER EFAULT", child(deny_ioctl("UFFDIO_REGISTER", "EFAULT")), o(Q72, SHM), no_register("kernel_config")),
    F("UFFDIO_REGISTER ESRCH", child(deny_ioctl("UFFDIO_REGISTER", "ESRCH")), o(Q72, SHM), no_register("kernel_config")),
    F("UFFDIO_REGISTER ENOMEM", child(deny_ioctl("UFFDIO_REGISTER", "ENOMEM")), o(Q72, SHM), no_register("resource_limit")),
    F("UFFDIO_REGISTER EPERM", child(deny_ioctl("UFFDIO_REGISTER", "EPERM")), o(Q72, SHM), no_register("seccomp")),
    # --- ioctl(UFFDIO_UNREGISTER) --------------------------------------------------------------------------------------------------
    F("UFFDIO_UNREGISTER EINVAL", child(deny_ioctl("UFFDIO_UNREGISTER", "EINVAL")), Q72, only("uffdio_unregister", "kernel_config")),
    F("UFFDIO_UNREGISTER EFAULT", child(deny_ioctl("UFFDIO_UNREGISTER", "EFAULT")), Q72, only("uffdio_unregister", "kernel_config")),
    F("UFFDIO_UNREGISTER ESRCH", child(deny_ioctl("UFFDIO_UNREGISTER", "ESRCH")), Q72, only("uffdio_unregister", "kernel_config")),
    F("UFFDIO_UNREGISTER ENOMEM", child(deny_ioctl("UFFDIO_UNREGISTER", "ENOMEM")), Q72, only("uffdio_unregister", "resource_limit")),
    # --- mmap() of the page to register -------------------------------------------------------------------------------------------
    F("mmap ENOMEM", child(deny_page_mmap("ENOMEM")), o(Q72, SHM), no_register("resource_limit")),
    F("mmap EAGAIN", child(deny_page_mmap("EAGAIN")), o(Q72, SHM), no_register("resource_limit")),
    F("mmap ENFILE", child(deny_page_mmap("ENFILE")), o(Q72, SHM), no_register("resource_limit")),
    F("mmap EPERM", child(deny_page_mmap("EPERM")), o(Q72, SHM), no_register("seccomp")),
    F("mmap EACCES", child(deny_page_mmap("EACCES")), o(Q72, SHM), no_register("lsm")),
    F("mmap EINVAL", child(deny_page_mmap("EINVAL")), o(Q72, SHM), no_register("kernel_config")),
    F("mmap ENODEV", child(deny_page_mmap("ENODEV")), o(Q72, SHM), no_register("kernel_config")),
    # --- memfd_create() for the shared-memory page ------------------------------------------------------------------------------
    F("memfd_create EMFILE", child(deny("memfd_create", "EMFILE")), o(Q72, SHM), only("shmem_register", "resource_limit")),
    F("memfd_create ENFILE", child(deny("memfd_create", "ENFILE")), o(Q72, SHM), only("shmem_register", "resource_limit")),
    F("memfd_create ENOMEM", child(deny("memfd_create", "ENOMEM")), o(Q72, SHM), only("shmem_register", "resource_limit")),
    F("memfd_create EPERM", child(deny("memfd_create", "EPERM")), o(Q72, SHM), only("shmem_register", "seccomp")),
    F("memfd_create ENOSYS", child(deny("memfd_create", "ENOSYS")), o(Q72, SHM), only("shmem_register", "seccomp")),
    F("memfd_create EINVAL", child(deny("memfd_create", "EINVAL")), o(Q72, SHM), only("shmem_register", "kernel_config")),
    F("memfd_create EFAULT", child(deny("memfd_create", "EFAULT")), o(Q72, SHM), only("shmem_register", "kernel_config")),
    # --- the switch to probe_user: never probe as anyone else -------------------------------------------------------------------
    F("setgroups EPERM", child(deny("setgroups", "EPERM"), at="switch"), AS_USER, fails(SWITCH_FAILED + "Operation not permitted$")),
    F("setgroups EINVAL", child(deny("setgroups", "EINVAL"), at="switch"), AS_USER, fails(SWITCH_FAILED + "Invalid argument$")),
    F("setgroups ENOMEM", child(deny("setgroups", "ENOMEM"), at="switch"), AS_USER, fails(SWITCH_FAILED + "Cannot allocate memory$")),
    F("setgid EPERM", child(deny("setgid", "EPERM"), at="switch"), AS_USER, fails(SWITCH_FAILED + "Operation not permitted$")),
    F("setgid EINVAL", child(deny("setgid", "EINVAL"), at="switch"), AS_USER, fails(SWITCH_FAILED + "Invalid argument$")),
    F("setuid EPERM", child(deny("setuid", "EPERM"), at="switch"), AS_USER, fails(SWITCH_FAILED + "Operation not permitted$")),
    F("setuid EINVAL", child(deny("setuid", "EINVAL"), at="switch"), AS_USER, fails(SWITCH_FAILED + "Invalid argument$")),
    F("setuid EAGAIN", child(deny("setuid", "EAGAIN"), at="switch"), AS_USER, fails(SWITCH_FAILED + "Resource temporarily unavailable$")),
    F("setuid succeeds without acting", child(deny("setuid", "0"), at="switch"), AS_USER, fails(SWITCH_FAILED + r"credentials are uid 0/0 ")),
    F("setgid succeeds without acting", child(deny("setgid", "0"), at="switch"), AS_USER, fails(SWITCH_FAILED + r"credentials are uid \d+/\d+ gid 0/0 ")),
    F("setgroups succeeds without acting", child(deny("setgroups", "0"), at="switch", groups=[0]), AS_USER,
      fails(SWITCH_FAILED + r"supplementary groups are \[0\] after the switch$")),
    # --- resource limits -------------------------------------------------------------------------------------------------------------
    F("RLIMIT_NOFILE, no free fd", child(nofile_free=0), Q72,
      unsupported(["userfaultfd"], "userfaultfd:resource_limit", access__syscall__errno="EMFILE")),
    F("RLIMIT_NOFILE, one free fd", child(nofile_free=1), o(Q72, SHM), only("shmem_register", "resource_limit")),
    F("RLIMIT_NOFILE, two free fds", child(nofile_free=2), o(Q9, SHM), supported(access__used="device")),
    F("RLIMIT_NOFILE=5", process("fault_exec", "--rlimit", "NOFILE=5"), Q9, supported(access__used="syscall", access__device__errno="EMFILE"), ansible=True),
    F("RLIMIT_NOFILE=4, python -S", process("fault_exec", "--rlimit", "NOFILE=4", python_flags=["-S"]), Q72,
      fails(r"^could not probe userfaultfd: could not start the probe child: pipe\(\): Too many open files$")),
    F("RLIMIT_NOFILE=4", process("fault_exec", "--rlimit", "NOFILE=4"), Q72, interpreter_dies(r"Too many open files"), ansible=True),
    F("RLIMIT_AS, no room", child(as_room=0), o(Q72, SHM), no_register("resource_limit")),
    F("RLIMIT_AS, one page of room", child(as_room=4096), o(Q72, SHM), supported()),
    F("RLIMIT_AS=8 MiB", process("fault_exec", "--rlimit", "AS=%d" % (8 * MIB)), Q72, interpreter_dies(r"failed to map segment|MemoryError"), ansible=True),
    F("fork EAGAIN", process("seccomp_exec", "--deny", "clone:EAGAIN", "--deny", "clone3:EAGAIN"), Q72,
      fails(r"^could not probe userfaultfd: could not start the probe child: fork\(\): Resource temporarily unavailable$"), ansible=True),
    F("fork ENOMEM", process("seccomp_exec", "--deny", "clone:ENOMEM", "--deny", "clone3:ENOMEM"), Q72,
      fails(r"^could not probe userfaultfd: could not start the probe child: fork\(\): Cannot allocate memory$")),
    F("pipe EMFILE", process("seccomp_exec", "--deny", "pipe2:EMFILE"), Q72,
      fails(r"^could not probe userfaultfd: could not start the probe child: pipe\(\): Too many open files$")),
    F("pipe ENFILE", process("seccomp_exec", "--deny", "pipe2:ENFILE"), Q72,
      fails(r"^could not probe userfaultfd: could not start the probe child: pipe\(\): Too many open files in system$")),
    F("module holds 1100 fds", process("fault_exec", "--rlimit", "NOFILE=4096", "--hold-fds", "1100"), Q72, supported()),
    # --- the probe child crashes or hangs -------------------------------------------------------------------------------------------
    F("probe child SIGKILL", process("fault_exec", "--on", "userfaultfd=kill"), FAST,
      fails(r"^could not probe userfaultfd: probe child was killed by signal SIGKILL without a result$"), ansible=True),
    F("probe child SIGSEGV", process("fault_exec", "--on", "userfaultfd=segv"), FAST,
      fails(r"^could not probe userfaultfd: probe child was killed by signal SIGSEGV without a result$"), ansible=True),
    F("probe child SIGABRT", process("fault_exec", "--on", "userfaultfd=abrt"), FAST,
      fails(r"^could not probe userfaultfd: probe child was killed by signal SIGABRT without a result$")),
    F("probe child stopped (SIGSTOP)", process("fault_exec", "--on", "userfaultfd=stop"), FAST,
      fails(r"^could not probe userfaultfd: probe did not finish within 1 seconds and was killed$")),
    F("probe child hangs in userfaultfd()", process("fault_exec", "--on", "userfaultfd=hang"), FAST,
      fails(r"^could not probe userfaultfd: probe did not finish within 1 seconds and was killed$"), ansible=True),
    F("probe child closes its pipe, then hangs", child(act="close_and_hang"), FAST,
      fails(r"^could not probe userfaultfd: probe did not finish within 1 seconds and was killed$")),
    F("module killed while the probe hangs",
      Special("test_alarm_guard_ends_an_orphaned_probe", "`fault_exec.py --on userfaultfd=hang`, then SIGKILL to the module"),
      {"timeout": 2}, note("the orphaned child dies of its SIGALRM guard at timeout + 1 s; nothing is left running")),
    # --- the filesystem -------------------------------------------------------------------------------------------------------------
    F("/tmp read-only", process("fault_exec", "--ro", "/tmp"), Q72, supported(), ansible=True),
    F("/proc/sys/vm hidden", process("fault_exec", "--hide", "/proc/sys/vm"), Q72, supported(sysctl={"vm.unprivileged_userfaultfd": None})),
    F("/proc/sys/vm hidden, account refused by the sysctl", process("fault_exec", "--hide", "/proc/sys/vm"), o(Q72, AS_USER),
      unsupported(["userfaultfd"], "userfaultfd:unprivileged_userfaultfd_sysctl"), host={"sysctl": 0, "mode": 0o600}),
    F("/dev/userfaultfd a regular file", process("fault_exec", "--uffd-node", "file"), Q9,
      supported(access__used="syscall", access__device__errno="ENODEV", access__device__failed_step="type", access__device__char_device=False),
      ansible=True),
    F("/dev/userfaultfd another char device", process("fault_exec", "--uffd-node", "null"), Q9,
      supported(access__used="syscall", access__device__errno="ENODEV", access__device__failed_step="type")),
    F("/dev/userfaultfd a symlink to the device", process("fault_exec", "--uffd-node", "symlink:userfaultfd-real"), Q9, supported(access__used="device")),
    F("/dev/userfaultfd a symlink to /dev/null", process("fault_exec", "--uffd-node", "symlink:null"), Q9,
      supported(access__used="syscall", access__device__errno="ENODEV", access__device__failed_step="type")),
    F("/dev/userfaultfd a dangling symlink", process("fault_exec", "--uffd-node", "symlink:nowhere"), Q9,
      supported(access__used="syscall", access__device__present=False)),
    F("/dev/userfaultfd absent", process("fault_exec", "--uffd-node", "absent"), Q9, supported(access__used="syscall", access__device__present=False)),
    # --- the canary: two real QEMUs migrating; every way out must leave nothing running or on disk --------------------------------
    F("canary: destination refuses post-copy", process("seccomp_exec", "--deny", "userfaultfd:EPERM", module="canary"), CANARY,
      canary_refused(r"^Postcopy is not supported")),
    F("canary: destination QEMU killed as post-copy starts",
      process("fault_exec", "--on", "userfaultfd=kill", *AT_POSTCOPY_START, module="canary"), CANARY, canary_refused(r".")),
    F("canary: destination QEMU hangs as post-copy starts, timeout fires",
      process("fault_exec", "--on", "userfaultfd=hang", *AT_POSTCOPY_START, module="canary"), dict(CANARY, timeout=5),
      canary_refused(r"^timed out after 5 s ")),
    F("canary: source QEMU killed mid-migration",
      Special("test_canary_source_killed_mid_migration", "destination held at its post-copy start, SIGKILL to the source QEMU"),
      CANARY, canary_refused(r".")),
    F("canary: module gets SIGTERM mid-migration",
      Special("test_canary_module_terminated_mid_migration", "destination held at its post-copy start, SIGTERM to the module"),
      CANARY, fails(r"^postcopy canary interrupted by SIGTERM; both QEMU processes were killed and the work directory removed$")),
    F("canary: module killed (SIGKILL) mid-migration",
      Special("test_canary_module_killed_mid_migration", "destination held at its post-copy start, SIGKILL to the module"),
      CANARY, note("both QEMUs die with the module (parent-death signal); only the private 0700 work dir `postcopy-canary-*` stays, as documented")),
    F("canary: five at once on 2 CPUs", Special("test_five_canaries_at_once", "five canary module processes started together"), CANARY, canary_done()),
]

CHILD_ROWS = [f for f in FAULTS if isinstance(f.inject, Child)]
PROCESS_ROWS = [f for f in FAULTS if isinstance(f.inject, Process)]
ANSIBLE_ROWS = [f for f in FAULTS if f.ansible]


def ids(rows):
    return [f.name for f in rows]


# ------------------------------------------------------------------------------------------------------------------------------
# the tests

import fault_kit  # noqa: E402


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: the probe switches accounts, faults use mount namespaces")
    if not os.access(QEMU72, os.X_OK):
        pytest.skip("no Debian QEMU 7.2 at %s" % QEMU72)
    qemu_dir = tmp_path_factory.mktemp("qemu9")
    return {"qemu9": hostctl.fake_qemu(qemu_dir, "9.1.0"), "user": hostctl.ensure_test_user().pw_name}


def test_rows_are_unique_and_documented():
    assert len(set(ids(FAULTS))) == len(FAULTS)
    # The table lives in docs/reliability.md, or in the README once merged there.
    texts = []
    for name in ("docs/reliability.md", "README.md"):
        path = os.path.join(fault_kit.REPO, name)
        if os.path.exists(path):
            with open(path) as doc:
                texts.append(doc.read())
    assert any(fault_kit.markdown(FAULTS) in text for text in texts), "the matrix in docs/reliability.md is stale: run python %s" % __file__


@pytest.mark.parametrize("fault", CHILD_ROWS, ids=ids(CHILD_ROWS))
def test_fault_in_the_probe_child(fault, ctx, capsys, monkeypatch):
    fault_kit.install_in_child(monkeypatch, fault.inject)
    expect = fault.expect._replace(pattern=fault.expect.pattern and fault.expect.pattern.format(**ctx))
    answer = fault_kit.run_module_here(capsys, fault_kit.format_options(fault.options, ctx))
    fault_kit.check(expect, answer)
    assert hostctl.child_pids() == []


def _under_host_state(fault, func):
    if not fault.host:
        return func()
    return hostctl.steady(func, **fault.host)


@pytest.mark.parametrize("fault", PROCESS_ROWS, ids=ids(PROCESS_ROWS))
def test_fault_around_the_module_process(fault, ctx, tmp_path):
    options = fault_kit.format_options(fault.options, ctx)
    start = time.monotonic()
    run = _under_host_state(fault, lambda: fault_kit.run_module_process(fault.inject, options, str(tmp_path)))
    fault_kit.check(fault.expect, run.answer, run.stderr)
    assert "Traceback" not in run.stderr or fault.expect.kind == "interpreter", run.stderr
    if run.events:
        # fault_exec.py saw every process under its filter exit and reaped them: none was left behind.
        assert run.events[-1]["event"] == "idle", run.events
    assert run.left_files == [] and run.left_processes == []
    assert time.monotonic() - start < options.get("timeout", 10) + 10


def test_alarm_guard_ends_an_orphaned_probe(ctx, tmp_path):
    """The module dies while its probe child hangs: the child's own alarm ends it at timeout + 1 s."""
    log = tmp_path / "events.jsonl"
    spec = fault_kit.process("fault_exec", "--on", "userfaultfd=hang")
    args = tmp_path / "args.json"
    args.write_text('{"ANSIBLE_MODULE_ARGS": {"timeout": 2}}')
    env = dict(os.environ, PYTHONPATH=fault_kit.collections_path())
    supervisor = subprocess.Popen(fault_kit.wrapper_argv(spec, str(log)) + [fault_kit.MODULE, str(args)], env=env, stdout=subprocess.DEVNULL)
    try:
        probe = _wait_for_notify(log)
        with open("/proc/%d/stat" % probe) as stat:
            module_pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        os.kill(module_pid, signal.SIGKILL)
        killed = time.time()
        assert supervisor.wait(timeout=10) == 128 + signal.SIGKILL
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    events = fault_kit.read_events(str(log))
    orphan = [e for e in events if e["event"] == "exit" and e["pid"] == probe]
    assert orphan and orphan[0]["how"] == "signal SIGALRM", events
    assert orphan[0]["time"] - killed < 2 + 1 + 1
    assert events[-1]["event"] == "idle"


def _wait_for_notify(log, seconds=10):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        events = fault_kit.read_events(str(log))
        if events:
            return events[0]["pid"]
        time.sleep(0.05)
    raise AssertionError("the probe never called userfaultfd")


# ------------------------------------------------------------------------------------------------------------------------------
# the canary, acted on while it runs


def _row(name):
    return next(f for f in FAULTS if f.name == name)


def _held_canary(tmp_path):
    """A canary whose destination QEMU is held in userfaultfd() as post-copy starts: mid-migration, for as long as needed."""
    spec = fault_kit.process("fault_exec", "--on", "userfaultfd=hang", *AT_POSTCOPY_START, module="canary")
    canary = fault_kit.Background(spec, CANARY, str(tmp_path))
    held = canary.wait_event(3)
    assert held["comm"].startswith("qemu-system"), held
    return canary


def test_canary_source_killed_mid_migration(ctx, tmp_path):
    canary = _held_canary(tmp_path)
    os.kill(canary.qemu_pid("source"), signal.SIGKILL)
    run = canary.finish()
    fault_kit.check(_row("canary: source QEMU killed mid-migration").expect, run.answer)
    assert run.left_files == [] and run.left_processes == [] and run.events[-1]["event"] == "idle"


def test_canary_module_terminated_mid_migration(ctx, tmp_path):
    canary = _held_canary(tmp_path)
    os.kill(canary.module_pid(), signal.SIGTERM)
    run = canary.finish()
    fault_kit.check(_row("canary: module gets SIGTERM mid-migration").expect, run.answer)
    assert run.left_files == [] and run.left_processes == [] and run.events[-1]["event"] == "idle"


def test_canary_module_killed_mid_migration(ctx, tmp_path):
    canary = _held_canary(tmp_path)
    os.kill(canary.module_pid(), signal.SIGKILL)
    run = canary.finish(keep_tmpdir=True)
    try:
        assert run.answer is None
        assert run.left_processes == [] and run.events[-1]["event"] == "idle"
        # What the module cannot clean up once killed outright: its private work dir, and nothing else.
        assert len(run.left_files) == 1 and run.left_files[0].startswith("postcopy-canary-")
        left = os.path.join(canary.tmpdir, run.left_files[0])
        # Root's dir (0711) holding QEMU's own (0700): nothing in it another account could list or change.
        assert os.stat(left).st_mode & 0o777 == 0o711 and os.stat(os.path.join(left, "qemu")).st_mode & 0o777 == 0o700
    finally:
        fault_kit.shutil.rmtree(canary.tmpdir, ignore_errors=True)


def test_five_canaries_at_once(ctx, tmp_path):
    spec = fault_kit.process("fault_exec", module="canary")  # no fault: only the crowd
    canaries = []
    for number in range(5):
        (tmp_path / str(number)).mkdir()
        canaries.append(fault_kit.Background(spec, dict(CANARY, timeout=120), str(tmp_path / str(number))))
    runs = [canary.finish(timeout=180) for canary in canaries]
    for run in runs:
        fault_kit.check(_row("canary: five at once on 2 CPUs").expect, run.answer)
        assert run.left_files == [] and run.left_processes == []


# ------------------------------------------------------------------------------------------------------------------------------
# the same faults through Ansible: one play, one host per fault, next to a healthy host


@pytest.fixture(scope="module")
def play(ctx, tmp_path_factory):
    return fault_kit.run_play(ANSIBLE_ROWS, ctx, str(tmp_path_factory.mktemp("play")))


@pytest.mark.parametrize("fault", ANSIBLE_ROWS, ids=ids(ANSIBLE_ROWS))
def test_fault_through_ansible(fault, play):
    host = fault_kit.host_name(fault)
    fault_kit.check(fault.expect._replace(pattern=fault.expect.pattern and fault.expect.pattern.format(**play["ctx"])), play["results"][host]["probe"])
    failed = fault.expect.kind in ("fails", "interpreter")
    # A host whose probe failed drops out of the play; every other host goes on to the next task.
    assert ("after" in play["results"][host]) is not failed


def test_one_hung_host_does_not_stop_the_play(play):
    assert play["results"]["healthy"]["probe"]["ansible_facts"]["postcopy_supported"] is True
    assert "after" in play["results"]["healthy"]
    hung = play["results"][fault_kit.host_name(next(f for f in FAULTS if f.name == "probe child hangs in userfaultfd()"))]
    assert "did not finish within 1 seconds" in hung["probe"]["msg"]
    assert play["seconds"] < 60
    assert play["leftovers"] == [], play["leftovers"]


if __name__ == "__main__":
    sys.stdout.write(fault_kit.markdown(FAULTS))
