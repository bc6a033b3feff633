# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Both backends make the same calls and get the same answers from this kernel."""

import errno
import os

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _ffi
from ansible_collections.hypervisor.migration.plugins.module_utils._uapi import O_CLOEXEC, UFFD_API, mmap_flags

BACKENDS = ["cffi", "ctypes"]


def test_auto_prefers_cffi_when_importable():
    assert _ffi.select_backend("auto").name == ("cffi" if _ffi.HAS_CFFI else "ctypes")
    assert _ffi.select_backend("ctypes").name == "ctypes"


def test_unknown_choice_names_the_option():
    with pytest.raises(ValueError, match="ffi_backend must be one of auto, cffi, ctypes"):
        _ffi.select_backend("rust")


@pytest.mark.parametrize("name", BACKENDS)
def test_userfaultfd_and_api_handshake(root, name):
    backend = _ffi.select_backend(name)
    fd, err = backend.userfaultfd(O_CLOEXEC)
    assert (fd >= 0, err) == (True, 0)
    try:
        ret, err, features, ioctls = backend.uffdio_api(fd, UFFD_API, 0)
        assert (ret, err) == (0, 0)
        assert ioctls & 0b11 == 0b11 and ioctls >> 63 == 1
        assert features & (1 << 5)  # MISSING_SHMEM on 6.18
        # UFFDIO_API works once per fd: the second call is refused with EINVAL.
        assert backend.uffdio_api(fd, UFFD_API, 0)[:2] == (-1, errno.EINVAL)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", BACKENDS)
def test_errno_comes_back_instead_of_an_exception(name):
    backend = _ffi.select_backend(name)
    assert backend.ioctl_int(-1, backend.requests["USERFAULTFD_IOC_NEW"], 0) == (-1, errno.EBADF)
    assert backend.userfaultfd(0xFFFF)[1] == errno.EINVAL
    assert backend.mmap(0, 3, mmap_flags()["MAP_PRIVATE"] | mmap_flags()["MAP_ANONYMOUS"]) == (None, errno.EINVAL)


@pytest.mark.parametrize("name", BACKENDS)
def test_mmap_register_unregister(root, name):
    backend = _ffi.select_backend(name)
    consts = mmap_flags()
    fd, _err = backend.userfaultfd(O_CLOEXEC)
    address, err = backend.mmap(4096, consts["PROT_READ"] | consts["PROT_WRITE"], consts["MAP_PRIVATE"] | consts["MAP_ANONYMOUS"])
    try:
        assert err == 0 and address
        backend.uffdio_api(fd, UFFD_API, 0)
        ret, err, ioctls = backend.uffdio_register(fd, address, 4096, 1)
        assert (ret, err) == (0, 0)
        assert ioctls & 0b11100 == 0b11100  # WAKE, COPY, ZEROPAGE
        assert backend.uffdio_unregister(fd, address, 4096) == (0, 0)
        assert backend.uffdio_register(fd, address + 1, 4096, 1)[:2] == (-1, errno.EINVAL)
    finally:
        assert backend.munmap(address, 4096) == (0, 0)
        os.close(fd)


def test_cffi_missing_is_reported(monkeypatch):
    monkeypatch.setattr(_ffi, "HAS_CFFI", False)
    with pytest.raises(_ffi.BackendUnavailable):
        _ffi.CffiBackend()
    assert _ffi.select_backend("auto").name == "ctypes"
