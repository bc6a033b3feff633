# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two ways to make the userfaultfd calls from Python: cffi in ABI mode, or the standard library's ctypes.

Both backends expose the same small interface; every call returns the kernel's errno
instead of raising, because the probe's answer *is* the errno.

cffi runs in its out-of-line ABI mode: the declarations below were compiled ahead of time
into _cffi_uffd's type table, so a module run needs only cffi's C extension
(_cffi_backend, Debian's python3-cffi-backend) and never parses C. Parsing them with
pycparser at run time cost ~45 ms of a ~60 ms module start; it remains the fallback for a
cffi that does not accept the table.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible_collections.hypervisor.migration.plugins.module_utils._cffi_uffd import MODULE_NAME, TYPE_TABLE
from ansible_collections.hypervisor.migration.plugins.module_utils._uapi import (
    ioctl_requests,
    nr_userfaultfd,
)

CFFI_IMPORT_ERROR = None
try:
    import _cffi_backend
except ImportError:
    _cffi_backend = None
    CFFI_IMPORT_ERROR = traceback.format_exc()

__all__ = [
    "BACKEND_CHOICES",
    "BACKENDS",
    "CFFI_IMPORT_ERROR",
    "BackendUnavailable",
    "Backend",
    "CffiBackend",
    "HAS_CFFI",
    "cffi_ffi",
    "select_backend",
]

HAS_CFFI = _cffi_backend is not None
# The backends by name (each class's name), and the choices of the ffi_backend option.
BACKENDS = ("cffi", "ctypes")
BACKEND_CHOICES = ("auto",) + BACKENDS

_CDEF = """
struct uffdio_api { uint64_t api; uint64_t features; uint64_t ioctls; };
struct uffdio_range { uint64_t start; uint64_t len; };
struct uffdio_register { struct uffdio_range range; uint64_t mode; uint64_t ioctls; };
long syscall(long number, ...);
int ioctl(int fd, unsigned long request, ...);
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
int munlockall(void);
"""


class BackendUnavailable(Exception):
    """The backend asked for cannot be loaded on this host."""


def _ffi_from_table():
    return _cffi_backend.FFI(MODULE_NAME, **TYPE_TABLE)


def _ffi_from_cdef():
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    return ffi


def cffi_ffi(precompiled=True):
    """A cffi FFI declaring _CDEF: from the precompiled table, else (or when asked) parsed now.

    Raises BackendUnavailable when neither works, with the reason of each.
    """
    reasons = []
    loaders = (_ffi_from_table, _ffi_from_cdef) if precompiled else (_ffi_from_cdef,)
    for loader in loaders:
        try:
            return loader()
        except Exception as exc:  # pylint: disable=broad-except
            # Any cffi version may reject the table or lack the parser; the next loader or ctypes remains.
            reasons.append("%s: %s" % (loader.__name__.strip("_"), exc))
    raise BackendUnavailable("cffi cannot declare the userfaultfd calls (%s)" % "; ".join(reasons))


class Backend(object):
    """Interface: each call returns (result..., errno) with errno 0 on success."""

    name = None

    def __init__(self, arch=None):
        self.requests = ioctl_requests(arch)
        self.nr_userfaultfd = nr_userfaultfd(arch)

    def userfaultfd(self, flags):
        raise NotImplementedError

    def ioctl_int(self, fd, request, arg):
        raise NotImplementedError

    def uffdio_api(self, fd, api, features):
        """Returns (ret, errno, features, ioctls)."""
        raise NotImplementedError

    def uffdio_register(self, fd, start, length, mode):
        """Returns (ret, errno, ioctls)."""
        raise NotImplementedError

    def uffdio_unregister(self, fd, start, length):
        raise NotImplementedError

    def mmap(self, length, prot, flags, fd=-1, offset=0):
        """Returns (address or None, errno)."""
        raise NotImplementedError

    def munmap(self, address, length):
        raise NotImplementedError

    def munlockall(self):
        raise NotImplementedError


class CffiBackend(Backend):
    name = "cffi"
    _ffi = None
    _lib = None

    def __init__(self, arch=None):
        if not HAS_CFFI:
            raise BackendUnavailable("cffi is not importable")
        super(CffiBackend, self).__init__(arch)
        if CffiBackend._ffi is None:
            # Once per process: the libc handle and the FFI outlive every probe in it.
            ffi = cffi_ffi()
            CffiBackend._lib = ffi.dlopen(None)
            CffiBackend._ffi = ffi
        self.ffi = CffiBackend._ffi
        self.lib = CffiBackend._lib

    def _call(self, func, *args):
        self.ffi.errno = 0
        ret = func(*args)
        return ret, (self.ffi.errno if ret == -1 else 0)

    def userfaultfd(self, flags):
        return self._call(self.lib.syscall, self.ffi.cast("long", self.nr_userfaultfd), self.ffi.cast("long", flags))

    def ioctl_int(self, fd, request, arg):
        return self._call(self.lib.ioctl, fd, self.ffi.cast("unsigned long", request), self.ffi.cast("unsigned long", arg))

    def uffdio_api(self, fd, api, features):
        msg = self.ffi.new("struct uffdio_api *", {"api": api, "features": features})
        ret, err = self._call(self.lib.ioctl, fd, self.ffi.cast("unsigned long", self.requests["UFFDIO_API"]), msg)
        return ret, err, int(msg.features), int(msg.ioctls)

    def uffdio_register(self, fd, start, length, mode):
        msg = self.ffi.new("struct uffdio_register *", {"range": {"start": start, "len": length}, "mode": mode})
        ret, err = self._call(self.lib.ioctl, fd, self.ffi.cast("unsigned long", self.requests["UFFDIO_REGISTER"]), msg)
        return ret, err, int(msg.ioctls)

    def uffdio_unregister(self, fd, start, length):
        msg = self.ffi.new("struct uffdio_range *", {"start": start, "len": length})
        return self._call(self.lib.ioctl, fd, self.ffi.cast("unsigned long", self.requests["UFFDIO_UNREGISTER"]), msg)

    def mmap(self, length, prot, flags, fd=-1, offset=0):
        self.ffi.errno = 0
        ptr = self.lib.mmap(self.ffi.NULL, length, prot, flags, fd, offset)
        address = int(self.ffi.cast("uintptr_t", ptr))
        if address == int(self.ffi.cast("uintptr_t", self.ffi.cast("void *", -1))):
            return None, self.ffi.errno
        return address, 0

    def munmap(self, address, length):
        return self._call(self.lib.munmap, self.ffi.cast("void *", address), length)

    def munlockall(self):
        return self._call(self.lib.munlockall)


def select_backend(choice="auto", arch=None):
    """The backend for ffi_backend: auto prefers cffi when the managed host has it."""
    if choice not in BACKEND_CHOICES:
        raise ValueError("ffi_backend must be one of %s, got %r" % (", ".join(BACKEND_CHOICES), choice))
    if choice == "cffi":
        return CffiBackend(arch)
    if choice == "auto" and HAS_CFFI:
        try:
            return CffiBackend(arch)
        except BackendUnavailable:
            pass  # a cffi that takes neither the table nor the declarations: ctypes does the same calls
    # Imported only when chosen: ctypes costs a few ms of every module run that uses cffi.
    from ansible_collections.hypervisor.migration.plugins.module_utils._ffi_ctypes import CtypesBackend

    return CtypesBackend(arch)
