# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The post-copy canary: a real loopback post-copy migration between two throw-away QEMUs.

The facts module reasons about the kernel; this asks QEMU itself. A source QEMU boots a
tiny guest generated here (a boot sector that keeps writing across its RAM), a
destination QEMU waits with ``-incoming defer``, and the source migrates to it over a unix
socket: pre-copy throttled so that it cannot finish, then ``migrate-start-postcopy``. The
destination then runs the guest before its RAM has arrived, so every page the guest
touches first is a userfaultfd fault served by the source (``postcopy-requests``).

The guest writes one page in every eight (GUEST_STRIDE). Every page it writes is dirty and
non-zero, so it must really travel; the seven between stay zero and cross as zero pages. Writing
every page made the canary twice as long (the guest's first pass, and placing 65,536 pages
with UFFDIO_COPY) and changed nothing the canary proves: page requests stay in the hundreds
or thousands either way (measured 969-1,972 TCG, 462-1,015 KVM at 256 MiB).

Both QEMUs run as the account QEMU runs as on the host, in their own process groups,
from a private work directory; all of it is removed on every way out.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import os
import platform
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections import namedtuple

from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import (
    AccountError,
    account_switch_needed,
    resolve_account,
    to_dict,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._launcher import read_libvirt_settings
from ansible_collections.hypervisor.migration.plugins.module_utils._options import range_error, text_error
from ansible_collections.hypervisor.migration.plugins.module_utils._qemu import (
    QemuBinaryError,
    candidate_binaries,
    find_qemu_binary,
    qemu_version,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._qmp import (
    QMPClient,
    QMPClosed,
    QMPCommandError,
    QMPError,
    QMPTimeout,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._switch import minimal_environment

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
    "MEMORY_MB_RANGE",
    "TIMEOUT_RANGE",
    "SANDBOX_OPTIONS",
    "boot_sector",
    "firmware",
    "choose_accel",
    "kvm_usable_by",
    "make_settings",
    "option_errors",
    "planned_facts",
    "qemu_command",
    "run_canary",
]

ACCEL_CHOICES = ("auto", "kvm", "tcg")
KVM_DEVICE = "/dev/kvm"
MEMORY_MB_RANGE = (16, 65536)
TIMEOUT_RANGE = (1, 3600)
# libvirt's default seccomp sandbox (qemu.conf seccomp_sandbox = 1).
SANDBOX_OPTIONS = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

# Guest memory layout: the boot sector keeps a pass counter and a magic word in free low
# memory, so QMP can tell that the guest runs, and that it still runs after the migration.
GUEST_COUNTER_ADDR = 0x500
GUEST_MAGIC_ADDR = 0x504
GUEST_MAGIC = 0x59524E43  # "CNRY" in little-endian memory
_BOOT_ADDR = 0x7C00
_WRITE_FROM = 0x100000  # the first megabyte holds the BIOS hole; start above it
# Below 2 GiB all RAM is contiguous on every PC machine type (q35 puts its PCI hole there).
_WRITE_LIMIT_MB = 2048
# One page in eight: the pages between stay zero (see the module docstring).
GUEST_STRIDE = 8 * 4096
_ROM_SIZE = 0x10000  # QEMU takes -bios images in multiples of 64 KiB
_ROM_SEGMENT = 0xF000  # where the last 64 KiB of the BIOS image appear below 1 MiB
_ROM_SECTOR_OFFSET = 0x100
_RESET_VECTOR_OFFSET = 0xFFF0  # the CPU starts at F000:FFF0, the image's last 16 bytes
_CODE_SELECTOR = 0x08
_DATA_SELECTOR = 0x10

# Pre-copy at 16 MiB/s cannot finish a guest that dirties every page several times a second,
# so the migration is certainly still in pre-copy when post-copy is asked for.
_PRECOPY_BANDWIDTH = 16 << 20
# The guest must have made one whole pass before the migration starts (counter >= 2): then
# every page it writes is non-zero on the source, and the destination must fetch each one.
_GUEST_READY_PASSES = 2
_POLL = 0.01
_REAP_TIMEOUT = 10.0
_EXIT_GRACE = 2.0
_STDERR_LINES = 3
# QEMU's account can write to QEMU's stderr: read back no more than its last lines can need.
_STDERR_TAIL = 16384
_INTERRUPT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
_FINAL_STATUSES = ("completed", "failed", "cancelled", "postcopy-paused")
# <tmpdir>/postcopy-canary-XXXXXXXX/qemu/destination.qmp must fit in sun_path (108 bytes).
_MAX_TMPDIR_LEN = 56
_WORKDIR_PLACEHOLDER = "<workdir>"

CanarySettings = namedtuple("CanarySettings", "qemu_binary account accel memory_mb timeout sandbox")


class CanaryError(Exception):
    """The canary cannot run at all (bad option, no QEMU): the task fails with this line."""


class CanaryInterrupted(Exception):
    """The module got SIGTERM/SIGINT/SIGHUP; both QEMUs are gone and the work dir removed."""

    def __init__(self, signum):
        self.signum = signum
        super(CanaryInterrupted, self).__init__(
            "postcopy canary interrupted by %s; both QEMU processes were killed and the work directory removed" % signal.Signals(signum).name
        )


class _Refused(Exception):
    """The canary ran but post-copy did not work; the message is QEMU's own where it gave one."""


# ---------------------------------------------------------------------------------------------
# The guest: a 512-byte x86 boot sector, assembled here.


class _MachineCode:
    """Bytes of x86 machine code with labels; addresses are patched in by assemble()."""

    _SIZES = {"abs16": 2, "abs32": 4, "rel8": 1}

    def __init__(self, origin):
        self.origin = origin
        self.code = bytearray()
        self.labels = {}
        self.fixups = []

    def emit(self, *parts):
        for part in parts:
            self.code += bytes([part]) if isinstance(part, int) else part

    def label(self, name):
        self.labels[name] = self.origin + len(self.code)

    def ref(self, name, kind):
        self.fixups.append((len(self.code), name, kind))
        self.code += bytes(self._SIZES[kind])

    def align(self, boundary, fill=0x90):
        while len(self.code) % boundary:
            self.code.append(fill)

    def assemble(self):
        for offset, name, kind in self.fixups:
            target = self.labels[name]
            if kind == "abs16":
                self.code[offset:offset + 2] = struct.pack("<H", target)
            elif kind == "abs32":
                self.code[offset:offset + 4] = struct.pack("<I", target)
            else:
                self.code[offset:offset + 1] = struct.pack("<b", target - (self.origin + offset + 1))
        return bytes(self.code)


def _u16(value):
    return struct.pack("<H", value)


def _u32(value):
    return struct.pack("<I", value)


def _enter_protected_mode(asm):
    """16-bit code at 0000:7C00, where the BIOS leaves a boot sector, up to a 32-bit far jump."""
    asm.emit(0xFA)  # cli: no BIOS interrupt may run once the loop overwrites the IVT
    asm.emit(0x31, 0xC0)  # xor ax, ax
    asm.emit(0x8E, 0xD8)  # mov ds, ax: lgdt reads its operand through DS
    # Fast A20 through port 0x92 so odd megabytes are not aliases of even ones; bit 0 of
    # that port resets the machine, so it is cleared.
    asm.emit(0xE4, 0x92)  # in al, 0x92
    asm.emit(0x0C, 0x02)  # or al, 2
    asm.emit(0x24, 0xFE)  # and al, 0xFE
    asm.emit(0xE6, 0x92)  # out 0x92, al
    asm.emit(0x0F, 0x01, 0x16)  # lgdt [gdt_descriptor]
    asm.ref("gdt_descriptor", "abs16")
    asm.emit(0x0F, 0x20, 0xC0)  # mov eax, cr0
    asm.emit(0x0C, 0x01)  # or al, 1: protection enable
    asm.emit(0x0F, 0x22, 0xC0)  # mov cr0, eax
    # The far jump loads CS with the flat 32-bit code segment; from here on code is 32-bit.
    asm.emit(0xEA)  # jmp 0x08:protected
    asm.ref("protected", "abs16")
    asm.emit(_u16(_CODE_SELECTOR))


def _write_pages_forever(asm, top):
    """32-bit loop: bump the pass counter, then write it into the first dword of every GUEST_STRIDE bytes."""
    asm.label("protected")
    asm.emit(0x66, 0xB8, _u16(_DATA_SELECTOR))  # mov ax, 0x10: flat 4 GiB data segment
    asm.emit(0x8E, 0xD8)  # mov ds, ax
    asm.emit(0x8E, 0xC0)  # mov es, ax
    asm.emit(0x8E, 0xD0)  # mov ss, ax
    asm.emit(0xC7, 0x05, _u32(GUEST_MAGIC_ADDR), _u32(GUEST_MAGIC))  # mov dword [magic], "CNRY"
    asm.emit(0x31, 0xD2)  # xor edx, edx: the pass counter
    asm.label("pass")
    asm.emit(0x42)  # inc edx
    asm.emit(0x89, 0x15, _u32(GUEST_COUNTER_ADDR))  # mov [counter], edx
    asm.emit(0xBF, _u32(_WRITE_FROM))  # mov edi, 1 MiB
    asm.label("page")
    # Writing, not reading: a written page is dirty on the source and non-zero, so it must
    # really travel, and on the destination a write to a missing page is a userfault.
    asm.emit(0x89, 0x17)  # mov [edi], edx
    asm.emit(0x81, 0xC7, _u32(GUEST_STRIDE))  # add edi, 32 KiB
    asm.emit(0x81, 0xFF, _u32(top))  # cmp edi, top
    asm.emit(0x72)  # jb page
    asm.ref("page", "rel8")
    asm.emit(0xEB)  # jmp pass
    asm.ref("pass", "rel8")


def _flat_gdt(asm):
    asm.align(8)
    asm.label("gdt")
    asm.emit(bytes(8))  # the null descriptor
    # base 0, limit 0xFFFFF in 4 KiB units (4 GiB), present ring 0; G=1 D=1 (32-bit).
    asm.emit(0xFF, 0xFF, 0x00, 0x00, 0x00, 0x9A, 0xCF, 0x00)  # 0x08: code, execute/read
    asm.emit(0xFF, 0xFF, 0x00, 0x00, 0x00, 0x92, 0xCF, 0x00)  # 0x10: data, read/write
    asm.label("gdt_descriptor")
    asm.emit(_u16(3 * 8 - 1))  # limit: three descriptors
    asm.ref("gdt", "abs32")


def boot_sector(memory_mb):
    """The canary guest: 512 bytes the BIOS boots, that write across its RAM forever.

    It switches to 32-bit protected mode with a flat GDT and loops over [1 MiB, top), top
    being the guest's RAM capped at 2 GiB, writing the pass number into the first page of every
    GUEST_STRIDE bytes; the pass
    number is also kept at GUEST_COUNTER_ADDR and "CNRY" at GUEST_MAGIC_ADDR.
    """
    top = min(int(memory_mb), _WRITE_LIMIT_MB) << 20
    asm = _MachineCode(_BOOT_ADDR)
    _enter_protected_mode(asm)
    _write_pages_forever(asm, top)
    _flat_gdt(asm)
    code = asm.assemble()
    if len(code) > 510:
        raise ValueError("boot sector code is %d bytes, more than 510" % len(code))
    # 0x55 0xAA at offset 510 is what makes a BIOS boot the sector.
    return code + bytes(510 - len(code)) + b"\x55\xaa"


def _sector_loader(asm):
    """Real-mode code at F000:0000: copy the boot sector to 0000:7C00 and jump to it, as a BIOS would."""
    asm.emit(0xFA)  # cli
    # The CPU leaves reset with caching disabled (CR0.CD and NW); a BIOS turns it on, so do we.
    asm.emit(0x0F, 0x20, 0xC0)  # mov eax, cr0
    asm.emit(0x66, 0x25, _u32(0x9FFFFFFF))  # and eax, ~(CD | NW)
    asm.emit(0x0F, 0x22, 0xC0)  # mov cr0, eax
    asm.emit(0x31, 0xC0)  # xor ax, ax
    asm.emit(0x8E, 0xC0)  # mov es, ax: destination segment 0
    asm.emit(0xB8, _u16(_ROM_SEGMENT))  # mov ax, 0xF000
    asm.emit(0x8E, 0xD8)  # mov ds, ax: source segment, this ROM
    asm.emit(0xBE, _u16(_ROM_SECTOR_OFFSET))  # mov si, sector
    asm.emit(0xBF, _u16(_BOOT_ADDR))  # mov di, 0x7C00
    asm.emit(0xB9, _u16(512))  # mov cx, 512
    asm.emit(0xFC)  # cld
    asm.emit(0xF3, 0xA4)  # rep movsb
    asm.emit(0xEA, _u16(_BOOT_ADDR), _u16(0))  # jmp 0000:7C00


def firmware(memory_mb):
    """A 64 KiB -bios image that boots boot_sector(memory_mb) at once, without SeaBIOS.

    SeaBIOS takes seconds to boot under nested KVM and needs a disk to boot from; the guest
    needs neither BIOS services nor devices, so a reset vector and a 512-byte copy suffice.
    """
    rom = bytearray(b"\xff" * _ROM_SIZE)  # erased flash reads as 0xFF
    loader = _MachineCode(0)
    _sector_loader(loader)
    code = loader.assemble()
    rom[: len(code)] = code
    rom[_ROM_SECTOR_OFFSET : _ROM_SECTOR_OFFSET + 512] = boot_sector(memory_mb)
    reset = _MachineCode(0)
    reset.emit(0xEA, _u16(0), _u16(_ROM_SEGMENT))  # jmp F000:0000, into the loader
    rom[_RESET_VECTOR_OFFSET : _RESET_VECTOR_OFFSET + 5] = reset.assemble()
    return bytes(rom)


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


def option_errors(qemu_binary, run_as, accel, memory_mb, timeout):
    """One line per option value that cannot work, whatever the host; empty when all can."""
    errors = [
        text_error("qemu_binary", qemu_binary, "auto or an absolute path"),
        text_error("run_as", run_as, "auto, an account name or a numeric uid"),
        None if accel in ACCEL_CHOICES else "accel must be one of %s, got %s" % (", ".join(ACCEL_CHOICES), accel),
        range_error("memory_mb", memory_mb, *MEMORY_MB_RANGE),
        range_error("timeout", timeout, *TIMEOUT_RANGE, unit=" seconds"),
    ]
    return [error for error in errors if error]


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


def _find_account(spec):
    try:
        # The same account the probe judges: qemu.conf's user, read with libvirt's grammar.
        settings = read_libvirt_settings(None)[0]
        account = resolve_account(spec, settings["user"], settings["group"])
    except AccountError as exc:
        raise CanaryError("run_as: %s" % exc) from None
    if account_switch_needed(account) and os.geteuid() != 0:
        raise CanaryError("run_as %s (uid %d) needs root to switch to; the module runs as uid %d (use become)" % (account.name, account.uid, os.geteuid()))
    return account


def make_settings(qemu_binary="auto", run_as="auto", accel="auto", memory_mb=256, timeout=60, sandbox=True):
    """Check the options and resolve them on this host; CanaryError in one line when it cannot run."""
    errors = option_errors(qemu_binary, run_as, accel, memory_mb, timeout)
    if errors:
        raise CanaryError("; ".join(errors))
    binary = _find_binary(qemu_binary)
    account = _find_account(run_as)
    return CanarySettings(binary, account, choose_accel(accel, account), int(memory_mb), int(timeout), bool(sandbox))


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


# Run by the interpreter that runs the module, between fork and QEMU: a thread-safe
# replacement for preexec_fn (and for subprocess's user=/group=, which need Python 3.9).
# argv: SWITCH ("-" or "uid:gid:g1,g2") PARENT_PID QEMU ARGS...
_EXEC_AS = r"""
import os, signal, sys
switch, parent = sys.argv[1], int(sys.argv[2])
# The module held SIGTERM/SIGINT/SIGHUP back while starting this; QEMU must get them as usual.
signal.pthread_sigmask(signal.SIG_SETMASK, [])
if switch != "-":
    uid, gid, groups = switch.split(":")
    uid, gid = int(uid), int(gid)
    # Groups and gid first: only root may change them, and setuid gives root up.
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setgid(gid)
    os.setuid(uid)
    if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (uid, uid, gid, gid):
        sys.exit("postcopy canary: could not switch to uid %d gid %d" % (uid, gid))
# QEMU must die with the module even when the module is SIGKILLed; a credential change
# clears the parent-death signal, so it is set after the switch.
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
except Exception:
    pass
if os.getppid() != parent:
    sys.exit("postcopy canary: the module exited before QEMU started")
os.execv(sys.argv[3], sys.argv[3:])
"""


def _exec_as_argv(account, argv):
    if account_switch_needed(account):
        switch = "%d:%d:%s" % (account.uid, account.gid, ",".join(str(g) for g in account.groups))
    else:
        switch = "-"
    return [sys.executable, "-I", "-S", "-c", _EXEC_AS, switch, str(os.getpid())] + list(argv)


# ---------------------------------------------------------------------------------------------
# Processes, files and signals: everything the canary creates, and its removal.


@contextlib.contextmanager
def _signals_blocked():
    """Hold SIGTERM/SIGINT/SIGHUP back while starting a process or cleaning up, so neither is half done."""
    signals = {getattr(signal, name) for name in _INTERRUPT_SIGNALS}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _signals_interrupt():
    """Turn the first SIGTERM/SIGINT/SIGHUP into CanaryInterrupted, so cleanup runs; later ones are ignored."""
    fired = []

    def interrupt(signum, frame):
        if not fired:
            fired.append(signum)
            raise CanaryInterrupted(signum)

    previous = {}
    try:
        for name in _INTERRUPT_SIGNALS:
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


class _Workspace:
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
        self.processes = {}
        self._logs = {}

    def create(self):
        with _signals_blocked():  # a signal between mkdtemp() and the assignment would leak the dir
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

    def start(self, role, argv):
        # Unnamed (O_TMPFILE where the kernel has it) in root's directory: no name to swap.
        log = tempfile.TemporaryFile(dir=self.path)
        self._logs[role] = log
        with _signals_blocked():
            self.processes[role] = subprocess.Popen(
                _exec_as_argv(self.account, argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.qemu_dir,
                env=minimal_environment(self.qemu_dir),
                close_fds=True,
                # Its own session and process group: cleanup kills everything QEMU started.
                start_new_session=True,
            )
        return self.processes[role]

    def qmp_client(self, role, path):
        return QMPClient(path, peer_pid=self.processes[role].pid)

    def alive(self, role):
        return self.processes[role].poll() is None

    def wait_exit(self, role, timeout):
        try:
            self.processes[role].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def qemu_words(self, role):
        """What QEMU wrote to stderr, warnings left out, as one line; None when nothing."""
        log = self._logs.get(role)
        if log is None:
            return None
        text = _tail(log.fileno(), _STDERR_TAIL).decode("utf-8", "replace")
        lines = [line.strip() for line in text.splitlines() if line.strip() and "warning:" not in line]
        return "; ".join(lines[-_STDERR_LINES:]) or None

    def cleanup(self):
        for process in self.processes.values():
            _kill_group(process)
        for log in self._logs.values():
            log.close()
        if self.path:
            # rmtree works through directory descriptors here (shutil.rmtree.avoids_symlink_attacks),
            # so a link QEMU's account plants in its directory is removed, not followed.
            shutil.rmtree(self.path, ignore_errors=True)


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
        "qemu_binary": settings.qemu_binary,
        "qemu_version": qemu_version(settings.qemu_binary, settings.timeout),
        "accel": settings.accel,
        "memory_mb": settings.memory_mb,
        "sandbox": settings.sandbox,
        "run_as": to_dict(settings.account),
        "commands": {},
    }


def planned_facts(settings):
    """Check mode: what would run, nothing started; the work dir is shown as <workdir>."""
    facts = _empty_facts(settings)
    facts["commands"] = {role: qemu_command(settings, role, _WORKDIR_PLACEHOLDER) for role in ("source", "destination")}
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


def _parse_xp(text):
    """(counter, magic) from HMP "xp /2wx" output such as "0000000000000500: 0x00000007 0x59524e43"."""
    try:
        words = text.split(":", 1)[1].split()
        return int(words[0], 16), int(words[1], 16)
    except (IndexError, ValueError):
        return None, None


@contextlib.contextmanager
def _blame(role):
    """Mark a QMP failure with the QEMU it came from, whose stderr then explains it."""
    try:
        yield
    except QMPError as exc:
        exc.role = role
        raise


class _Canary:
    """One run: two QEMUs in a workspace, driven over QMP until the migration ends."""

    def __init__(self, settings, workspace, facts):
        self.settings = settings
        self.workspace = workspace
        self.facts = facts
        self.deadline = time.monotonic() + settings.timeout
        self.step = "starting QEMU"
        self.qmp = {}

    def left(self):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise QMPTimeout("deadline passed")
        return remaining

    def run(self):
        paths = _paths(self.workspace.path)
        self.workspace.write_file("firmware.bin", firmware(self.settings.memory_mb))
        for role in ("source", "destination"):
            argv = qemu_command(self.settings, role, self.workspace.path)
            self.facts["commands"][role] = argv
            self.workspace.start(role, argv)
        for role in ("source", "destination"):
            self.step = "waiting for the %s QEMU's QMP socket" % role
            self.qmp[role] = self.workspace.qmp_client(role, paths[role])
            with _blame(role):
                self.qmp[role].connect(self.left(), alive=lambda role=role: self.workspace.alive(role))
        self._enable_postcopy(paths["migration"])
        self._wait_guest_writing()
        self._migrate(paths["migration"])
        self._check_guest_after()

    def close(self):
        for client in self.qmp.values():
            client.close()

    def _execute(self, role, command, arguments=None):
        with _blame(role):
            return self.qmp[role].execute(command, arguments, timeout=self.left())

    def _enable_postcopy(self, uri):
        self.step = "enabling post-copy"
        capabilities = [{"capability": "events", "state": True}, {"capability": "postcopy-ram", "state": True}]
        # The destination is where QEMU checks userfaultfd: "Postcopy is not supported" comes from here.
        for role in ("destination", "source"):
            self._execute(role, "migrate-set-capabilities", {"capabilities": capabilities})
        self._execute("destination", "migrate-incoming", {"uri": "unix:%s" % uri})

    def _guest_words(self, role):
        reply = self._execute(role, "human-monitor-command", {"command-line": "xp /2wx 0x%x" % GUEST_COUNTER_ADDR})
        return _parse_xp(reply or "")

    def _wait_guest_writing(self):
        self.step = "waiting for the guest to boot and make one pass over its RAM"
        while True:
            counter, magic = self._guest_words("source")
            if magic == GUEST_MAGIC and counter >= _GUEST_READY_PASSES:
                return
            self.left()
            time.sleep(_POLL)

    def _wait_status(self, role, wanted):
        """Watch MIGRATION events until one of wanted or a final status; what they show goes to the facts."""

        def match(event):
            if event.get("event") != "MIGRATION":
                return False
            status = event.get("data", {}).get("status")
            if status == "postcopy-active":
                self.facts["postcopy_active_seen"] = True
            if role == "source":
                self.facts["status"] = status
            return status in wanted or status in _FINAL_STATUSES

        with _blame(role):
            event = self.qmp[role].wait_event(match, self.left())
        return event["data"]["status"]

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
        if self.workspace.alive("destination"):
            try:
                desc = self._execute("destination", "query-migrate").get("error-desc")
            except QMPError:
                desc = None
            if desc:
                return desc
        return self.workspace.qemu_words("destination") or "the migration ended in status %s" % status

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
    if isinstance(exc, QMPCommandError):
        # QEMU before 8.0 puts the reason ("userfaultfd not available: ...") on stderr only.
        words = canary.workspace.qemu_words(exc.role)
        return "%s (%s)" % (exc, words) if words else str(exc)
    if isinstance(exc, QMPClosed):
        # The socket closes a moment before the process is gone and its stderr complete.
        canary.workspace.wait_exit(exc.role, _EXIT_GRACE)
        return canary.workspace.qemu_words(exc.role) or "the %s QEMU exited while %s" % (exc.role, canary.step)
    return str(exc)


def run_canary(settings):
    """Run the canary; the facts. Interrupted by a signal: CanaryInterrupted, after cleanup."""
    started = time.monotonic()
    facts = _empty_facts(settings)
    with _signals_interrupt():
        workspace = _Workspace(settings.account)
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
            with _signals_blocked():
                canary.close()
                workspace.cleanup()
    facts["wall_time_ms"] = round((time.monotonic() - started) * 1000.0, 1)
    return facts
