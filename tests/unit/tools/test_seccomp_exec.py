# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""seccomp_exec.py against the real kernel: the filter, the errno, the account switch."""

import errno
import json
import os
import platform
import shutil
import subprocess
import sys

import pytest
import seccomp_exec  # tests/tools/, put on sys.path by tests/unit/conftest.py
from hostctl import SECCOMP_EXEC
from hvm_tools_helpers import require_root

NR_USERFAULTFD = {"x86_64": 323, "aarch64": 282}.get(platform.machine())
O_CLOEXEC = 0o2000000

# Runs under the wrapper: userfaultfd(O_CLOEXEC), then UFFDIO_API on the fd when
# there is one, then what /proc/self/status and the ids say.
PROBE = r"""
import ctypes, fcntl, json, os, struct, sys
nr, request = int(sys.argv[1]), int(sys.argv[2], 16)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = libc.syscall(ctypes.c_long(nr), ctypes.c_long(0o2000000))
out = {"fd_ok": fd >= 0, "errno": 0 if fd >= 0 else ctypes.get_errno(), "ioctl_errno": None}
if fd >= 0:
    buf = bytearray(struct.pack("QQQ", 0xAA, 0, 0))
    try:
        fcntl.ioctl(fd, request, buf)
        out["ioctl_errno"] = 0
    except OSError as exc:
        out["ioctl_errno"] = exc.errno
    os.close(fd)
for line in open("/proc/self/status"):
    key, _sep, value = line.partition(":")
    if key in ("Seccomp", "NoNewPrivs", "CapEff"):
        out[key] = value.strip()
out.update(uid=os.getuid(), euid=os.geteuid(), gid=os.getgid(), groups=sorted(os.getgroups()))
print(json.dumps(out))
"""

UFFDIO_API = "0xC018AA3F"

INTERPRETERS = [sys.executable]
if os.path.exists("/usr/bin/python3") and os.path.realpath("/usr/bin/python3") != os.path.realpath(sys.executable):
    INTERPRETERS.append("/usr/bin/python3")


def _find_python38():
    """A working Python 3.8 (the oldest the tool supports), if this machine has one."""
    candidates = [shutil.which("python3.8"), "/usr/bin/python3.8"]
    pyenv = os.path.expanduser("~/.pyenv/versions")
    if os.path.isdir(pyenv):
        candidates += [os.path.join(pyenv, v, "bin", "python3") for v in sorted(os.listdir(pyenv)) if v.startswith("3.8.")]
    for path in candidates:
        if not path or not os.path.exists(path):
            continue
        try:
            proc = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30, check=False)
        except OSError:
            continue
        if proc.stdout.strip() == b"True":
            return path
    return None


PY38 = _find_python38()


@pytest.fixture(autouse=True)
def _needs_root_and_arch():
    require_root()
    if NR_USERFAULTFD is None:
        pytest.skip("no userfaultfd number known for %s" % platform.machine())


def wrap(args, interpreter=None, probe_python="/usr/bin/python3", request=UFFDIO_API):
    """Run PROBE under seccomp_exec.py with args; return (returncode, parsed stdout, stderr)."""
    if not os.path.exists(probe_python):
        probe_python = sys.executable
    cmd = [interpreter or sys.executable, SECCOMP_EXEC] + list(args) + [
        "--", probe_python, "-c", PROBE, str(NR_USERFAULTFD), request]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
    out = json.loads(proc.stdout) if proc.returncode == 0 else None
    return proc.returncode, out, proc.stderr.decode()


