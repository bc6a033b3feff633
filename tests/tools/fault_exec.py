#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a command with faults put in its way, on the real kernel (test tool, not shipped).

    fault_exec.py [--ro PATH]... [--hide PATH]... [--uffd-node KIND] [--rlimit NAME=VALUE]...
                  [--on SYSCALL=ACTION] [--log FILE] [--linger SECONDS] -- CMD ARGS...

Mounts change only in a private mount namespace of CMD, so the host never sees them:

- ``--ro PATH``: PATH bind-mounted read-only over itself.
- ``--hide PATH``: an empty read-only tmpfs over the directory PATH (``/proc/sys/vm``).
- ``--uffd-node KIND``: /dev rebuilt as a tmpfs holding null, zero, full, random, urandom,
  tty, pts and shm from the real /dev, plus ``userfaultfd`` as KIND: ``file`` (an empty
  regular file, mode 0666), ``absent``, ``null`` (the /dev/null character device),
  ``real`` (the real node), or ``symlink:TARGET`` (``userfaultfd-real`` in /dev is the
  real node, so ``symlink:userfaultfd-real`` points at the real device).

``--rlimit NAME=VALUE`` (NOFILE, AS, NPROC, MEMLOCK, CORE; VALUE in bytes or a count) is
set, soft and hard, on CMD only. ``--hold-fds N`` leaves N more descriptors (/dev/null)
open in CMD, so that its own pipes get numbers above N.

``--on SYSCALL=ACTION`` installs, in CMD only, a seccomp filter that hands every SYSCALL
to this process (SECCOMP_RET_USER_NOTIF). The process making the first such call (the
``--nth N``-th with that option) gets ACTION:
``kill`` (SIGKILL), ``segv`` (SIGSEGV), ``abrt`` (SIGABRT), ``stop`` (SIGSTOP, then left
stopped), or ``hang`` (never answered: the call blocks until the process dies). Every other
call goes on as if unfiltered. This process stays outside the filter; it exits once CMD has
exited and every process under the filter is gone (or after ``--linger`` seconds), with
CMD's exit status (128+N for signal N). ``--log FILE`` gets one JSON line per event.

