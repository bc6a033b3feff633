# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The post-copy canary: a real loopback post-copy migration between two throw-away QEMUs.

The facts module reasons about the kernel; this asks QEMU itself. A source QEMU boots a
tiny guest generated here (``_canary_guest``: a boot sector that keeps writing across its RAM),
a destination QEMU waits with ``-incoming defer``, and the source migrates to it over a unix
socket: pre-copy throttled so that it cannot finish, then ``migrate-start-postcopy``. The
destination then runs the guest before its RAM has arrived, so every page the guest
touches first is a userfaultfd fault served by the source (``postcopy-requests``).

Who starts the two QEMUs is the launcher: ``qemu``, two bare QEMUs as the account QEMU runs as
(``_canary_processes``); ``libvirt``, two transient libvirt domains (``_canary_libvirt``), so that
QEMU checks userfaultfd inside libvirt's confinement. This file holds the settings, the command
lines and the migration driver (the QMP steps), the same for both.

Everything runs from a private work directory and is removed on every way out.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import os
import platform
import stat
import time
from collections import namedtuple

from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import (
    AccountError,
    account_switch_needed,
    resolve_account,
    to_dict,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._canary_guest import (
    GUEST_COUNTER_ADDR,
    GUEST_MAGIC,
    GUEST_MAGIC_ADDR,
    GUEST_STRIDE,
    boot_sector,
    firmware,
    parse_xp,
    xp_command,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._canary_libvirt import (
    LibvirtDomain,
    VirshError,
    domain_name,
    domain_xml,
    find_virsh,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._canary_processes import (
    CanaryInterrupted,
    QemuProcess,
    Workspace,
    signals_blocked,
    signals_interrupt,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._launcher import (
    LAUNCHER_CHOICES,
    choose_launcher,
    libvirt_daemon,
    read_libvirt_settings,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._qemu import (
    QemuBinaryError,
    candidate_binaries,
    find_qemu_binary,
    qemu_version,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._qmp import (
    QMPClosed,
    QMPCommandError,
    QMPError,
    QMPTimeout,
)

__all__ = [
    "ACCEL_CHOICES",
    "CanaryError",
    "CanaryInterrupted",
    "CanarySettings",
    "GUEST_COUNTER_ADDR",
    "GUEST_MAGIC",
    "GUEST_MAGIC_ADDR",
    "GUEST_STRIDE",
    "KVM_DEVICE",
    "LAUNCHER_CHOICES",
    "MEMORY_MB_RANGE",
    "ROLES",
    "TIMEOUT_RANGE",
    "SANDBOX_OPTIONS",
    "boot_sector",
    "firmware",
    "choose_accel",
    "kvm_usable_by",
    "libvirt_domain_xml",
    "make_settings",
    "planned_facts",
    "qemu_command",
    "run_canary",
]

ACCEL_CHOICES = ("auto", "kvm", "tcg")
ROLES = ("source", "destination")
KVM_DEVICE = "/dev/kvm"
MEMORY_MB_RANGE = (16, 65536)
TIMEOUT_RANGE = (1, 3600)
# libvirt's default seccomp sandbox (qemu.conf seccomp_sandbox = 1).
SANDBOX_OPTIONS = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

# Pre-copy at 16 MiB/s cannot finish a guest that dirties every page several times a second,
# so the migration is certainly still in pre-copy when post-copy is asked for.
_PRECOPY_BANDWIDTH = 16 << 20
# The guest must have made one whole pass before the migration starts (counter >= 2): then
# every page it writes is non-zero on the source, and the destination must fetch each one.
_GUEST_READY_PASSES = 2
_POLL = 0.01
_EXIT_GRACE = 2.0
_FINAL_STATUSES = ("completed", "failed", "cancelled", "postcopy-paused")
_WORKDIR_PLACEHOLDER = "<workdir>"

# virsh: the real path of virsh when launcher is libvirt, else None.
CanarySettings = namedtuple("CanarySettings", "qemu_binary account accel memory_mb timeout sandbox launcher virsh", defaults=("qemu", None))


class CanaryError(Exception):
    """The canary cannot run at all (bad option, no QEMU): the task fails with this line."""


class _Refused(Exception):
    """The canary ran but post-copy did not work; the message is QEMU's own where it gave one."""


# ---------------------------------------------------------------------------------------------
# Settings: options resolved against the host.


def kvm_usable_by(account, path=KVM_DEVICE):
    """Whether account may open the KVM device read-write, judged from its mode as the kernel does."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISCHR(info.st_mode):
        return False
    if account.uid == 0:
        return True
    if info.st_uid == account.uid:
        bits = info.st_mode >> 6
    elif info.st_gid == account.gid or info.st_gid in account.groups:
        bits = info.st_mode >> 3
    else:
        bits = info.st_mode
    return bits & 0o6 == 0o6


def choose_accel(accel, account, kvm_path=KVM_DEVICE):
    """auto means kvm when the account can use the KVM device, tcg otherwise."""
    if accel != "auto":
        return accel
    return "kvm" if kvm_usable_by(account, kvm_path) else "tcg"


def _is_x86_qemu(path):
    name = os.path.basename(path)
    if "x86_64" in name or "i386" in name:
        return True
    # RHEL's /usr/libexec/qemu-kvm is for the host's own architecture.
    return name == "qemu-kvm" and platform.machine() in ("x86_64", "amd64", "i386", "i686")


def _find_binary(spec):
    try:
        binary = find_qemu_binary(spec)
    except QemuBinaryError as exc:
        raise CanaryError(str(exc)) from None
    if binary is None:
        raise CanaryError("no QEMU binary found (looked for %s); install QEMU or set qemu_binary" % ", ".join(candidate_binaries()))
    if not _is_x86_qemu(binary):
        raise CanaryError("the canary boots an x86 guest and %s is not an x86 QEMU; set qemu_binary to a qemu-system-x86_64" % binary)
    return binary


def _resolve(spec, libvirt_settings):
    try:
        return resolve_account(spec, libvirt_settings["user"], libvirt_settings["group"])
    except AccountError as exc:
        raise CanaryError("probe_user: %s" % exc) from None


def _find_account(spec, launcher, libvirt_settings):
    """The same account the probe judges: qemu.conf's user, read with libvirt's grammar.

    Under libvirt, QEMU runs as libvirt's user and the canary's socket directory must be that
    account's: probe_user may name it, but no other.
    """
    account = _resolve(spec, libvirt_settings)
    if launcher == "libvirt" and spec != "auto":
        libvirts = _resolve("auto", libvirt_settings)
        if account.uid != libvirts.uid:
            raise CanaryError(
                "probe_user %s: with launcher libvirt QEMU runs as libvirt's user %s (uid %d); leave probe_user auto or set qemu.conf's user"
                % (spec, libvirts.name, libvirts.uid)
            )
    if account_switch_needed(account) and os.geteuid() != 0:
        raise CanaryError("probe_user %s (uid %d) needs root to switch to; the module runs as uid %d (use become)" % (account.name, account.uid, os.geteuid()))
    return account


def _find_virsh():
    try:
        return find_virsh()
    except VirshError as exc:
        raise CanaryError(str(exc)) from None


def _libvirt_accel(accel):
    """libvirt grants /dev/kvm to its domains itself: auto is kvm wherever the host has the device."""
    if accel != "auto":
        return accel
    try:
        return "kvm" if stat.S_ISCHR(os.stat(KVM_DEVICE).st_mode) else "tcg"
    except OSError:
        return "tcg"


def make_settings(qemu_binary="auto", probe_user="auto", accel="auto", memory_mb=256, timeout=60, sandbox=True, launcher="auto"):
    """Resolve the options, checked by the module, on this host; CanaryError in one line when the canary cannot run there.

    Under libvirt, sandbox is libvirt's own (qemu.conf seccomp_sandbox), not the option.
    """
    binary = _find_binary(qemu_binary)
    kind = choose_launcher(launcher, libvirt_daemon())
    libvirt_settings = {name: item["value"] for name, item in read_libvirt_settings(None)[0].items()}
    account = _find_account(probe_user, kind, libvirt_settings)
    if kind == "libvirt":
        sandboxed = libvirt_settings["seccomp_sandbox"] != 0
        return CanarySettings(binary, account, _libvirt_accel(accel), int(memory_mb), int(timeout), sandboxed, kind, _find_virsh())
    return CanarySettings(binary, account, choose_accel(accel, account), int(memory_mb), int(timeout), bool(sandbox), kind, None)


# ---------------------------------------------------------------------------------------------
# Command lines.


def _paths(workdir):
    """Root's firmware in workdir; QEMU's sockets in workdir/qemu, the account's directory."""
    sockets = os.path.join(workdir, "qemu")
    return {
        "firmware": os.path.join(workdir, "firmware.bin"),
        "migration": os.path.join(sockets, "migration.sock"),
        "source": os.path.join(sockets, "source.qmp"),
        "destination": os.path.join(sockets, "destination.qmp"),
    }


def qemu_command(settings, role, workdir):
    """The QEMU argv for role "source" or "destination"; both are identical but for -incoming."""
    paths = _paths(workdir)
    argv = [
        settings.qemu_binary,
        "-accel", settings.accel,
        "-m", str(settings.memory_mb),
        "-display", "none",
        "-nodefaults",
        "-no-user-config",
        "-serial", "none",
        # The guest is its own firmware: no disk, no SeaBIOS (slow under nested KVM).
        "-bios", paths["firmware"],
        "-qmp", "unix:%s,server=on,wait=off" % paths[role],
    ]
    if settings.sandbox:
        argv += ["-sandbox", SANDBOX_OPTIONS]
    if role == "destination":
        argv += ["-incoming", "defer"]
    return argv


def libvirt_domain_xml(settings, role, workdir):
    """The domain XML for role: both roles alike but for the destination's -incoming defer."""
    paths = _paths(workdir)
    return domain_xml(domain_name(workdir, role), settings.qemu_binary, settings.accel, settings.memory_mb, paths["firmware"], role == "destination")


def _endpoint(settings, workspace, role):
    """The QEMU for role as its launcher starts it: a bare process or a transient libvirt domain."""
    if settings.launcher == "libvirt":
        xml = libvirt_domain_xml(settings, role, workspace.path)
        return LibvirtDomain(settings.virsh, domain_name(workspace.path, role), xml, paused=role == "destination")
    return QemuProcess(workspace, role, qemu_command(settings, role, workspace.path), _paths(workspace.path)[role])


# ---------------------------------------------------------------------------------------------
# The migration itself.


def _empty_facts(settings):
    return {
        "ok": None,
        "status": "none",
        "error": None,
        "postcopy_active_seen": False,
        "total_time_ms": None,
        "downtime_ms": None,
        "setup_time_ms": None,
        "postcopy_requests": None,
        "pages_transferred": None,
        "bytes_transferred": None,
        "guest_running_after": False,
        "wall_time_ms": None,
        "launcher": settings.launcher,
        "qemu_binary": settings.qemu_binary,
        "qemu_version": qemu_version(settings.qemu_binary, settings.timeout),
        "accel": settings.accel,
        "memory_mb": settings.memory_mb,
        "sandbox": settings.sandbox,
        "run_as": to_dict(settings.account),
        "commands": {},
        "domains": {},
    }


def _record_commands(facts, role, endpoint):
    """What runs for role: QEMU's argv, or virsh's argv and the domain XML it reads on stdin."""
    facts["commands"][role] = endpoint.command
    xml = getattr(endpoint, "xml", None)
    if xml:
        facts["domains"][role] = xml


class _PlannedWorkspace:
    """A work directory that check mode shows by name only."""

    def __init__(self, path):
        self.path = path


def planned_facts(settings):
    """Check mode: what would run, nothing started; the work dir is shown as <workdir>."""
    facts = _empty_facts(settings)
    for role in ROLES:
        _record_commands(facts, role, _endpoint(settings, _PlannedWorkspace(_WORKDIR_PLACEHOLDER), role))
    return facts


def _ram_stats(info):
    ram = info.get("ram") or {}
    return {
        "total_time_ms": info.get("total-time"),
        "downtime_ms": info.get("downtime"),
        "setup_time_ms": info.get("setup-time"),
        # Counted on the source: each is a page the destination faulted on and asked for.
        "postcopy_requests": ram.get("postcopy-requests"),
        # "normal" pages travel whole; zero pages ("duplicate") only as a marker.
        "pages_transferred": ram.get("normal"),
        "bytes_transferred": ram.get("transferred"),
    }


@contextlib.contextmanager
def _blame(role):
    """Mark a QMP failure with the QEMU it came from, whose stderr then explains it."""
    try:
        yield
    except QMPError as exc:
        exc.role = role
        raise


class _Canary:
    """One run: two QEMUs (processes or domains, see _endpoint) driven over QMP until the migration ends."""

    def __init__(self, settings, workspace, facts):
        self.settings = settings
        self.workspace = workspace
        self.facts = facts
        self.deadline = time.monotonic() + settings.timeout
        self.step = "starting QEMU"
        self.qemu = {}

    def left(self):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise QMPTimeout("deadline passed")
        return remaining

    def run(self):
        paths = _paths(self.workspace.path)
        self.workspace.write_file("firmware.bin", firmware(self.settings.memory_mb))
        for role in ROLES:
            self.qemu[role] = _endpoint(self.settings, self.workspace, role)
            _record_commands(self.facts, role, self.qemu[role])
            self.step = "starting the %s QEMU" % role
            with _blame(role), signals_blocked():
                self.qemu[role].start(self.left())
        for role in ROLES:
            self.step = "waiting for the %s QEMU's QMP socket" % role
            with _blame(role):
                self.qemu[role].connect(self.left())
        self._enable_postcopy(paths["migration"])
        self._wait_guest_writing()
        self._migrate(paths["migration"])
        self._check_guest_after()

    def close(self):
        """Stop every QEMU started (a domain is destroyed and its log removed)."""
        for endpoint in self.qemu.values():
            endpoint.stop()

    def _execute(self, role, command, arguments=None):
        with _blame(role):
            return self.qemu[role].execute(command, arguments, timeout=self.left())

    def _enable_postcopy(self, uri):
        self.step = "enabling post-copy"
        capabilities = [{"capability": "events", "state": True}, {"capability": "postcopy-ram", "state": True}]
        # The destination is where QEMU checks userfaultfd: "Postcopy is not supported" comes from here.
        for role in ("destination", "source"):
            self._execute(role, "migrate-set-capabilities", {"capabilities": capabilities})
        self._execute("destination", "migrate-incoming", {"uri": "unix:%s" % uri})
        if getattr(self.qemu["destination"], "starts_paused", False):
            # libvirt starts QEMU with -S; cont while incoming makes it run once the guest arrives.
            self._execute("destination", "cont")

    def _guest_words(self, role):
        reply = self._execute(role, "human-monitor-command", {"command-line": xp_command()})
        return parse_xp(reply or "")

    def _wait_guest_writing(self):
        self.step = "waiting for the guest to boot and make one pass over its RAM"
        while True:
            counter, magic = self._guest_words("source")
            if magic == GUEST_MAGIC and counter >= _GUEST_READY_PASSES:
                return
            self.left()
            time.sleep(_POLL)

    def _wait_status(self, role, wanted):
        """Wait for a migration status in wanted or a final one; what is seen goes to the facts."""

        def note(status):
            if status == "postcopy-active":
                self.facts["postcopy_active_seen"] = True
            if role == "source":
                self.facts["status"] = status

        with _blame(role):
            return self.qemu[role].wait_status(wanted, _FINAL_STATUSES, note, self.left())

    def _migrate(self, uri):
        self.step = "starting the migration"
        # max-postcopy-bandwidth 0 (unlimited) takes over from max-bandwidth when post-copy
        # starts, so the throttle that keeps pre-copy from finishing is lifted right then.
        self._execute("source", "migrate-set-parameters", {"max-bandwidth": _PRECOPY_BANDWIDTH, "max-postcopy-bandwidth": 0})
        self._execute("source", "migrate", {"uri": "unix:%s" % uri})
        self.step = "waiting for pre-copy to become active"
        status = self._wait_status("source", ("active",))
        if status == "active":
            self.step = "switching to post-copy"
            self._execute("source", "migrate-start-postcopy")
            status = self._wait_status("source", ("postcopy-active",))
        if status == "postcopy-active":
            self.step = "waiting for post-copy to complete on the source"
            status = self._wait_status("source", ())
        info = self._execute("source", "query-migrate")
        self.facts.update(_ram_stats(info))
        if status != "completed":
            raise _Refused(info.get("error-desc") or self._destination_error(status))
        self.step = "waiting for the destination to complete"
        status = self._wait_status("destination", ())
        if status != "completed":
            raise _Refused(self._destination_error(status))
        if not self.facts["postcopy_active_seen"]:
            raise _Refused("the migration completed without entering post-copy")

    def _destination_error(self, status):
        """QEMU's reason, from the destination's side: its error-desc, else its stderr."""
        if self.qemu["destination"].alive():
            try:
                desc = self._execute("destination", "query-migrate").get("error-desc")
            except QMPError:
                desc = None
            if desc:
                return desc
        return self.qemu["destination"].words() or "the migration ended in status %s" % status

    def _check_guest_after(self):
        self.step = "checking the guest on the destination"
        running = self._execute("destination", "query-status").get("status")
        if running != "running":
            raise _Refused("the guest is %s on the destination after the migration, not running" % running)
        first, magic = self._guest_words("destination")
        if magic != GUEST_MAGIC:
            raise _Refused("the guest's memory on the destination is not the guest's: no canary mark at 0x%x" % GUEST_MAGIC_ADDR)
        # One pass over the guest's RAM can take seconds on a loaded host under nested KVM,
        # so the counter gets until the deadline to move.
        self.step = "waiting for the guest's pass counter to move on the destination"
        while self._guest_words("destination")[0] == first:
            self.left()
            time.sleep(_POLL)
        self.facts["guest_running_after"] = True


def _error_text(canary, exc):
    """One line for facts.error: QEMU's own words whenever there are any."""
    if isinstance(exc, QMPTimeout):
        return "timed out after %d s %s" % (canary.settings.timeout, canary.step)
    role = getattr(exc, "role", None)
    qemu = canary.qemu.get(role)
    if isinstance(exc, QMPCommandError):
        # QEMU before 8.0 puts the reason ("userfaultfd not available: ...") on stderr only.
        words = qemu.words() if qemu else None
        return "%s (%s)" % (exc, words) if words else str(exc)
    if isinstance(exc, QMPClosed) and qemu is not None:
        # The socket closes a moment before the process is gone and its stderr complete.
        qemu.wait_exit(_EXIT_GRACE)
        return qemu.words() or "the %s QEMU exited while %s" % (role, canary.step)
    return str(exc)


def run_canary(settings):
    """Run the canary; the facts. Interrupted by a signal: CanaryInterrupted, after cleanup."""
    started = time.monotonic()
    facts = _empty_facts(settings)
    with signals_interrupt():
        workspace = Workspace(settings.account)
        canary = _Canary(settings, workspace, facts)
        try:
            workspace.create()
            canary.run()
            facts["ok"] = True
        except (QMPError, _Refused) as exc:
            facts["ok"] = False
            facts["error"] = _error_text(canary, exc)
        except OSError as exc:  # no work dir, no process: the canary cannot run at all
            raise CanaryError("could not run the canary: %s" % exc) from None
        finally:
            with signals_blocked():
                canary.close()
                workspace.cleanup()
    facts["wall_time_ms"] = round((time.monotonic() - started) * 1000.0, 1)
    return facts
