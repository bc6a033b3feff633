# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The canary's QEMUs as libvirt starts them: transient domains driven with ``virsh`` only.

With ``launcher: libvirt`` both QEMUs are transient libvirt domains made from one XML (no disk,
no NIC, the canary's firmware as a ROM through ``<os><loader type='rom'>``, which libvirt turns
into ``-bios``); the destination is started paused and waits for an incoming migration
(``-incoming defer`` through the ``qemu:commandline`` namespace). So QEMU's own post-copy check
runs inside libvirt's real confinement: its account, its private ``/dev``, its cgroup device
ACL, its seccomp sandbox, its security labels.

Both are libvirt's, not only the destination, because the migration stream must match: libvirt
writes QEMU's command line itself (its machine type alias resolved to a versioned one, ``-S``,
its own ``-global`` settings and default devices, its monitor), and that changes from one libvirt
release to the next. A bare QEMU source built to look the same would be our guess at libvirt's
command line; when the guess is wrong the destination refuses the stream (an unknown RAM block,
a device state it cannot load), which would be the canary's fault, not the host's. Two domains
from the same XML load each other's stream by construction.

QMP goes through ``virsh qemu-monitor-command``; libvirt owns each domain's monitor, so events are
not ours to read: the migration status is polled with ``query-migrate``. QEMU's stderr is in the
domain's log (``/var/log/libvirt/qemu/<name>.log``, written by root's virtlogd), read back through
a descriptor and removed with the domain: nothing persists after the canary.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import stat
import subprocess
import time
from xml.sax.saxutils import escape, quoteattr

from ansible_collections.hypervisor.migration.plugins.module_utils._canary_processes import one_line_words
from ansible_collections.hypervisor.migration.plugins.module_utils._qmp import QMPClosed, QMPCommandError, QMPError, QMPTimeout
from ansible_collections.hypervisor.migration.plugins.module_utils._switch import SAFE_PATH, minimal_environment
from ansible_collections.hypervisor.migration.plugins.module_utils._trust import UntrustedPath, check_chain

__all__ = [
    "DomainError",
    "LIBVIRT_URI",
    "LibvirtDomain",
    "VIRSH_DIRS",
    "VirshError",
    "domain_name",
    "domain_xml",
    "find_virsh",
    "log_words",
    "virsh_argv",
]

LIBVIRT_URI = "qemu:///system"
VIRSH_DIRS = tuple(SAFE_PATH.split(":"))
LOG_DIR = "/var/log/libvirt/qemu"
_QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
# One virsh call may take this long at most (libvirt probes QEMU on its first domain start).
_CALL_CAP = 120.0
_STOP_TIMEOUT = 30.0
_POLL = 0.01
# The domain's log is QEMU's stderr (QEMU's account writes it): read no more than its last lines need.
_LOG_TAIL = 16384
_RUNNING_STATES = ("running", "paused", "in shutdown", "pmsuspended", "blocked")
_NOT_RUNNING = re.compile(r"domain is not running|Domain not found|no domain with matching", re.I)
_QEMU_REFUSED = re.compile(r"unable to execute QEMU command '[^']*': (.*)$", re.S)
# libvirt's own lines in the domain log ("2026-12-01 00:38:02.123+0000: shutting down, ...")
_LIBVIRT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+\d{4}: ")
# QEMU's lines carry -msg timestamp=on's stamp
_QEMU_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z ")


class VirshError(Exception):
    """virsh cannot be used here (none installed, not root's alone, libvirt not answering)."""


class DomainError(QMPError):
    """libvirt could not start a domain; str() is virsh's error, QEMU's own lines included."""


def find_virsh(dirs=VIRSH_DIRS):
    """The real path of virsh in the system's binary directories, checked to be root's alone."""
    for directory in dirs:
        path = os.path.join(directory, "virsh")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            try:
                check_chain(real)
            except UntrustedPath as exc:
                raise VirshError("launcher libvirt: will not run %s: %s" % (real, exc)) from None
            return real
    raise VirshError("launcher libvirt needs virsh (Debian and Ubuntu libvirt-clients, Fedora and RHEL libvirt-client); none in %s" % ", ".join(dirs))


def virsh_argv(virsh, *args):
    return [virsh, "-q", "-c", LIBVIRT_URI] + list(args)


def domain_name(workdir, role):
    """postcopy-canary-XXXXXXXX-<role>, from the work directory's own random name."""
    return "%s-%s" % (os.path.basename(workdir.rstrip("/")), role)


def domain_xml(name, emulator, accel, memory_mb, firmware_path, incoming):
    """A transient domain: no disk, no NIC, no USB, no balloon; the canary's firmware as its ROM.

    ACPI stays on so that no libvirt passes QEMU ``-no-acpi`` (gone in QEMU 9.0, still used by
    libvirt 9.0 for a domain without it).
    """
    incoming_args = (
        "  <qemu:commandline>\n    <qemu:arg value='-incoming'/>\n    <qemu:arg value='defer'/>\n  </qemu:commandline>\n" if incoming else ""
    )
    return (
        "<domain type=%s xmlns:qemu=%s>\n"
        "  <name>%s</name>\n"
        "  <memory unit='MiB'>%d</memory>\n"
        "  <vcpu>1</vcpu>\n"
        "  <os>\n"
        "    <type arch='x86_64' machine='pc'>hvm</type>\n"
        "    <loader type='rom' readonly='yes'>%s</loader>\n"
        "  </os>\n"
        "  <features><acpi/></features>\n"
        "  <on_poweroff>destroy</on_poweroff>\n"
        "  <on_reboot>destroy</on_reboot>\n"
        "  <on_crash>destroy</on_crash>\n"
        "  <devices>\n"
        "    <emulator>%s</emulator>\n"
        "    <controller type='usb' model='none'/>\n"
        "    <memballoon model='none'/>\n"
        "  </devices>\n"
        "%s"
        "</domain>\n"
    ) % (
        quoteattr("kvm" if accel == "kvm" else "qemu"),
        quoteattr(_QEMU_NS),
        escape(name),
        int(memory_mb),
        escape(firmware_path),
        escape(emulator),
        incoming_args,
    )


