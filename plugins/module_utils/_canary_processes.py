# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The canary's processes, files and signals: everything it creates, and its removal.

``Workspace`` is the private directory both QEMUs work from. ``QemuProcess`` is one bare QEMU
started from it as QEMU's account, reached over its own QMP socket; the libvirt canary's
domains (``_canary_libvirt.LibvirtDomain``) answer the same calls: ``command``, ``start()``,
``connect(timeout, alive)``, ``execute(command, arguments, timeout)``,
``wait_status(wanted, final, note, timeout)``, ``alive()``, ``wait_exit(timeout)``, ``words()``
and ``stop()``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile

from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import account_switch_needed
from ansible_collections.hypervisor.migration.plugins.module_utils._qmp import QMPClient
from ansible_collections.hypervisor.migration.plugins.module_utils._switch import ChildError, become, minimal_environment

__all__ = [
    "CanaryInterrupted",
    "INTERRUPT_SIGNALS",
    "QemuProcess",
    "Workspace",
    "one_line_words",
    "signals_blocked",
    "signals_interrupt",
]

_REAP_TIMEOUT = 10.0
_STDERR_LINES = 3
# QEMU's account can write to QEMU's stderr: read back no more than its last lines can need.
_STDERR_TAIL = 16384
INTERRUPT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
# <tmpdir>/postcopy-canary-XXXXXXXX/qemu/destination.qmp must fit in sun_path (108 bytes).
_MAX_TMPDIR_LEN = 56


class CanaryInterrupted(Exception):
    """The module got SIGTERM/SIGINT/SIGHUP; both QEMUs are gone and the work dir removed."""

    def __init__(self, signum):
        self.signum = signum
        super(CanaryInterrupted, self).__init__(
            "postcopy canary interrupted by %s; both QEMU processes were killed and the work directory removed" % signal.Signals(signum).name
        )


# prctl(PR_SET_PDEATHSIG, SIGKILL): QEMU dies with the module even when the module is SIGKILLed.
_PR_SET_PDEATHSIG = 1