def run_tool(args):
    proc = subprocess.run([sys.executable, SECCOMP_EXEC] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
    return proc.returncode, proc.stderr.decode()


# ----------------------------------------------------------------------------
# the filter


@pytest.mark.parametrize("interpreter", INTERPRETERS)
@pytest.mark.parametrize("backend", ["auto", "bpf"])
@pytest.mark.parametrize(
    "spec,expected",
    [
        ("userfaultfd:ENOSYS", errno.ENOSYS),
        ("userfaultfd:EPERM", errno.EPERM),
        ("userfaultfd", errno.EPERM),
        ("userfaultfd:EACCES", errno.EACCES),
        ("userfaultfd:einval", errno.EINVAL),
        ("userfaultfd:ENOMEM", errno.ENOMEM),
        ("userfaultfd:EMFILE", errno.EMFILE),
        ("%d:24" % (NR_USERFAULTFD or 0), 24),
    ],
)
def test_deny_makes_the_syscall_fail_with_the_errno(interpreter, backend, spec, expected):
    rc, out, err = wrap(["--backend", backend, "--deny", spec], interpreter)
    assert rc == 0, err
    assert not out["fd_ok"]
    assert out["errno"] == expected
    assert out["Seccomp"] == "2"
    assert out["NoNewPrivs"] == "1"


@pytest.mark.parametrize("backend", ["auto", "bpf"])
def test_no_deny_still_filters_and_allows_everything(backend):
    rc, out, err = wrap(["--backend", backend])
    assert rc == 0, err
    assert out["fd_ok"] and out["ioctl_errno"] == 0
    assert out["Seccomp"] == "2"


@pytest.mark.parametrize("backend", ["auto", "bpf"])
@pytest.mark.parametrize("spec", [UFFDIO_API + ":EMFILE", "0x1C018AA3F:EMFILE", "c018aa3f:EMFILE"])
def test_deny_ioctl_fails_only_that_request(backend, spec):
    rc, out, err = wrap(["--backend", backend, "--deny-ioctl", spec])
    assert rc == 0, err
    assert out["fd_ok"], "userfaultfd itself must stay allowed"
    assert out["ioctl_errno"] == errno.EMFILE


@pytest.mark.parametrize("backend", ["auto", "bpf"])
def test_deny_ioctl_leaves_other_requests_alone(backend):
    # UFFDIO_REGISTER denied; UFFDIO_API goes through
    rc, out, err = wrap(["--backend", backend, "--deny-ioctl", "0xC020AA00:EINVAL"])
    assert rc == 0, err
    assert out["ioctl_errno"] == 0


def test_deny_ioctl_default_errno_is_eperm():
    rc, out, err = wrap(["--deny-ioctl", UFFDIO_API])
    assert rc == 0, err
    assert out["ioctl_errno"] == errno.EPERM


def test_runs_under_debian_python3():
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("no /usr/bin/python3")
    rc, out, err = wrap(["--deny", "userfaultfd:ENOSYS"], interpreter="/usr/bin/python3")
    assert rc == 0, err
    assert out["errno"] == errno.ENOSYS and out["Seccomp"] == "2"


@pytest.mark.skipif(PY38 is None, reason="no Python 3.8 interpreter on this machine")
def test_runs_under_python38_with_the_bpf_fallback():
    rc, out, err = wrap(["--deny", "userfaultfd:ENOSYS", "--deny-ioctl", UFFDIO_API + ":EMFILE"], interpreter=PY38)
    assert rc == 0, err
    assert out["errno"] == errno.ENOSYS and out["Seccomp"] == "2"


def test_no_filter_installs_nothing():
    with open("/proc/self/status") as f:
        mine = [line.split()[1] for line in f if line.startswith("Seccomp:")][0]
    rc, out, err = wrap(["--no-filter"])
    assert rc == 0, err
    assert out["Seccomp"] == mine
    assert out["fd_ok"]


# ----------------------------------------------------------------------------
# --user


@pytest.mark.parametrize("backend", ["auto", "bpf"])
def test_user_switches_account_after_the_filter(test_user, backend):
    rc, out, err = wrap(["--backend", backend, "--deny", "userfaultfd:ENOSYS", "--user", test_user.pw_name])
    assert rc == 0, err
    assert (out["uid"], out["euid"], out["gid"]) == (test_user.pw_uid, test_user.pw_uid, test_user.pw_gid)
    assert out["groups"] == sorted(os.getgrouplist(test_user.pw_name, test_user.pw_gid))
    assert out["CapEff"] == "0000000000000000"
    assert out["Seccomp"] == "2"
    # ENOSYS, not the kernel's EPERM: the filter came first and stays
    assert out["errno"] == errno.ENOSYS


def test_user_without_filter_meets_the_kernel(test_user):
    rc, out, err = wrap(["--no-filter", "--user", test_user.pw_name])
    assert rc == 0, err
    assert out["uid"] == test_user.pw_uid
    # EPERM from the sysctl when it is 0; a concurrent run may have it at 1 for a moment
    assert out["fd_ok"] or out["errno"] == errno.EPERM


def test_user_by_number(test_user):
    rc, out, err = wrap(["--user", str(test_user.pw_uid)])
    assert rc == 0, err
    assert out["uid"] == test_user.pw_uid


# ----------------------------------------------------------------------------
# bad input: one line, exit status 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--deny", "no_such_syscall", "--", "true"], "unknown syscall 'no_such_syscall'"),
        (["--deny", "userfaultfd:EWHAT", "--", "true"], "unknown errno 'EWHAT'"),
        (["--deny", "userfaultfd:", "--", "true"], "empty errno"),
        (["--deny", "userfaultfd:0", "--", "true"], "errno out of range"),
        (["--deny", ":EPERM", "--", "true"], "empty name"),
        (["--deny-ioctl", "zz", "--", "true"], "bad ioctl request number 'zz'"),
        (["--user", "no-such-user-hvm", "--", "true"], "unknown user 'no-such-user-hvm'"),
        (["--deny", "userfaultfd"], "no command given"),
        (["--no-filter", "--deny", "userfaultfd", "--", "true"], "--no-filter contradicts"),
        (["--bogus", "--", "true"], "unrecognized arguments"),
        (["--deny", "userfaultfd", "--deny", "userfaultfd:ENOSYS", "--", "true"], "conflicting --deny"),
        (["--deny-ioctl", "0xC018AA3F", "--deny-ioctl", "0xC018AA3F:EINVAL", "--", "true"], "conflicting --deny-ioctl"),
        (["--backend", "bpf", "--deny", "no_such_syscall", "--", "true"], "unknown syscall"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    rc, err = run_tool(args)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("seccomp_exec.py: error: "), err
    assert message in err


def test_missing_command_is_127():
    rc, err = run_tool(["--", "/nonexistent/command"])
    assert rc == 127
    assert "cannot execute /nonexistent/command" in err


def test_exit_status_of_the_command_passes_through():
    rc, _output = run_tool(["--deny", "userfaultfd", "--", "sh", "-c", "exit 7"])
    assert rc == 7


# ----------------------------------------------------------------------------
# the BPF fallback's own pieces


def test_fallback_table_agrees_with_libseccomp():
    binding = seccomp_exec.import_binding()
    lib = seccomp_exec._libseccomp_ctypes()
    if binding is None and lib is None:
        pytest.skip("no libseccomp to compare with")
    table = seccomp_exec.SYSCALLS.get(seccomp_exec.machine_arch())
    if table is None:
        pytest.skip("no fallback table for %s" % seccomp_exec.machine_arch())
    for name, nr in table.items():
        if binding is not None:
            theirs = binding.resolve_syscall(binding.Arch.NATIVE, name)
        else:
            theirs = lib.seccomp_syscall_resolve_name(name.encode())
        assert theirs == nr, name


def test_fallback_table_alone_resolves_names(monkeypatch):
    monkeypatch.setattr(seccomp_exec, "_LIBSECCOMP", [None])
    if seccomp_exec.machine_arch() not in seccomp_exec.SYSCALLS:
        pytest.skip("no fallback table for %s" % seccomp_exec.machine_arch())
    assert seccomp_exec.resolve_syscall("userfaultfd", None) == NR_USERFAULTFD
    assert seccomp_exec.resolve_syscall("999", None) == 999
    with pytest.raises(seccomp_exec.UsageError):
        seccomp_exec.resolve_syscall("no_such_syscall", None)


@pytest.mark.parametrize("arch,audit", [("x86_64", 0xC000003E), ("aarch64", 0xC00000B7)])
def test_bpf_program_checks_arch_then_numbers(arch, audit):
    prog = seccomp_exec.build_bpf(arch, [(323, errno.ENOSYS)], [(0xC018AA3F, errno.EINVAL)], 16)
    assert prog[0] == (seccomp_exec.BPF_LD_W_ABS, 0, 0, 4)  # seccomp_data.arch
    assert prog[1] == (seccomp_exec.BPF_JEQ_K, 1, 0, audit)
    assert prog[2] == (seccomp_exec.BPF_RET_K, 0, 0, seccomp_exec.SECCOMP_RET_KILL_PROCESS)
    assert (seccomp_exec.BPF_RET_K, 0, 0, seccomp_exec.SECCOMP_RET_ERRNO | errno.ENOSYS) in prog
    assert (seccomp_exec.BPF_RET_K, 0, 0, seccomp_exec.SECCOMP_RET_ERRNO | errno.EINVAL) in prog
    assert prog[-1] == (seccomp_exec.BPF_RET_K, 0, 0, seccomp_exec.SECCOMP_RET_ALLOW)
    with pytest.raises(seccomp_exec.SetupError):
        seccomp_exec.build_bpf("sparc", [], [], 54)
