# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finding the host's QEMU binary and the version that decides how it opens userfaultfd."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import mmap
import os
import re
import stat
import struct
import subprocess
import time

from ansible_collections.hypervisor.migration.plugins.module_utils._switch import minimal_environment
from ansible_collections.hypervisor.migration.plugins.module_utils._trust import UntrustedPath, check_chain

__all__ = [
    "DEVICE_MIN_VERSION",
    "QemuBinaryError",
    "candidate_binaries",
    "find_qemu_binary",
    "qemu_uses_device",
    "embedded_version",
    "qemu_version",
    "reported_version",
    "validate_binary",
    "version_output",
    "version_tuple",
]

# QEMU 8.0 opens /dev/userfaultfd before falling back to the syscall.
DEVICE_MIN_VERSION = (8, 0)

_SEARCH_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/libexec", "/bin")
_SYSTEM_NAME = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "i686": "i386",
    "i386": "i386",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "ppc64le": "ppc64",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loongarch64",
}
_BANNER = b"QEMU emulator version "
# QEMU binaries are 10-150 MB; the banner sits in their read-only data. Searched in windows so
# that a deadline can stop the scan of anything else (a sparse file of terabytes).
_SCAN_LIMIT = 512 << 20
_SCAN_WINDOW = 8 << 20
# (header fields: offset, format) and the section header's format (name, type, flags, addr, offset,
# size) for 32- and 64-bit ELF files.
_ELF_LAYOUT = {
    1: ((0x20, "I"), (0x2E, "HHH"), "IIIIII"),
    2: ((0x28, "Q"), (0x3A, "HHH"), "IIQQQQ"),
}
_VERSION = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")


class QemuBinaryError(Exception):
    """qemu_binary names something that is not a safe executable."""


def candidate_binaries(machine=None):
    system = _SYSTEM_NAME.get(machine or os.uname().machine, machine or os.uname().machine)
    names = ["qemu-system-%s" % system]
    paths = [os.path.join(d, n) for n in names for d in _SEARCH_DIRS]
    # RHEL and CentOS ship KVM-only QEMU here.
    paths.append("/usr/libexec/qemu-kvm")
    return paths


def _check_trusted(real):
    try:
        check_chain(real)
    except UntrustedPath as exc:
        raise QemuBinaryError("qemu_binary %s: %s; refusing to read or run it as root (another account could replace it)" % (real, exc.reason)) from None


def validate_binary(path):
    """The real path of an absolute, regular, executable file that no other account can replace; else QemuBinaryError.

    The returned path has no symlink in it, and every directory on it was checked, so what is
    read and run is what was checked.
    """
    if not os.path.isabs(path):
        raise QemuBinaryError("qemu_binary must be an absolute path or auto, got %r" % path)
    real = os.path.realpath(path)
    try:
        info = os.stat(real)
        if not stat.S_ISREG(info.st_mode):
            raise QemuBinaryError("qemu_binary %s is not a regular file" % path)
        if not info.st_mode & 0o111:
            raise QemuBinaryError("qemu_binary %s is not executable" % path)
        _check_trusted(real)
    except OSError as exc:
        raise QemuBinaryError("qemu_binary %s: %s" % (path, os.strerror(exc.errno))) from None
    return real


def find_qemu_binary(spec="auto", machine=None):
    """The QEMU binary to judge: the option's path, or the first host binary found, or None."""
    if spec and spec != "auto":
        return validate_binary(spec)
    for path in candidate_binaries(machine):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return validate_binary(path)
    return None


def version_tuple(text):
    if not text:
        return None
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts[:3]) if parts else None


def _format_version(match):
    return "%s.%s.%s" % (match.group(1), match.group(2), match.group(3) or "0")


def _open_regular(path):
    """A read-only descriptor of path if it is a regular file; never blocks on a FIFO or a device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def _find_banner(image, deadline, begin=0, end=_SCAN_LIMIT):
    """Offset of the banner between begin and end (at most _SCAN_LIMIT), window by window until the deadline; -1 when absent."""
    end = min(len(image), end, _SCAN_LIMIT)
    for start in range(begin, end, _SCAN_WINDOW):
        found = image.find(_BANNER, start, min(end, start + _SCAN_WINDOW + len(_BANNER)))
        if found >= 0 or time.monotonic() > deadline:
            return found
    return -1


def _rodata_range(image):
    """(start, end) of the ELF section .rodata, where QEMU keeps its banner; None where the file does not tell.

    QEMU's banner lies about 1 MB into .rodata and 10-12 MB into the file: reading the section
    table first spares every run ten megabytes of scanning (and of page cache churn on a fleet).
    """
    if image[:4] != b"\x7fELF" or len(image) < 64 or image[4] not in _ELF_LAYOUT or image[5] not in (1, 2):
        return None
    (shoff_at, shoff_format), (counts_at, counts_format), section = _ELF_LAYOUT[image[4]]
    order = "<" if image[5] == 1 else ">"
    try:
        (shoff,) = struct.unpack_from(order + shoff_format, image, shoff_at)
        entsize, count, names_index = struct.unpack_from(order + counts_format, image, counts_at)
        if entsize < struct.calcsize(order + section) or names_index >= count:
            return None
        headers = [struct.unpack_from(order + section, image, shoff + i * entsize) for i in range(count)]
    except (struct.error, OverflowError):
        # A table beyond the file's end, or at an offset no file can have.
        return None
    names_start = headers[names_index][4]
    for name, _type, _flags, _addr, offset, size in headers:
        at = names_start + name
        if image[at:at + 8] == b".rodata\0" and offset + size <= len(image):
            return offset, offset + size
    return None


def embedded_version(path, timeout=10):
    """The version from the banner QEMU carries as a literal string; None when absent.

    Reading it costs a couple of milliseconds and runs nothing; starting QEMU costs ~20 ms.
    The scan stops at _SCAN_LIMIT bytes and at timeout, whatever the file is.
    """
    deadline = time.monotonic() + timeout
    try:
        fd = _open_regular(path)
        try:
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as image:
                rodata = _rodata_range(image)
                start = _find_banner(image, deadline, *rodata) if rodata else -1
                if start < 0:
                    start = _find_banner(image, deadline)
                if start < 0:
                    return None
                match = _VERSION.match(image[start:start + 64].decode("ascii", "replace"))
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None
    return _format_version(match) if match else None


def qemu_version(path, timeout=10):
    """The "major.minor.micro" version of QEMU at path, or None when it cannot tell, within timeout seconds."""
    if not path:
        return None
    deadline = time.monotonic() + timeout
    return embedded_version(path, timeout) or reported_version(path, max(deadline - time.monotonic(), 0.1))


def version_output(path, timeout=10):
    """What ``path --version`` prints (its first 4 KiB), run as a list with a fixed environment; "" when it cannot run.

    The caller has checked path (validate_binary, _trust.check_chain): it runs as root.
    """
    try:
        proc = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=minimal_environment(),
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout[:4096].decode("utf-8", "replace")


def reported_version(path, timeout=10):
    """The version ``path --version`` prints."""
    match = _VERSION.search(version_output(path, timeout))
    return _format_version(match) if match else None


def qemu_uses_device(version):
    """Whether this QEMU tries /dev/userfaultfd first; unknown QEMU counts as current."""
    parsed = version_tuple(version)
    if parsed is None:
        return True
    return parsed[:2] >= DEVICE_MIN_VERSION
