# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The UAPI table against include/uapi/linux/userfaultfd.h, value by value.

Only x86_64 runs here; the other architectures' numbers are computed, not observed.
"""

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _uapi

GENERIC = {
    "UFFDIO_API": 0xC018AA3F,
    "UFFDIO_REGISTER": 0xC020AA00,
    "UFFDIO_UNREGISTER": 0x8010AA01,
    "UFFDIO_WAKE": 0x8010AA02,
    "UFFDIO_COPY": 0xC028AA03,
    "UFFDIO_ZEROPAGE": 0xC020AA04,
    "USERFAULTFD_IOC_NEW": 0x0000AA00,
}
POWERPC = dict(GENERIC, UFFDIO_UNREGISTER=0x4010AA01, UFFDIO_WAKE=0x4010AA02, USERFAULTFD_IOC_NEW=0x2000AA00)


@pytest.mark.parametrize(
    "arch, requests, nr",
    [
        ("x86_64", GENERIC, 323),
        ("aarch64", GENERIC, 282),
        ("s390x", GENERIC, 355),
        ("riscv64", GENERIC, 282),
        ("ppc64le", POWERPC, 364),
        ("ppc64", POWERPC, 364),
        ("i686", GENERIC, 374),
        ("armv7l", GENERIC, 388),
        ("loongarch64", GENERIC, 282),
    ],
)
def test_request_numbers_and_syscall_per_arch(arch, requests, nr):
    assert _uapi.ioctl_requests(arch) == requests
    assert _uapi.nr_userfaultfd(arch) == nr


def test_struct_sizes_match_the_header():
    assert _uapi.STRUCT_SIZES == {
        "uffdio_api": 24,
        "uffdio_range": 16,
        "uffdio_register": 32,
        "uffdio_copy": 40,
        "uffdio_zeropage": 32,
        "uffd_msg": 32,
    }


def test_bit_numbers():
    assert _uapi.IOCTL_BITS["API"] == 63
    assert [_uapi.IOCTL_BITS[n] for n in ("REGISTER", "UNREGISTER", "WAKE", "COPY", "ZEROPAGE", "MOVE", "WRITEPROTECT", "CONTINUE", "POISON")] == list(range(9))
    assert sorted(_uapi.API_FEATURES.values()) == list(range(17))
    assert _uapi.API_FEATURES["MISSING_SHMEM"] == 5
    assert _uapi.API_FEATURES["THREAD_ID"] == 8
    assert _uapi.UFFD_API == 0xAA
    assert _uapi.UFFD_USER_MODE_ONLY == 1


def test_bits_round_trip():
    names = ["REGISTER", "UNREGISTER", "API"]
    mask = _uapi.names_to_bits(names, _uapi.IOCTL_BITS)
    assert mask == (1 << 63) | 0b11
    assert _uapi.bits_to_names(mask, _uapi.IOCTL_BITS) == names


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(_uapi.UnsupportedArch, match="mips64.*known: aarch64"):
        _uapi.nr_userfaultfd("mips64")


def test_size_field_overflow_is_refused():
    layout = _uapi.ioc_layout("ppc64le")
    with pytest.raises(ValueError):
        _uapi._ioc(layout, layout.read, 0xAA, 0, 1 << 13)
