#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ask QEMU itself whether it accepts post-copy on this host (test oracle).

Starts an incoming (destination) QEMU::

    qemu-system-x86_64 -nodefaults -display none -machine pc -accel tcg -m 64
                       -incoming defer -qmp unix:<tmpdir>/qmp.sock,server=on,wait=off

optionally as another account and under a seccomp filter (through
``seccomp_exec.py`` beside this file), connects with ``qemu.qmp`` and sends
``migrate-set-capabilities`` with ``postcopy-ram: true``.  QEMU checks
userfaultfd at exactly that point on the destination side, so its answer
(``{}`` or an error) is the verdict.  QEMU before 8.0 replies only
"Postcopy is not supported" over QMP and writes the reason to its stderr
(``postcopy_ram_supported_by_host: userfaultfd not available: Operation not
permitted``); the verdict carries both.

API::

    ask_qemu(user=None, deny=(), deny_ioctl=(), qemu_binary=..., accel='tcg',
             timeout=30) -> OracleVerdict(accepted, message, qemu_version, ...)

CLI::

    qemu_oracle.py [--user NAME] [--deny SYSCALL[:ERRNO]]...
                   [--deny-ioctl REQUEST[:ERRNO]]... [--qemu PATH]
                   [--accel tcg|kvm] [--timeout S] [--json]

exit 0 when QEMU accepts, 1 when it refuses, 2 when it could not be asked.
"""

from __future__ import absolute_import, division, print_function

import asyncio
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple, Optional, Sequence, Tuple

DEFAULT_QEMU = "/usr/bin/qemu-system-x86_64"
SECCOMP_EXEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp_exec.py")


class OracleVerdict(NamedTuple):
    """QEMU's answer to ``migrate-set-capabilities postcopy-ram: true``."""

    #: QEMU returned ``{}``
    accepted: bool
    #: None when accepted; else QMP's error text, followed by QEMU's own
    #: report from stderr (QEMU < 8.0 puts the reason only there), e.g.
    #: "Postcopy is not supported (postcopy_ram_supported_by_host:
    #: userfaultfd not available: Operation not permitted)"
    message: Optional[str]
    #: "7.2.22"
    qemu_version: str
    #: exact QMP error ``desc`` (None when accepted)
    qmp_error: Optional[str] = None
    #: QEMU's stderr lines with the "qemu-system-x86_64: " prefix removed
    stderr: Tuple[str, ...] = ()


class OracleError(Exception):
    """QEMU could not be asked (did not start, timed out, no QMP...)."""


def _stderr_lines(raw, binary):
    prefix = os.path.basename(binary) + ": "
    lines = []
    for line in raw.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith(prefix):
            line = line[len(prefix) :]
        lines.append(line)
    return tuple(lines)


def _build_command(binary, sock, accel, machine, user, deny, deny_ioctl, python, incoming=True, prefix=(), extra_args=()):
    qemu = list(prefix) + [
        binary,
        "-nodefaults",
        "-display",
        "none",
        "-machine",
        machine,
        "-accel",
        accel,
        "-m",
        "64",
    ]
    if incoming:
        qemu += ["-incoming", "defer"]
    qemu += ["-qmp", "unix:%s,server=on,wait=off" % sock]
    qemu += list(extra_args)
    if not (user or deny or deny_ioctl):
        return qemu
    wrapper = [python, SECCOMP_EXEC]
    if not (deny or deny_ioctl):
        wrapper.append("--no-filter")
    for spec in deny:
        wrapper += ["--deny", spec]
    for spec in deny_ioctl:
        wrapper += ["--deny-ioctl", spec]
    if user:
        wrapper += ["--user", user]
    return wrapper + ["--"] + qemu


async def _ask(sock, proc, deadline):
    from qemu.qmp import QMPClient
    from qemu.qmp.qmp_client import ExecuteError

    client = QMPClient("hvm-oracle")
    try:
        # the socket appears once QEMU has parsed -qmp; retry until then
        while True:
            if proc.poll() is not None:
                raise OracleError("QEMU exited with status %s before QMP was up" % proc.returncode)
            if os.path.exists(sock):
                try:
                    await client.connect(sock)
                    break
                except Exception:  # ConnectError wraps ECONNREFUSED etc.
                    pass
            if time.monotonic() > deadline:
                raise OracleError("QMP socket did not come up")
            await asyncio.sleep(0.05)
        info = await client.execute("query-version")
        q = info["qemu"]
        version = "%d.%d.%d" % (q["major"], q["minor"], q["micro"])
        try:
            await client.execute(
                "migrate-set-capabilities",
                {"capabilities": [{"capability": "postcopy-ram", "state": True}]},
            )
        except ExecuteError as exc:
            return version, exc.error.error.desc
        return version, None
    finally:
        try:
            await client.disconnect()
        except Exception:  # QEMU may be gone already; nothing to keep
            pass


