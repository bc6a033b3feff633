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
