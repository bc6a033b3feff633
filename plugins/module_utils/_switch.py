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
import select
import signal
import time

__all__ = [
    "ChildError",
    "run_in_child",
]

_READ_CHUNK = 65536


class ChildError(Exception):
    """The child could not deliver a result: it failed, crashed, or ran out of time."""


def _become(account):
    # Order matters: groups and gid can only be changed while still root.
    os.setgroups(list(account.groups))
    os.setgid(account.gid)
    os.setuid(account.uid)


def _child_main(write_fd, func, account, timeout):
    # A second guard in case the parent dies: the kernel ends the child at the deadline.
    signal.alarm(int(timeout) + 1)
    try:
        if account is not None:
            try:
                _become(account)
            except OSError as exc:
                raise ChildError("could not switch to account %s (uid %d): %s" % (account.name, account.uid, os.strerror(exc.errno))) from None
        payload = {"result": func()}
    except BaseException as exc:  # the child must always answer, whatever went wrong
        payload = {"error": str(exc) or exc.__class__.__name__}
    data = json.dumps(payload).encode("utf-8")
    while data:
        data = data[os.write(write_fd, data):]


def _read_until(read_fd, deadline):
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _w, _x = select.select([read_fd], [], [], remaining)
        if not ready:
            return None
        chunk = os.read(read_fd, _READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _describe_status(status):
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return "was killed by signal %s" % name
    return "exited with status %d" % os.WEXITSTATUS(status)


def run_in_child(func, account=None, timeout=10.0, what="probe"):
    """Call func() in a fork (as account when given); return its JSON-able result or raise ChildError."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            _child_main(write_fd, func, account, timeout)
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        data = _read_until(read_fd, time.monotonic() + timeout)
    finally:
        os.close(read_fd)
    if data is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise ChildError("%s did not finish within %s seconds and was killed" % (what, timeout))
    _pid, status = os.waitpid(pid, 0)
    if not data:
        raise ChildError("%s child %s without a result" % (what, _describe_status(status)))
    try:
        payload = json.loads(data.decode("utf-8"))
    except ValueError:
        raise ChildError("%s child %s after a truncated result" % (what, _describe_status(status))) from None
    if "error" in payload:
        raise ChildError("%s failed: %s" % (what, payload["error"]))
    return payload["result"]