Exit status 2 with one line on bad input, 1 when a fault cannot be set up.
"""

from __future__ import absolute_import, division, print_function

import argparse
import ctypes
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seccomp_exec  # noqa: E402  (same directory: syscall table, BPF structures)

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
NR_SECCOMP = {"x86_64": 317, "aarch64": 277}
# _IOWR('!', 0, struct seccomp_notif) and _IOWR('!', 1, struct seccomp_notif_resp)
NOTIF_RECV = 0xC0502100
NOTIF_SEND = 0xC0182101
NOTIF_FORMAT = "=QII" + "iIQ6Q"  # id, pid, flags, seccomp_data{nr, arch, ip, args[6]}
RESP_FORMAT = "=QqiI"  # id, val, error, flags
ACTIONS = {"kill": signal.SIGKILL, "segv": signal.SIGSEGV, "abrt": signal.SIGABRT, "stop": signal.SIGSTOP, "hang": None}
RLIMITS = {
    "NOFILE": resource.RLIMIT_NOFILE,
    "AS": resource.RLIMIT_AS,
    "NPROC": resource.RLIMIT_NPROC,
    "MEMLOCK": resource.RLIMIT_MEMLOCK,
    "CORE": resource.RLIMIT_CORE,
}
DEV_KEEP = ("null", "zero", "full", "random", "urandom", "tty")
DEV_KEEP_DIRS = ("pts", "shm")

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.syscall.restype = ctypes.c_long


class UsageError(Exception):
    """Bad input: one line, exit status 2."""


class SetupError(Exception):
    """A fault could not be put in place: exit status 1."""


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError("%s: %s" % (what, os.strerror(err)))


def _bytes(value):
    return value.encode() if isinstance(value, str) else value


def _mount(source, target, fstype, flags, data=None):
    _check(libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data)), "mount %s on %s" % (source, target))


# --------------------------------------------------------------------------------------------
# mount namespace


def private_namespace():
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing done below may propagate back to the host's mounts.
    _mount("none", "/", None, MS_REC | MS_PRIVATE)


def read_only(path):
    _mount(path, path, None, MS_BIND | MS_REC)
    _mount("none", path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def hide(path):
    _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0555,size=4k")


def _bind_node(old_dev, name, target, directory=False):
    if directory:
        os.mkdir(target, 0o755)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
    # /proc/self/fd/N/name reaches into the /dev the new tmpfs now covers.
    _mount("/proc/self/fd/%d/%s" % (old_dev, name), target, None, MS_BIND | (MS_REC if directory else 0))


def rebuild_dev(kind):
    old_dev = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY)
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "mode=0755,size=64k")
    for name in DEV_KEEP:
        if os.path.exists("/proc/self/fd/%d/%s" % (old_dev, name)):
            _bind_node(old_dev, name, "/dev/" + name)
    for name in DEV_KEEP_DIRS:
        if os.path.isdir("/proc/self/fd/%d/%s" % (old_dev, name)):
            _bind_node(old_dev, name, "/dev/" + name, directory=True)
    node = "/dev/userfaultfd"
    if kind == "file":
        os.close(os.open(node, os.O_CREAT | os.O_WRONLY, 0o666))
        os.chmod(node, 0o666)
    elif kind == "null":
        _bind_node(old_dev, "null", node)
    elif kind == "real":
        _bind_node(old_dev, "userfaultfd", node)
    elif kind.startswith("symlink:"):
        _bind_node(old_dev, "userfaultfd", "/dev/userfaultfd-real")
        os.symlink(kind.split(":", 1)[1], node)
    elif kind != "absent":
        raise UsageError("unknown --uffd-node %r" % kind)
    os.close(old_dev)


# --------------------------------------------------------------------------------------------
# seccomp user notification


def notify_filter(nr):
    arch = seccomp_exec.machine_arch()
    if arch not in seccomp_exec.AUDIT_ARCH or arch not in NR_SECCOMP:
        raise SetupError("--on is implemented for x86_64 and aarch64, not %s" % arch)
    prog = [
        (seccomp_exec.BPF_LD_W_ABS, 0, 0, seccomp_exec.SECCOMP_DATA_ARCH),
        (seccomp_exec.BPF_JEQ_K, 1, 0, seccomp_exec.AUDIT_ARCH[arch]),
        (seccomp_exec.BPF_RET_K, 0, 0, seccomp_exec.SECCOMP_RET_ALLOW),
        (seccomp_exec.BPF_LD_W_ABS, 0, 0, seccomp_exec.SECCOMP_DATA_NR),
        (seccomp_exec.BPF_JEQ_K, 0, 1, nr),
        (seccomp_exec.BPF_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF),
        (seccomp_exec.BPF_RET_K, 0, 0, seccomp_exec.SECCOMP_RET_ALLOW),
    ]
    insns = (seccomp_exec.SockFilter * len(prog))(*[seccomp_exec.SockFilter(*i) for i in prog])
    fprog = seccomp_exec.SockFprog(len(prog), insns)
    if os.geteuid() != 0:
        _check(libc.prctl(seccomp_exec.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    fd = libc.syscall(
        ctypes.c_long(NR_SECCOMP[arch]), ctypes.c_long(SECCOMP_SET_MODE_FILTER), ctypes.c_long(SECCOMP_FILTER_FLAG_NEW_LISTENER), ctypes.byref(fprog)
    )
    if fd < 0:
        raise SetupError("seccomp(NEW_LISTENER): %s" % os.strerror(ctypes.get_errno()))
    return fd


def receive(listener):
    """(id, pid, nr) of the next notification; None when its caller is already gone."""
    buf = ctypes.create_string_buffer(struct.calcsize(NOTIF_FORMAT))
    if libc.ioctl(listener, ctypes.c_ulong(NOTIF_RECV), buf) != 0:
        return None
    fields = struct.unpack(NOTIF_FORMAT, buf.raw)
    return fields[0], fields[1], fields[3]


def let_through(listener, notif_id):
    buf = ctypes.create_string_buffer(struct.pack(RESP_FORMAT, notif_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE))
    libc.ioctl(listener, ctypes.c_ulong(NOTIF_SEND), buf)


class Log(object):
    def __init__(self, path):
        self.handle = open(path, "a") if path else None

    def __call__(self, event, **fields):
        if self.handle:
            fields.update(event=event, time=time.time())
            self.handle.write(json.dumps(fields) + "\n")
            self.handle.flush()


def reap(child, log):
    """Reap every exited descendant (this process is their subreaper).

    Returns (CMD's wait status or None, whether any child is left).
    """
    status = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status, False
        if not pid:
            return status, True
        how = "signal %s" % signal.Signals(os.WTERMSIG(wait_status)).name if os.WIFSIGNALED(wait_status) else "status %d" % os.WEXITSTATUS(wait_status)
        log("exit", pid=pid, how=how, cmd=pid == child)
        if pid == child:
            status = wait_status


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().strip()
    except OSError:
        return None


def supervise(child, listener, action, nth, log, linger):
    """Act on the nth notification, let every other through; return CMD's wait status."""
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    seen, status, end = 0, None, None
    while True:
        events = dict(poller.poll(100))
        if events.get(listener, 0) & select.POLLIN:
            notif = receive(listener)
            if notif is not None:
                seen += 1
                acting = seen == nth
                log("notify", pid=notif[1], comm=_comm(notif[1]), syscall=notif[2], number=seen, action=action if acting else "let through")
                if not acting:
                    let_through(listener, notif[0])
                elif ACTIONS[action] is not None:
                    os.kill(notif[1], ACTIONS[action])
        reaped, left = reap(child, log)
        if reaped is not None:
            status, end = reaped, time.monotonic() + linger
        if events.get(listener, 0) & (select.POLLHUP | select.POLLERR) and not left:
            log("idle")  # every process under the filter has exited and been reaped
            break
        if end is not None and time.monotonic() > end:
            log("linger-expired")
            break
    return status


def spawn_notified(command, nr, limits, action, nth, log, linger):
    # Orphans of CMD (a probe child whose parent died) come to this process to be reaped.
    _check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    parent_sock, child_sock = socket.socketpair()
    child = os.fork()
    if child == 0:
        parent_sock.close()
        try:
            listener = notify_filter(nr)
            socket.send_fds(child_sock, [b"L"], [listener])
            child_sock.recv(1)  # the supervisor holds the listener now
            os.close(listener)
            child_sock.close()
            exec_command(command, limits)
        except BaseException as exc:  # noqa: B036  (report anything, never return into the parent's code)
            sys.stderr.write("fault_exec.py: error: %s\n" % exc)
        os._exit(1)
    child_sock.close()
    _msg, fds, _flags, _addr = socket.recv_fds(parent_sock, 1, 1)
    if not fds:
        os.waitpid(child, 0)
        raise SetupError("the child could not install the notifying filter")
    parent_sock.send(b"K")
    parent_sock.close()
    status = supervise(child, fds[0], action, nth, log, linger)
    if status is None:
        os.kill(child, signal.SIGKILL)
        _pid, status = os.waitpid(child, 0)
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


# --------------------------------------------------------------------------------------------


def exec_command(command, limits, hold_fds=0):
    for resource_id, value in limits:
        resource.setrlimit(resource_id, (value, value))
    for _count in range(hold_fds):
        os.set_inheritable(os.open("/dev/null", os.O_RDONLY), True)
    os.execvp(command[0], command)


def parse_limits(specs):
    limits = []
    for spec in specs:
        name, _sep, value = spec.partition("=")
        if name.upper() not in RLIMITS or not value.isdigit():
            raise UsageError("bad --rlimit %r (NAME=VALUE, NAME one of %s)" % (spec, ", ".join(sorted(RLIMITS))))
        limits.append((RLIMITS[name.upper()], int(value)))
    return limits


def parse_on(spec):
    name, _sep, action = spec.partition("=")
    if action not in ACTIONS:
        raise UsageError("bad --on %r (SYSCALL=%s)" % (spec, "|".join(sorted(ACTIONS))))
    return seccomp_exec.resolve_syscall(name, None), action


def build_parser():
    parser = argparse.ArgumentParser(prog="fault_exec.py", description="Run CMD with faults put in its way.")
    parser.add_argument("--ro", action="append", default=[], metavar="PATH")
    parser.add_argument("--hide", action="append", default=[], metavar="PATH")
    parser.add_argument("--uffd-node", metavar="KIND")
    parser.add_argument("--rlimit", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--on", metavar="SYSCALL=ACTION")
    parser.add_argument("--nth", type=int, default=1, metavar="N")
    parser.add_argument("--hold-fds", type=int, default=0, metavar="N")
    parser.add_argument("--log", metavar="FILE")
    parser.add_argument("--linger", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        if not command:
            raise UsageError("no command given (use -- CMD ARGS...)")
        limits = parse_limits(args.rlimit)
        notify = parse_on(args.on) if args.on else None
        if args.ro or args.hide or args.uffd_node:
            private_namespace()
        for path in args.ro:
            read_only(path)
        for path in args.hide:
            hide(path)
        if args.uffd_node:
            rebuild_dev(args.uffd_node)
        if notify:
            return spawn_notified(command, notify[0], limits, notify[1], args.nth, Log(args.log), args.linger)
        exec_command(command, limits, args.hold_fds)
    except (UsageError, seccomp_exec.UsageError) as exc:
        sys.stderr.write("fault_exec.py: error: %s\n" % exc)
        return 2
    except (SetupError, OSError) as exc:
        sys.stderr.write("fault_exec.py: error: %s\n" % exc)
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
