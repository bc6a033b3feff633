# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The userfaultfd kernel interface (include/uapi/linux/userfaultfd.h) as numbers per architecture."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import struct
from collections import namedtuple

__all__ = [
    "API_FEATURES",
    "IOCTL_BITS",
    "IocLayout",
    "NR_USERFAULTFD",
    "O_CLOEXEC",
    "O_NONBLOCK",
    "STRUCT_FORMATS",
    "STRUCT_SIZES",
    "UFFDIO",
    "UFFD_API",
    "UFFD_USER_MODE_ONLY",
    "UFFDIO_REGISTER_MODE_MISSING",
    "UFFDIO_REGISTER_MODE_MINOR",
    "UFFDIO_REGISTER_MODE_WP",
    "UnsupportedArch",
    "bits_to_names",
    "canonical_arch",
    "ioc_layout",
    "ioctl_requests",
    "mmap_flags",
    "names_to_bits",
    "nr_userfaultfd",
]

UFFD_API = 0xAA
UFFDIO = 0xAA  # the ioctl "type" byte
UFFD_USER_MODE_ONLY = 1
UFFDIO_REGISTER_MODE_MISSING = 1
UFFDIO_REGISTER_MODE_WP = 2
UFFDIO_REGISTER_MODE_MINOR = 4

# open(2) flags that are the same on every architecture we support.
O_CLOEXEC = 0o2000000
O_NONBLOCK = 0o4000

# Bit numbers in uffdio_api.ioctls and uffdio_register.ioctls.
IOCTL_BITS = {
    "REGISTER": 0,
    "UNREGISTER": 1,
    "WAKE": 2,
    "COPY": 3,
    "ZEROPAGE": 4,
    "MOVE": 5,
    "WRITEPROTECT": 6,
    "CONTINUE": 7,
    "POISON": 8,
    "API": 63,
}

# Bit numbers in uffdio_api.features.
API_FEATURES = {
    "PAGEFAULT_FLAG_WP": 0,
    "EVENT_FORK": 1,
    "EVENT_REMAP": 2,
    "EVENT_REMOVE": 3,
    "MISSING_HUGETLBFS": 4,
    "MISSING_SHMEM": 5,
    "EVENT_UNMAP": 6,
    "SIGBUS": 7,
    "THREAD_ID": 8,
    "MINOR_HUGETLBFS": 9,
    "MINOR_SHMEM": 10,
    "EXACT_ADDRESS": 11,
    "WP_HUGETLBFS_SHMEM": 12,
    "WP_UNPOPULATED": 13,
    "POISON": 14,
    "WP_ASYNC": 15,
    "MOVE": 16,
}

# Every field is a __u64 in native byte order; uffd_msg is packed to 32 bytes.
STRUCT_FORMATS = {
    "uffdio_api": "=QQQ",  # api, features, ioctls
    "uffdio_range": "=QQ",  # start, len
    "uffdio_register": "=QQQQ",  # range.start, range.len, mode, ioctls
    "uffdio_copy": "=QQQQq",  # dst, src, len, mode, copy
    "uffdio_zeropage": "=QQQq",  # range.start, range.len, mode, zeropage
    "uffd_msg": "=BBHI24s",  # event, reserved1, reserved2, reserved3, arg union
}
STRUCT_SIZES = dict((name, struct.calcsize(fmt)) for name, fmt in STRUCT_FORMATS.items())

NR_USERFAULTFD = {
    "x86_64": 323,
    "i386": 374,
    "aarch64": 282,
    "riscv64": 282,
    "loongarch64": 282,
    "ppc64": 364,
    "ppc64le": 364,
    "s390x": 355,
    "arm": 388,
}

_ARCH_ALIASES = {
    "amd64": "x86_64",
    "i486": "i386",
    "i586": "i386",
    "i686": "i386",
    "arm64": "aarch64",
    "armv7l": "arm",
    "armv6l": "arm",
    "ppc64el": "ppc64le",
}

IocLayout = namedtuple("IocLayout", "size_bits dir_bits none write read")
_GENERIC = IocLayout(size_bits=14, dir_bits=2, none=0, write=1, read=2)
_POWERPC = IocLayout(size_bits=13, dir_bits=3, none=1, write=4, read=2)

# (name, direction, nr, struct or None), as the header declares them.
_REQUESTS = (
    ("UFFDIO_API", "rw", 0x3F, "uffdio_api"),
    ("UFFDIO_REGISTER", "rw", 0x00, "uffdio_register"),
    ("UFFDIO_UNREGISTER", "r", 0x01, "uffdio_range"),
    ("UFFDIO_WAKE", "r", 0x02, "uffdio_range"),
    ("UFFDIO_COPY", "rw", 0x03, "uffdio_copy"),
    ("UFFDIO_ZEROPAGE", "rw", 0x04, "uffdio_zeropage"),
    ("USERFAULTFD_IOC_NEW", "none", 0x00, None),
)


class UnsupportedArch(Exception):
    """An architecture whose userfaultfd syscall number we do not know."""


def canonical_arch(machine=None):
    machine = machine or os.uname().machine
    return _ARCH_ALIASES.get(machine, machine)


def ioc_layout(arch):
    return _POWERPC if canonical_arch(arch).startswith("ppc") else _GENERIC


def _ioc(layout, direction, type_, nr, size):
    size_shift = 16
    dir_shift = size_shift + layout.size_bits
    if size >= 1 << layout.size_bits:
        raise ValueError("ioctl argument of %d bytes does not fit the size field" % size)
    return (direction << dir_shift) | (size << size_shift) | (type_ << 8) | nr


def ioctl_requests(arch=None):
    """Request numbers for this architecture, computed from its _IOC layout."""
    layout = ioc_layout(canonical_arch(arch))
    directions = {"none": layout.none, "r": layout.read, "w": layout.write, "rw": layout.read | layout.write}
    return dict(
        (name, _ioc(layout, directions[kind], UFFDIO, nr, STRUCT_SIZES[struct_name] if struct_name else 0))
        for name, kind, nr, struct_name in _REQUESTS
    )


def nr_userfaultfd(arch=None):
    arch = canonical_arch(arch)
    try:
        return NR_USERFAULTFD[arch]
    except KeyError:
        raise UnsupportedArch("no userfaultfd syscall number known for architecture %s (known: %s)" % (arch, ", ".join(sorted(NR_USERFAULTFD)))) from None


def mmap_flags(arch=None):
    """PROT_* and MAP_* values; identical on every architecture in NR_USERFAULTFD."""
    canonical_arch(arch)
    return {"PROT_READ": 1, "PROT_WRITE": 2, "MAP_SHARED": 1, "MAP_PRIVATE": 2, "MAP_ANONYMOUS": 0x20, "MAP_HUGETLB": 0x40000}


def bits_to_names(mask, table):
    return sorted((name for name, bit in table.items() if mask & (1 << bit)), key=lambda n: table[n])


def names_to_bits(names, table):
    mask = 0
    for name in names:
        mask |= 1 << table[name]
    return mask