def _read_tail(path, limit):
    """The last limit bytes of root's regular file at path, opened without following a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0:
            return b""
        return os.pread(fd, limit, max(0, info.st_size - limit))
    finally:
        os.close(fd)


def log_words(text):
    """QEMU's own lines in a domain log: after libvirt's command line, libvirt's lines left out."""
    lines = text.splitlines()
    continued = [index for index, line in enumerate(lines) if line.endswith("\\")]
    # The command line's last argument is the first line after the last continued one.
    after = lines[continued[-1] + 2:] if continued else lines
    own = [_QEMU_STAMP.sub("", line) for line in after if not _LIBVIRT_LINE.match(line)]
    return one_line_words("\n".join(own))


def _virsh_error(returncode, out, err):
    text = (err or out or "").strip()
    return re.sub(r"^error: ", "", text.replace("\n", " ")) or "virsh exited with status %d" % returncode


class LibvirtDomain:
    """One QEMU as a transient libvirt domain; the same calls as _canary_processes.QemuProcess."""

    def __init__(self, virsh, name, xml, paused, log_dir=LOG_DIR):
        self.virsh = virsh
        self.name = name
        self.xml = xml
        self.paused = paused
        # libvirt always starts QEMU with -S: a destination must be told to run once its RAM arrives.
        self.starts_paused = True
        self.log_path = os.path.join(log_dir, name + ".log")
        self.command = virsh_argv(virsh, "create", "/dev/stdin", *(["--paused"] if paused else []))
        self._created = False

    def _run(self, args, timeout, stdin_text=None):
        try:
            return subprocess.run(
                virsh_argv(self.virsh, *args),
                input=(stdin_text or "").encode("utf-8"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=minimal_environment(),
                timeout=max(0.1, min(timeout, _CALL_CAP)),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise QMPTimeout("virsh %s %s did not answer in time" % (args[0], self.name)) from None

    def _text(self, proc):
        return proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")

    def start(self, timeout):
        self._created = True  # from here on, stop() destroys whatever virsh made
        proc = self._run(self.command[4:], timeout, self.xml)
        if proc.returncode != 0:
            out, err = self._text(proc)
            raise DomainError("virsh create %s: %s" % (self.name, _virsh_error(proc.returncode, out, err)))

    def connect(self, timeout):
        """libvirt has connected to QEMU's monitor before ``virsh create`` returns."""

    def execute(self, command, arguments=None, timeout=10.0):
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        proc = self._run(["qemu-monitor-command", self.name, json.dumps(request)], timeout)
        out, err = self._text(proc)
        if proc.returncode != 0:
            message = _virsh_error(proc.returncode, out, err)
            if _NOT_RUNNING.search(message):
                raise QMPClosed("%s: %s" % (self.name, message))
            refused = _QEMU_REFUSED.search(message)
            raise QMPCommandError(command, {"desc": refused.group(1).strip() if refused else message})
        try:
            reply = json.loads(out)
        except ValueError:
            raise QMPError("%s: virsh printed a reply that is not JSON: %r" % (self.name, out[:200])) from None
        if "error" in reply:
            raise QMPCommandError(command, reply["error"])
        return reply.get("return")

    def wait_status(self, wanted, final, note, timeout):
        """Poll query-migrate until a status in wanted or final; note(status) sees each one seen."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.execute("query-migrate", timeout=max(0.1, deadline - time.monotonic())) or {}
            status = info.get("status")
            # A page request is only ever made in postcopy-active: a source that counted some was
            # there, even when the poll did not land inside it.
            if status in final and (info.get("ram") or {}).get("postcopy-requests"):
                note("postcopy-active")
            note(status)
            if status in wanted or status in final:
                return status
            if time.monotonic() >= deadline:
                raise QMPTimeout("%s: migration status %s, waited for %s" % (self.name, status, ", ".join(wanted) or "the end"))
            time.sleep(_POLL)

    def alive(self):
        proc = self._run(["domstate", self.name], _STOP_TIMEOUT)
        return proc.returncode == 0 and self._text(proc)[0].strip() in _RUNNING_STATES

    def wait_exit(self, timeout):
        """libvirt has reaped QEMU and closed its log by the time virsh reports a domain gone."""

    def words(self):
        """QEMU's own lines from the domain's log, as one line; None when nothing."""
        try:
            check_chain(os.path.dirname(self.log_path))
            data = _read_tail(self.log_path, _LOG_TAIL)
        except (OSError, UntrustedPath):
            return None
        return log_words(data.decode("utf-8", "replace"))

    def stop(self):
        """Destroy the domain (transient: it is then gone from libvirt) and remove its log.

        A ``virsh create`` cut short by a timeout may still be starting the domain in libvirt:
        destroy is repeated until libvirt no longer knows the name.
        """
        if not self._created:
            return
        deadline = time.monotonic() + _STOP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self._run(["destroy", self.name], deadline - time.monotonic())
                if self._run(["domstate", self.name], deadline - time.monotonic()).returncode != 0:
                    break
            except QMPTimeout:
                break
            time.sleep(_POLL * 10)
        try:
            check_chain(os.path.dirname(self.log_path))
            os.unlink(self.log_path)
        except (OSError, UntrustedPath):
            pass
