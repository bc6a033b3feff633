# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finding QEMU, refusing unsafe paths, and the version that decides the device path."""

import os

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _qemu

QEMU = "/usr/bin/qemu-system-x86_64"


def test_auto_finds_the_installed_qemu():
    if not os.access(QEMU, os.X_OK):
        pytest.skip("qemu-system-x86 not installed")
    assert _qemu.find_qemu_binary("auto", "x86_64") == QEMU
    assert _qemu.version_tuple(_qemu.qemu_version(QEMU))[:2] >= (7, 2)


def test_candidates_per_arch():
    assert _qemu.candidate_binaries("ppc64le")[0] == "/usr/bin/qemu-system-ppc64"
    assert _qemu.candidate_binaries("aarch64")[-1] == "/usr/libexec/qemu-kvm"


@pytest.mark.parametrize(
    "version, uses", [("7.2.22", False), ("7.2.0", False), ("8.0.0", True), ("8.2.2", True), ("10.1.0", True), (None, True)]
)
def test_device_is_used_from_8_0(version, uses):
    assert _qemu.qemu_uses_device(version) is uses


def test_version_of_a_stand_in(tmp_path):
    script = tmp_path / "qemu"
    script.write_text("#!/bin/sh\necho 'QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)'\n")
    script.chmod(0o755)
    assert _qemu.qemu_version(str(script)) == "8.2.2"


def test_unparsable_version_is_none(tmp_path):
    script = tmp_path / "qemu"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    assert _qemu.qemu_version(str(script)) is None


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: "relative/qemu", "must be an absolute path or auto"),
        (lambda d: str(d / "absent"), "No such file or directory"),
        (str, "is not a regular file"),
        (lambda d: _make(d, 0o644), "is not executable"),
        (lambda d: _make(d, 0o777), "is writable by accounts other than root \\(mode 0777\\); refusing to read or run it as root"),
        (lambda d: _make(d, 0o775), "is writable by accounts other than root \\(mode 0775\\)"),
    ],
)
def test_unsafe_binaries_are_refused(tmp_path, setup, message):
    with pytest.raises(_qemu.QemuBinaryError, match=message):
        _qemu.validate_binary(setup(tmp_path))


def _make(directory, mode):
    path = directory / "qemu"
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return str(path)


def test_embedded_version_matches_what_qemu_prints():
    if not os.access(QEMU, os.X_OK):
        pytest.skip("qemu-system-x86 not installed")
    assert _qemu.embedded_version(QEMU) == _qemu.reported_version(QEMU)


def test_stand_in_scripts_carry_their_banner(tmp_path):
    # A script holds the banner text too: both readings agree on it.
    script = tmp_path / "qemu"
    script.write_text("#!/bin/sh\necho 'QEMU emulator version 8.0.5'\n")
    script.chmod(0o755)
    assert _qemu.embedded_version(str(script)) == _qemu.reported_version(str(script)) == "8.0.5"


def test_binary_without_banner_is_asked(tmp_path):
    script = tmp_path / "qemu"
    script.write_text("#!/bin/sh\nprintf 'QEMU emulator %s 6.2.0\\n' version\n")
    script.chmod(0o755)
    assert _qemu.embedded_version(str(script)) is None
    assert _qemu.qemu_version(str(script)) == "6.2.0"


def _elf(sections, bits=64, order="<", before=b""):
    """A minimal ELF file: optional bytes before the sections' data, the data, then the section table."""
    import struct

    names = b"\0.shstrtab\0" + b"".join(name + b"\0" for name, _data in sections)
    blobs = [(b".shstrtab", names)] + list(sections)
    header_size = 64 if bits == 64 else 52
    body = bytearray(before)
    placed = []
    for name, data in blobs:
        placed.append((names.index(b"\0" + name + b"\0") + 1, header_size + len(body), len(data)))
        body += data
    shoff = header_size + len(body)
    entry = order + ("IIQQQQ" if bits == 64 else "IIIIII")
    entsize = struct.calcsize(entry) + (16 if bits == 64 else 16)
    table = bytes(entsize)  # the null section
    for name, offset, size in placed:
        table += struct.pack(entry, name, 1, 2, 0, offset, size) + bytes(entsize - struct.calcsize(entry))
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    if bits == 64:
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", 2, 62, 1, 0, 0, shoff, 0, 64, 0, 0, entsize, len(placed) + 1, 1)
    else:
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", 2, 3, 1, 0, 0, shoff, 0, 52, 0, 0, entsize, len(placed) + 1, 1)
    return header + bytes(body) + table


@pytest.mark.parametrize("bits, order", [(64, "<"), (32, ">"), (64, ">"), (32, "<")])
def test_the_banner_is_read_from_rodata_first(tmp_path, bits, order):
    # A decoy banner before .rodata: the one in .rodata wins, so the section was searched first.
    image = _elf([(b".rodata", b"xx QEMU emulator version 10.0.2 (Debian)\0")], bits, order, before=b"QEMU emulator version 1.2.3\0")
    path = tmp_path / "qemu"
    path.write_bytes(image)
    assert _qemu.embedded_version(str(path)) == "10.0.2"


@pytest.mark.parametrize(
    "damage",
    [
        lambda image: image[:200],  # the section table cut off
        lambda image: image[:0x28] + b"\xff" * 8 + image[0x30:],  # section table beyond the file
        lambda image: image[:0x3E] + b"\xff\x00" + image[0x40:],  # names section index out of range
        lambda image: image[:4] + b"\x09" + image[5:],  # neither 32- nor 64-bit
        lambda image: b"MZ" + image[2:],  # not ELF
    ],
)
def test_a_damaged_or_foreign_header_falls_back_to_scanning_the_file(tmp_path, damage):
    image = damage(_elf([(b".rodata", b"QEMU emulator version 8.2.2\0")], before=b"\0" * 300))
    path = tmp_path / "qemu"
    path.write_bytes(image)
    expected = "8.2.2" if b"QEMU emulator version 8.2.2" in image else None
    assert _qemu.embedded_version(str(path)) == expected


def test_real_qemu_keeps_its_banner_in_rodata():
    import glob
    import mmap

    binaries = [QEMU] + sorted(glob.glob("/var/cache/hypervisor-migration/roots/*/usr/bin/qemu-system-x86_64"))
    binaries = [b for b in binaries if os.path.exists(b)]
    if not binaries:
        pytest.skip("qemu-system-x86 not installed")
    for binary in binaries:
        with open(binary, "rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as image:
            start, end = _qemu._rodata_range(image)
            assert start <= image.find(b"QEMU emulator version ") < end, binary
