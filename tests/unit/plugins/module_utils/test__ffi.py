# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Both backends make the same calls and get the same answers from this kernel."""

import errno
import os
import subprocess
import sys

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _ffi
from ansible_collections.hypervisor.migration.plugins.module_utils._ffi import BACKENDS
from ansible_collections.hypervisor.migration.plugins.module_utils._uapi import O_CLOEXEC, UFFD_API, mmap_flags


def test_each_backend_answers_to_its_name():
    # BACKENDS is the option's vocabulary; each name must select the class that reports it.
    assert [_ffi.select_backend(name).name for name in BACKENDS] == list(BACKENDS)


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


REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
STRUCTS = ("struct uffdio_api", "struct uffdio_range", "struct uffdio_register")


def layout(ffi):
    return [(name, ffi.sizeof(name), [(field, ffi.offsetof(name, field)) for field, _t in ffi.typeof(name).fields]) for name in STRUCTS]


def test_precompiled_table_is_current():
    # The table is generated from _CDEF; editing one without the other must fail here.
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "tools", "cffi_table.py"), "--check"], stdout=subprocess.PIPE, check=False)
    assert proc.returncode == 0, proc.stdout.decode()


def test_precompiled_table_declares_what_the_parser_declares():
    table, parsed = _ffi.cffi_ffi(), _ffi.cffi_ffi(precompiled=False)
    assert layout(table) == layout(parsed)
    assert layout(table)[2] == ("struct uffdio_register", 32, [("range", 0), ("mode", 16), ("ioctls", 24)])
    for func in ("syscall", "ioctl", "mmap", "munmap", "munlockall"):
        assert table.typeof(getattr(table.dlopen(None), func)) == table.typeof(getattr(parsed.dlopen(None), func))


def test_a_rejected_table_falls_back_to_parsing(monkeypatch):
    # A cffi from outside the versions this table's format supports: stand-in for one we cannot install here.
    monkeypatch.setitem(_ffi.TYPE_TABLE, "_version", 0x1000)
    ffi = _ffi.cffi_ffi()
    assert ffi.sizeof("struct uffdio_api") == 24


def test_no_cffi_at_all_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(_ffi.TYPE_TABLE, "_version", 0x1000)
    monkeypatch.setitem(sys.modules, "cffi", None)
    with pytest.raises(_ffi.BackendUnavailable, match=r"cffi cannot declare the userfaultfd calls \(ffi_from_table: .*; ffi_from_cdef: "):
        _ffi.cffi_ffi()


def test_the_default_backend_loads_neither_the_c_parser_nor_ctypes():
    # ~45 ms of a module run went to pycparser before the table, a few more to ctypes; a fresh
    # interpreter proves the default path leaves all three out.
    code = (
        "import sys\n"
        "from ansible_collections.hypervisor.migration.plugins.module_utils._ffi import select_backend\n"
        "print(select_backend('auto').name, *sorted(m for m in ('cffi', 'ctypes', 'pycparser') if m in sys.modules))\n"
    )
    assert subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True).stdout.decode().split() == ["cffi"]


def test_auto_falls_back_to_ctypes_when_cffi_cannot_declare_the_calls(monkeypatch):
    monkeypatch.setattr(_ffi.CffiBackend, "_ffi", None)
    monkeypatch.setitem(_ffi.TYPE_TABLE, "_version", 0x1000)
    monkeypatch.setitem(sys.modules, "cffi", None)
    assert _ffi.select_backend("auto").name == "ctypes"
    with pytest.raises(_ffi.BackendUnavailable):
        _ffi.select_backend("cffi")