def _before_exec(account, parent):
    """What the forked child runs before it becomes QEMU: _switch's account switch, then QEMU's own signals.

    Used as subprocess's preexec_fn: the module runs a single thread, so the forked child cannot
    inherit a lock held elsewhere (subprocess's user= and group= would need Python 3.9). A failure
    goes to QEMU's stderr (the canary's log by then), where words() finds it, and the child exits:
    the canary then reports a QEMU that died at start.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def prepare():
        try:
            if account_switch_needed(account):
                become(account)
            # A credential change clears the parent-death signal, so it is set after the switch.
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                raise ChildError("the module exited before QEMU started")
        except ChildError as exc:
            os.write(2, ("postcopy canary: %s\n" % exc).encode("utf-8", "replace"))
            os._exit(1)
        # The module holds SIGTERM/SIGINT/SIGHUP back while starting QEMU, which must get them as usual.
        for name in INTERRUPT_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])

    return prepare


@contextlib.contextmanager
def signals_blocked():
    """Hold SIGTERM/SIGINT/SIGHUP back while starting a process or cleaning up, so neither is half done."""
    signals = {getattr(signal, name) for name in INTERRUPT_SIGNALS}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def signals_interrupt():
    """Turn the first SIGTERM/SIGINT/SIGHUP into CanaryInterrupted, so cleanup runs; later ones are ignored."""
    fired = []

    def interrupt(signum, frame):
        if not fired:
            fired.append(signum)
            raise CanaryInterrupted(signum)

    previous = {}
    try:
        for name in INTERRUPT_SIGNALS:
            number = getattr(signal, name)
            previous[number] = signal.signal(number, interrupt)
    except ValueError:
        pass  # not the main thread: signals cannot be caught here, PDEATHSIG still covers QEMU
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _short_tmpdir():
    """The system's temporary directory, unless its path is too long for a socket or has a comma (QEMU's option separator)."""
    base = tempfile.gettempdir()
    if len(base) > _MAX_TMPDIR_LEN or "," in base:
        return "/tmp"
    return base


class Workspace:
    """Where the canary works, split by who may change what.

    ``path`` is root's: mode 0711, so QEMU's account may pass through it but not list or
    change it; it holds the firmware, which QEMU only reads. ``qemu_dir`` inside it is the
    account's (0700): QEMU creates its sockets there. Root never opens a file by name in
    ``qemu_dir``: QEMU's stderr goes to unnamed files root holds, read back through the
    descriptors, and QMP sockets are trusted only once the kernel names their peer.
    """

    def __init__(self, account):
        self.account = account
        self.path = None
        self.qemu_dir = None

    def create(self):
        with signals_blocked():  # a signal between mkdtemp() and the assignment would leak the dir
            self.path = tempfile.mkdtemp(prefix="postcopy-canary-", dir=_short_tmpdir())
        os.chmod(self.path, 0o711)
        self.qemu_dir = os.path.join(self.path, "qemu")
        os.mkdir(self.qemu_dir, 0o700)
        if account_switch_needed(self.account):
            os.chown(self.qemu_dir, self.account.uid, self.account.gid)
        return self.path

    def write_file(self, name, data):
        """A read-only file for QEMU in root's directory."""
        path = os.path.join(self.path, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return path

    def unnamed_file(self):
        """A file with no name (O_TMPFILE where the kernel has it) in root's directory: nothing to swap."""
        return tempfile.TemporaryFile(dir=self.path)

    def cleanup(self):
        if self.path:
            # rmtree works through directory descriptors here (shutil.rmtree.avoids_symlink_attacks),
            # so a link QEMU's account plants in its directory is removed, not followed.
            shutil.rmtree(self.path, ignore_errors=True)


def one_line_words(text):
    """QEMU's last lines, warnings left out, as one line; None when nothing."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and "warning:" not in line]
    return "; ".join(lines[-_STDERR_LINES:]) or None


class QemuProcess:
    """One bare QEMU as QEMU's account, in its own session, reached over its QMP socket."""

    def __init__(self, workspace, role, argv, qmp_path):
        self.workspace = workspace
        self.role = role
        self.command = list(argv)
        self.qmp_path = qmp_path
        self.process = None
        self.qmp = None
        self._log = None

    def start(self, timeout=None):
        """Start QEMU; it is ready once connect() returns (timeout is connect's to wait)."""
        self._log = self.workspace.unnamed_file()
        with signals_blocked():
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._log,
                cwd=self.workspace.qemu_dir,
                env=minimal_environment(self.workspace.qemu_dir),
                close_fds=True,
                # Its own session and process group: cleanup kills everything QEMU started.
                start_new_session=True,
                preexec_fn=_before_exec(self.workspace.account, os.getpid()),
            )

    def connect(self, timeout):
        self.qmp = QMPClient(self.qmp_path, peer_pid=self.process.pid)
        self.qmp.connect(timeout, alive=self.alive)

    def execute(self, command, arguments=None, timeout=10.0):
        return self.qmp.execute(command, arguments, timeout=timeout)

    def wait_status(self, wanted, final, note, timeout):
        """Watch MIGRATION events until a status in wanted or final; note(status) sees each."""

        def match(event):
            if event.get("event") != "MIGRATION":
                return False
            status = event.get("data", {}).get("status")
            note(status)
            return status in wanted or status in final

        return self.qmp.wait_event(match, timeout)["data"]["status"]

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout):
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def words(self):
        """What QEMU wrote to stderr, warnings left out, as one line; None when nothing."""
        if self._log is None:
            return None
        return one_line_words(_tail(self._log.fileno(), _STDERR_TAIL).decode("utf-8", "replace"))

    def stop(self):
        if self.qmp is not None:
            self.qmp.close()
        if self.process is not None:
            _kill_group(self.process)
        if self._log is not None:
            self._log.close()


def _tail(fd, limit):
    """The last limit bytes of an open file, read through its descriptor."""
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, limit, max(0, size - limit))
    except OSError:
        return b""


def _kill_group(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass  # already gone
    try:
        process.wait(timeout=_REAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
