# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ctypes backend of _ffi: the standard library only, for hosts without cffi's C extension."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes

from ansible_collections.hypervisor.migration.plugins.module_utils._ffi import Backend

__all__ = ["CtypesBackend"]


class _UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class _UffdioRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _UffdioRegister(ctypes.Structure):
    _fields_ = [("range", _UffdioRange), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class CtypesBackend(Backend):
    name = "ctypes"
    _libc = None

    def __init__(self, arch=None):
        super(CtypesBackend, self).__init__(arch)
        if CtypesBackend._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            libc.ioctl.restype = ctypes.c_int
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
            libc.munmap.restype = ctypes.c_int
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            libc.munlockall.restype = ctypes.c_int
            libc.munlockall.argtypes = []
            CtypesBackend._libc = libc
        self.libc = CtypesBackend._libc

    @staticmethod
    def _call(func, *args):
        ctypes.set_errno(0)
        ret = func(*args)
        return ret, (ctypes.get_errno() if ret == -1 else 0)

    def userfaultfd(self, flags):
        return self._call(self.libc.syscall, ctypes.c_long(self.nr_userfaultfd), ctypes.c_long(flags))

    def ioctl_int(self, fd, request, arg):
        return self._call(self.libc.ioctl, ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.c_ulong(arg))

    def _ioctl_struct(self, fd, request_name, msg):
        return self._call(self.libc.ioctl, ctypes.c_int(fd), ctypes.c_ulong(self.requests[request_name]), ctypes.byref(msg))

    def uffdio_api(self, fd, api, features):
        msg = _UffdioApi(api=api, features=features)
        ret, err = self._ioctl_struct(fd, "UFFDIO_API", msg)
        return ret, err, msg.features, msg.ioctls

    def uffdio_register(self, fd, start, length, mode):
        msg = _UffdioRegister(range=_UffdioRange(start=start, len=length), mode=mode)
        ret, err = self._ioctl_struct(fd, "UFFDIO_REGISTER", msg)
        return ret, err, msg.ioctls

    def uffdio_unregister(self, fd, start, length):
        return self._ioctl_struct(fd, "UFFDIO_UNREGISTER", _UffdioRange(start=start, len=length))

    def mmap(self, length, prot, flags, fd=-1, offset=0):
        ctypes.set_errno(0)
        address = self.libc.mmap(None, length, prot, flags, fd, offset)
        if address is None or address == ctypes.c_void_p(-1).value:
            return None, ctypes.get_errno()
        return address, 0

    def munmap(self, address, length):
        return self._call(self.libc.munmap, address, length)

    def munlockall(self):
        return self._call(self.libc.munlockall)