def ask_qemu(
    user: Optional[str] = None,
    deny: Sequence[str] = (),
    deny_ioctl: Sequence[str] = (),
    qemu_binary: str = DEFAULT_QEMU,
    accel: str = "tcg",
    timeout: float = 30,
    machine: str = "pc",
    python: Optional[str] = None,
    incoming: bool = True,
    prefix: Sequence[str] = (),
    dir_owner: Optional[str] = None,
    extra_args: Sequence[str] = (),
) -> OracleVerdict:
    """Ask QEMU whether it accepts post-copy as ``user`` under a filter.

    ``deny``/``deny_ioctl`` take seccomp_exec.py specs ("userfaultfd:ENOSYS",
    "0xC018AA3F:EINVAL").  QEMU is always killed and reaped and the private
    directory removed.  Raises OracleError when QEMU cannot be asked.

    ``incoming=False`` starts a source-side QEMU instead, which QEMU does
    not check at all (it accepts everywhere): a control for the tests.
    ``prefix`` is a command put right before QEMU (after seccomp_exec.py),
    e.g. ``["setpriv", "--bounding-set", "-sys_ptrace", "--"]``; when the
    prefix switches account itself, name it in ``dir_owner`` so that QEMU can
    create its QMP socket in the private directory (default: ``user``).
    ``extra_args`` are appended to QEMU's command line (memory backends).
    """
    deny = tuple(deny)
    deny_ioctl = tuple(deny_ioctl)
    try:
        import qemu.qmp  # noqa: F401  (PyPI: qemu.qmp)
    except ImportError:
        raise OracleError("the Python package qemu.qmp is not installed (tests/requirements.txt)") from None
    if not os.path.exists(qemu_binary):
        raise OracleError("no QEMU at %s" % qemu_binary)
    pw = None
    owner = dir_owner or user
    if owner:
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            raise OracleError("unknown user %r" % owner) from None
    deadline = time.monotonic() + timeout
    tmpdir = tempfile.mkdtemp(prefix="hvm-qemu-oracle-")
    # QEMU's stderr goes to a file the parent opened (no pipe to fill up,
    # nothing the target account needs to be able to open itself)
    errfile = tempfile.TemporaryFile(prefix="hvm-qemu-oracle-stderr-")
    proc = None
    try:
        os.chmod(tmpdir, 0o700)
        if pw is not None:
            os.chown(tmpdir, pw.pw_uid, pw.pw_gid)
        sock = os.path.join(tmpdir, "qmp.sock")
        cmd = _build_command(qemu_binary, sock, accel, machine, user, deny, deny_ioctl, python or sys.executable, incoming, prefix, extra_args)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errfile,
            cwd=tmpdir,
            start_new_session=True,
        )
        try:
            version, desc = asyncio.run(asyncio.wait_for(_ask(sock, proc, deadline), max(0.001, deadline - time.monotonic())))
        except asyncio.TimeoutError:
            raise OracleError("QEMU did not answer within %ss" % timeout) from None
        except OracleError as exc:
            _stop(proc)
            proc = None
            detail = "; ".join(_stderr_lines(_read(errfile), qemu_binary))
            raise OracleError("%s%s" % (exc, (": " + detail) if detail else "")) from None
        _stop(proc)
        proc = None
        lines = _stderr_lines(_read(errfile), qemu_binary)
        if desc is None:
            return OracleVerdict(True, None, version, None, lines)
        message = desc
        if lines:
            message = "%s (%s)" % (desc, "; ".join(lines))
        return OracleVerdict(False, message, version, desc, lines)
    finally:
        try:
            if proc is not None:
                _stop(proc)
        finally:
            errfile.close()
            shutil.rmtree(tmpdir, ignore_errors=True)


def _read(fileobj):
    fileobj.flush()
    fileobj.seek(0)
    return fileobj.read()


def _stop(proc):
    """Kill QEMU (its whole session) and reap it; return its exit status."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            proc.kill()
        except OSError:
            pass
    return proc.wait()


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="qemu_oracle.py", description="Ask QEMU whether it accepts migrate-set-capabilities postcopy-ram.")
    parser.add_argument("--user")
    parser.add_argument("--deny", action="append", default=[], metavar="SYSCALL[:ERRNO]")
    parser.add_argument("--deny-ioctl", action="append", default=[], metavar="REQUEST[:ERRNO]")
    parser.add_argument("--qemu", default=DEFAULT_QEMU)
    parser.add_argument("--accel", default="tcg")
    parser.add_argument("--machine", default="pc")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--source", action="store_true", help="start without -incoming (QEMU then skips the check)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        verdict = ask_qemu(
            user=args.user,
            deny=args.deny,
            deny_ioctl=args.deny_ioctl,
            qemu_binary=args.qemu,
            accel=args.accel,
            timeout=args.timeout,
            machine=args.machine,
            incoming=not args.source,
        )
    except OracleError as exc:
        sys.stderr.write("qemu_oracle.py: error: %s\n" % exc)
        return 2
    if args.json:
        print(json.dumps(verdict._asdict()))
    else:
        print("QEMU %s: %s" % (verdict.qemu_version, "accepted" if verdict.accepted else "refused: " + verdict.message))
    return 0 if verdict.accepted else 1


if __name__ == "__main__":
    sys.exit(main())
