# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a function in a forked child, optionally as another account, and get its JSON result back.

Native calls go wrong in ways Python cannot catch (a segfault, a blocked fault), so they
never run in the module's own process: a crash or hang of the child becomes an error here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import resource
import select
import signal
import time

__all__ = [
    "ChildError",
    "SAFE_PATH",
    "become",
    "minimal_environment",
    "run_in_child",
]

SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

_READ_CHUNK = 65536
# A child that closed its pipe is exiting: look often at first, then back off.
_REAP_FIRST_WAIT = 0.0001
_REAP_MAX_WAIT = 0.01
# Grace after the deadline for a child that answered just in time to finish exiting.
_REAP_GRACE = 1.0
# Written when the real answer cannot even be encoded (no memory left in the child).
_FALLBACK_ERROR = b'{"error": "the probe child could not encode its answer (out of memory?)"}'


class ChildError(Exception):
    """The child could not deliver a result: it failed, crashed, or ran out of time."""


def _check_become(account):
    """setuid() that returned success without switching (a seccomp ERRNO(0) rule) must not pass."""
    if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (account.uid, account.uid, account.gid, account.gid):
        raise OSError(0, "credentials are uid %d/%d gid %d/%d after the switch" % (os.getuid(), os.geteuid(), os.getgid(), os.getegid()))
    if sorted(set(os.getgroups()) - {account.gid}) != sorted(set(account.groups) - {account.gid}):
        raise OSError(0, "supplementary groups are %s after the switch" % sorted(os.getgroups()))


def _close_inherited(keep):
    """Close every descriptor but stdio and the result pipe.

    A child that outlives its parent would otherwise hold the module's stdout open, and
    Ansible waits for its EOF.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        return
    for fd in fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _arm_guards(timeout):
    # The kernel ends the child at the deadline even if the parent is gone; SIG_DFL so that
    # a Python handler inherited from the module cannot turn the guard into an exception.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(int(timeout) + 1)
    # A crash of a child that may hold root's memory must not leave a core file behind.
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError):
        pass


def _switch_error(account, exc):
    reason = os.strerror(exc.errno) if exc.errno else exc.strerror
    return ChildError("could not switch to account %s (uid %d): %s" % (account.name, account.uid, reason))


def become(account):
    """Switch this process to account for good (the probe child, the canary's QEMU before exec); ChildError in one line."""
    try:
        # Order matters: groups and gid can only be changed while still root.
        os.setgroups(list(account.groups))
        os.setgid(account.gid)
        os.setuid(account.uid)
        _check_become(account)
    except OSError as exc:
        raise _switch_error(account, exc) from None


def _answer(func, account, prepare=None):
    """The JSON bytes to send back: the result, or a one-line error."""
    try:
        if prepare is not None:
            prepare()  # still as root: what QEMU's launcher would set up before starting it
        if account is not None:
            become(account)
        return json.dumps({"result": func()}).encode("utf-8")
    except BaseException as exc:  # the child must always answer, whatever went wrong
        try:
            return json.dumps({"error": str(exc) or exc.__class__.__name__}).encode("utf-8")
        except BaseException:
            return _FALLBACK_ERROR


def minimal_environment(home="/"):
    """The whole environment a child of root starts with: nothing of root's (HOME, PATH, proxies, locale)."""
    return {"PATH": SAFE_PATH, "HOME": home, "LC_ALL": "C"}


def _reset_environment():
    os.environ.clear()
    os.environ.update(minimal_environment())


def _child_main(write_fd, func, account, timeout, prepare):
    _arm_guards(timeout)
    _close_inherited(write_fd)
    _reset_environment()
    data = _answer(func, account, prepare)
    while data:
        data = data[os.write(write_fd, data):]


def _read_until(read_fd, deadline):
    """Everything the child wrote until EOF; None when the deadline passes first."""
    # poll, not select: select() cannot watch a descriptor numbered 1024 or higher.
    poller = select.poll()
    poller.register(read_fd, select.POLLIN | select.POLLHUP)
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000.0):
            return None
        chunk = os.read(read_fd, _READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reap(pid, deadline):
    """The child's wait status; None when it is still running at the deadline."""
    wait = _REAP_FIRST_WAIT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(wait)
        wait = min(wait * 2, _REAP_MAX_WAIT)


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    os.waitpid(pid, 0)


def _describe_status(status):
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return "was killed by signal %s" % name
    return "exited with status %d" % os.WEXITSTATUS(status)


def _fork_with_pipe(what):
    """(pid, read_fd, write_fd); ChildError when the host has no descriptor, process or memory left."""
    try:
        read_fd, write_fd = os.pipe()
    except (OSError, MemoryError) as exc:
        raise ChildError("could not start the %s child: pipe(): %s" % (what, _reason(exc))) from None
    try:
        return os.fork(), read_fd, write_fd
    except (OSError, MemoryError) as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise ChildError("could not start the %s child: fork(): %s" % (what, _reason(exc))) from None


def _reason(exc):
    if isinstance(exc, MemoryError):
        return "out of memory"
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _collect(pid, read_fd, timeout, what):
    """Wait for the child's answer; the child is always reaped, killed first when late."""
    deadline = time.monotonic() + timeout
    status = None
    try:
        data = _read_until(read_fd, deadline)
        if data is not None:
            status = _reap(pid, max(deadline, time.monotonic() + _REAP_GRACE))
    finally:
        os.close(read_fd)
        if status is None:
            # Late, or the parent is leaving on an exception: never leave a child or a zombie.
            _kill(pid)
    if status is None:
        raise ChildError("%s did not finish within %s seconds and was killed" % (what, timeout))
    return data, status


def run_in_child(func, account=None, timeout=10.0, what="probe", prepare=None):
    """Call func() in a fork (as account when given); return its JSON-able result or raise ChildError.

    prepare(), when given, runs in the child before the switch to account, as root.
    """
    pid, read_fd, write_fd = _fork_with_pipe(what)
    if pid == 0:
        try:
            os.close(read_fd)
            _child_main(write_fd, func, account, timeout, prepare)
        finally:
            os._exit(0)
    os.close(write_fd)
    data, status = _collect(pid, read_fd, timeout, what)
    if not data:
        raise ChildError("%s child %s without a result" % (what, _describe_status(status)))
    try:
        payload = json.loads(data.decode("utf-8"))
    except ValueError:
        raise ChildError("%s child %s after a truncated result" % (what, _describe_status(status))) from None
    if "error" in payload:
        raise ChildError("%s failed: %s" % (what, payload["error"]))
    return payload["result"]
