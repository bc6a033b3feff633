#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install a seccomp filter, optionally switch account, then exec a command.

Test tool (not shipped with the collection)::

    seccomp_exec.py [--deny SYSCALL[:ERRNO]]... [--deny-ioctl REQUEST[:ERRNO]]...
                    [--user NAME] [--backend auto|libseccomp|bpf] [--no-filter]
                    -- CMD ARGS...

The filter's default action is ALLOW.  ``--deny userfaultfd:ENOSYS`` makes
every userfaultfd(2) fail with ENOSYS; ``--deny-ioctl 0xC018AA3F:EINVAL`` makes
ioctl(fd, UFFDIO_API, ...) fail with EINVAL (the request number, ioctl's
second argument, is compared on its low 32 bits).  ERRNO is a name (EPERM,
ENOSYS, ...) or a number and defaults to EPERM; SYSCALL is a name or a number.

``--user NAME`` switches to that account *after* the filter is installed
(setgroups to its groups, setgid, setuid; HOME, USER and LOGNAME follow), so
that root can run a program as an unprivileged account under the filter.

The filter is built with libseccomp through whichever Python binding is
importable (``seccomp`` from Debian's python3-seccomp, or ``pyseccomp`` from
PyPI); without either, a classic BPF program is built by hand and loaded with
prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER).  Either way no_new_privs is set
and the filter survives execve(): the command's /proc/self/status shows
``Seccomp: 2``.

Exit status: 2 with a one-line message on bad input, 126/127 when the command
cannot be executed, 1 when the filter or the account switch fails; otherwise
the command replaces this process.
"""

from __future__ import absolute_import, division, print_function

import argparse
import ctypes
import ctypes.util
import errno
import os
import platform
import sys

# ---------------------------------------------------------------------------
# constants from <linux/seccomp.h>, <linux/filter.h>, <linux/audit.h>
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF

BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
SECCOMP_DATA_NR = 0
SECCOMP_DATA_ARCH = 4
SECCOMP_DATA_ARGS = 16

AUDIT_ARCH = {
    "x86_64": 0xC000003E,  # EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    "aarch64": 0xC00000B7,  # EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
}

# Syscall numbers for the hand-built BPF fallback, used only when libseccomp
# cannot be reached at all.  Names the tests and the molecule scenarios use
# when they simulate a locked-down host; any other syscall can be given by
# number.
SYSCALLS = {
    "x86_64": {
        "read": 0,
        "write": 1,
        "open": 2,
        "close": 3,
        "mmap": 9,
        "mprotect": 10,
        "munmap": 11,
        "ioctl": 16,
        "madvise": 28,
        "socket": 41,
        "clone": 56,
        "fork": 57,
        "vfork": 58,
        "execve": 59,
        "kill": 62,
        "fcntl": 72,
        "setuid": 105,
        "setgid": 106,
        "setgroups": 116,
        "personality": 135,
        "mlock": 149,
        "munlock": 150,
        "mlockall": 151,
        "munlockall": 152,
        "prctl": 157,
        "openat": 257,
        "eventfd2": 290,
        "perf_event_open": 298,
        "memfd_create": 319,
        "bpf": 321,
        "execveat": 322,
        "userfaultfd": 323,
        "mlock2": 325,
        "pidfd_open": 434,
        "clone3": 435,
        "openat2": 437,
        "process_madvise": 440,
    },
    "aarch64": {
        "eventfd2": 19,
        "ioctl": 29,
        "openat": 56,
        "close": 57,
        "read": 63,
        "write": 64,
        "kill": 129,
        "setgid": 144,
        "setuid": 146,
        "setgroups": 159,
        "prctl": 167,
        "socket": 198,
        "munmap": 215,
        "clone": 220,
        "execve": 221,
        "mmap": 222,
        "mprotect": 226,
        "mlock": 228,
        "munlock": 229,
        "mlockall": 230,
        "munlockall": 231,
        "madvise": 233,
        "perf_event_open": 241,
        "memfd_create": 279,
        "bpf": 280,
        "execveat": 281,
        "userfaultfd": 282,
        "mlock2": 284,
        "pidfd_open": 434,
        "clone3": 435,
        "openat2": 437,
        "process_madvise": 440,
        "personality": 92,
        "fcntl": 25,
    },
}


class UsageError(Exception):
    """Bad input: reported in one line, exit status 2."""


class SetupError(Exception):
    """The filter or the account switch failed: exit status 1."""


# ---------------------------------------------------------------------------
# input parsing


def parse_errno(text):
    """Return the errno number for a name (EPERM) or a decimal number."""
    text = text.strip()
    if not text:
        raise UsageError("empty errno")
    if text.isdigit():
        value = int(text)
    else:
        value = getattr(errno, text.upper(), None)
        if not isinstance(value, int) or not text.upper().startswith("E"):
            raise UsageError("unknown errno %r" % text)
    if not 0 < value <= 4095:  # MAX_ERRNO
        raise UsageError("errno out of range: %r" % text)
    return value


def split_spec(spec, what):
    """Split 'NAME[:ERRNO]' into (NAME, errno number); EPERM by default."""
    name, sep, err = spec.partition(":")
    name = name.strip()
    if not name:
        raise UsageError("%s: empty name in %r" % (what, spec))
    return name, (parse_errno(err) if sep else errno.EPERM)


def parse_ioctl_request(text):
    """Parse an ioctl request number (hex with or without 0x, or decimal)."""
    t = text.strip().lower()
    try:
        if t.startswith("0x"):
            value = int(t, 16)
        elif t.isdigit():
            value = int(t, 10)
        else:
            value = int(t, 16)
    except ValueError:
        raise UsageError("bad ioctl request number %r" % text) from None
    if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
        raise UsageError("ioctl request number out of range: %r" % text)
    return value & 0xFFFFFFFF


def unique_rules(rules, what):
    """Drop repeated rules; the same key with two errnos is a usage error."""
    seen = {}
    for key, err in rules:
        if seen.setdefault(key, err) != err:
            raise UsageError(("conflicting " + what) % key)
    return sorted(seen.items())


def machine_arch():
    mach = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(mach, mach)


# ---------------------------------------------------------------------------
# libseccomp backends


def import_binding():
    """Return the importable libseccomp binding module, or None."""
    for name in ("seccomp", "pyseccomp"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        if hasattr(module, "SyscallFilter"):
            return module
    return None


_LIBSECCOMP = []


def _libseccomp_ctypes():
    """libseccomp through ctypes, only to resolve names; None if absent."""
    if not _LIBSECCOMP:
        lib = None
        for cand in (ctypes.util.find_library("seccomp"), "libseccomp.so.2"):
            if not cand:
                continue
            try:
                lib = ctypes.CDLL(cand)
                lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
                lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
                break
            except (OSError, AttributeError):
                lib = None
        _LIBSECCOMP.append(lib)
    return _LIBSECCOMP[0]


def resolve_syscall(name, binding):
    """Syscall name or number -> number on the native architecture."""
    if name.isdigit():
        return int(name)
    nr = None
    if binding is not None:
        nr = binding.resolve_syscall(binding.Arch.NATIVE, name)
    else:
        lib = _libseccomp_ctypes()
        if lib is not None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
        else:
            nr = SYSCALLS.get(machine_arch(), {}).get(name, -1)
    # libseccomp answers -1 (__NR_SCMP_ERROR) for unknown names and another
    # negative pseudo number for a syscall that this architecture lacks
    if nr is None or nr < 0:
        raise UsageError("unknown syscall %r on %s (give a name or a number)" % (name, machine_arch()))
    return nr


def load_libseccomp(binding, denies, ioctls):
    flt = binding.SyscallFilter(binding.ALLOW)
    for nr, err in denies:
        flt.add_rule(binding.ERRNO(err), nr)
    ioctl_nr = binding.resolve_syscall(binding.Arch.NATIVE, "ioctl")
    for request, err in ioctls:
        flt.add_rule(
            binding.ERRNO(err),
            ioctl_nr,
            binding.Arg(1, binding.MASKED_EQ, 0xFFFFFFFF, request),
        )
    flt.load()


# ---------------------------------------------------------------------------
# hand-built classic BPF


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [
        ("len", ctypes.c_ushort),
        ("filter", ctypes.POINTER(SockFilter)),
    ]


def build_bpf(arch, denies, ioctls, ioctl_nr):
    """Return the program as a list of (code, jt, jf, k)."""
    if arch not in AUDIT_ARCH:
        raise SetupError("BPF fallback does not know the audit arch of %s" % arch)
    prog = [
        (BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH[arch]),
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),  # foreign ABI
        (BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
    ]
    for nr, err in denies:
        prog.append((BPF_JEQ_K, 0, 1, nr))
        prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | err))
    if ioctls:
        # args[1] of struct seccomp_data; the low 32 bits come first on a
        # little-endian machine
        low = SECCOMP_DATA_ARGS + 8 * 1 + (0 if sys.byteorder == "little" else 4)
        prog.append((BPF_JEQ_K, 1, 0, ioctl_nr))
        prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
        prog.append((BPF_LD_W_ABS, 0, 0, low))
        for request, err in ioctls:
            prog.append((BPF_JEQ_K, 0, 1, request))
            prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | err))
    prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    if len(prog) > 4096:
        raise UsageError("too many rules for one BPF program")
    return prog


def load_bpf(denies, ioctls):
    arch = machine_arch()
    ioctl_nr = SYSCALLS.get(arch, {}).get("ioctl", -1)
    prog = build_bpf(arch, denies, ioctls, ioctl_nr)
    insns = (SockFilter * len(prog))(*[SockFilter(*i) for i in prog])
    fprog = SockFprog(len(prog), insns)
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SetupError("prctl(PR_SET_NO_NEW_PRIVS): %s" % os.strerror(err))
    if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.cast(ctypes.pointer(fprog), ctypes.c_void_p), 0, 0) != 0:
        err = ctypes.get_errno()
        raise SetupError("prctl(PR_SET_SECCOMP): %s" % os.strerror(err))


# ---------------------------------------------------------------------------
# account switch


def lookup_user(name):
    import pwd

    try:
        if name.isdigit():
            return pwd.getpwuid(int(name))
        return pwd.getpwnam(name)
    except KeyError:
        raise UsageError("unknown user %r" % name) from None


def switch_user(pw):
    groups = list(os.getgrouplist(pw.pw_name, pw.pw_gid))
    try:
        os.setgroups(groups)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as exc:
        raise SetupError("cannot switch to user %s: %s" % (pw.pw_name, exc.strerror)) from None
    if os.getuid() != pw.pw_uid or os.geteuid() != pw.pw_uid:
        raise SetupError("switch to user %s did not take" % pw.pw_name)
    os.environ["HOME"] = pw.pw_dir
    os.environ["USER"] = pw.pw_name
    os.environ["LOGNAME"] = pw.pw_name


# ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, not argparse's usage block
        self.exit(2, "%s: error: %s\n" % (self.prog, message))


def build_parser():
    parser = _Parser(
        prog="seccomp_exec.py",
        description="Install a seccomp filter (default ALLOW), optionally switch account, then exec CMD.",
    )
    parser.add_argument("--deny", action="append", default=[], metavar="SYSCALL[:ERRNO]", help="make SYSCALL fail with ERRNO (default EPERM)")
    parser.add_argument(
        "--deny-ioctl",
        action="append",
        default=[],
        metavar="REQUEST[:ERRNO]",
        help="make ioctl() with this request number (hex, low 32 bits compared) fail with ERRNO (default EPERM)",
    )
    parser.add_argument("--user", metavar="NAME", help="switch to this account after installing the filter")
    parser.add_argument("--backend", choices=("auto", "libseccomp", "bpf"), default="auto", help="auto: a libseccomp binding if importable, else BPF")
    parser.add_argument("--no-filter", action="store_true", help="install no filter at all (only --user): the unfiltered baseline to compare with")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = "seccomp_exec.py"
    try:
        command = list(args.command)
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            raise UsageError("no command given (use -- CMD ARGS...)")

        binding = None
        if args.backend in ("auto", "libseccomp"):
            binding = import_binding()
            if binding is None and args.backend == "libseccomp":
                raise UsageError("no libseccomp binding importable (seccomp or pyseccomp)")

        denies = []
        for spec in args.deny:
            name, err = split_spec(spec, "--deny")
            denies.append((resolve_syscall(name, binding), err))
        ioctls = []
        for spec in args.deny_ioctl:
            req, err = split_spec(spec, "--deny-ioctl")
            ioctls.append((parse_ioctl_request(req), err))
        denies = unique_rules(denies, "--deny for syscall %d")
        ioctls = unique_rules(ioctls, "--deny-ioctl for request 0x%08X")
        pw = lookup_user(args.user) if args.user else None
        if args.no_filter and (denies or ioctls):
            raise UsageError("--no-filter contradicts --deny/--deny-ioctl")

        if args.no_filter:
            pass
        elif binding is not None:
            try:
                load_libseccomp(binding, denies, ioctls)
            except (OSError, RuntimeError, ValueError) as exc:
                raise SetupError("libseccomp could not load the filter: %s" % exc) from None
        else:
            load_bpf(denies, ioctls)

        if pw is not None:
            switch_user(pw)
    except UsageError as exc:
        sys.stderr.write("%s: error: %s\n" % (prog, exc))
        return 2
    except SetupError as exc:
        sys.stderr.write("%s: error: %s\n" % (prog, exc))
        return 1

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write("%s: error: cannot execute %s: %s\n" % (prog, command[0], exc.strerror))
        return 127 if exc.errno == errno.ENOENT else 126
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
