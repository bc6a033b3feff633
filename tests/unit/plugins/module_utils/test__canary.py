# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The canary driver: its guest, its options, and real post-copy migrations on this machine.

Every run here starts real QEMUs; the canary_tmp fixture asserts that none is left behind
and that the work directory is gone, whatever the outcome.
"""

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import hostctl
import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _canary, _canary_guest
from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import Account, resolve_account
from ansible_collections.hypervisor.migration.plugins.module_utils._qmp import QMPClient

QEMU = "/usr/bin/qemu-system-x86_64"
ROOT = Account("root", 0, 0, (0,), "option", "test")

needs_qemu = pytest.mark.skipif(not os.access(QEMU, os.X_OK), reason="needs qemu-system-x86_64")
needs_kvm = pytest.mark.skipif(not _canary.kvm_usable_by(ROOT), reason="needs a usable /dev/kvm")


def account(uid=1234, gid=1234, groups=()):
    return Account("someone", uid, gid, tuple(groups) or (gid,), "option", "test")


# ---------------------------------------------------------------------------------------------
# The guest


@pytest.mark.parametrize("memory_mb", [16, 256, 2048, 65536])
def test_boot_sector_is_one_bootable_sector(memory_mb):
    sector = _canary.boot_sector(memory_mb)
    assert len(sector) == 512
    assert sector[510:] == b"\x55\xaa"
    assert sector[0] == 0xFA  # cli first: the loop overwrites the interrupt table


def test_boot_sector_writes_up_to_the_guest_ram_capped_at_2_gib():
    # cmp edi, imm32 carries the end of the loop.
    assert b"\x81\xff" + (256 << 20).to_bytes(4, "little") in _canary.boot_sector(256)
    assert b"\x81\xff" + (2048 << 20).to_bytes(4, "little") in _canary.boot_sector(65536)
    assert _canary.boot_sector(4096) == _canary.boot_sector(2048)


@pytest.mark.skipif(not shutil.which("objdump"), reason="needs objdump (binutils)")
def test_boot_sector_disassembles_to_the_intended_code(tmp_path):
    """An independent disassembler reads the hand-written bytes back as the intended instructions."""
    sector = _canary.boot_sector(256)
    image = tmp_path / "boot.img"
    image.write_bytes(sector)
    real_mode = _disassemble(image, "i8086", 0x7C00, 0x7C1F)
    assert real_mode == [
        "cli",
        "xor %ax,%ax",
        "mov %ax,%ds",
        "in $0x92,%al",
        "or $0x2,%al",
        "and $0xfe,%al",
        "out %al,$0x92",
        "lgdtw 0x7c70",
        "mov %cr0,%eax",
        "or $0x1,%al",
        "mov %eax,%cr0",
        "ljmp $0x8,$0x7c1f",
    ]
    protected = _disassemble(image, "i386", 0x7C1F, 0x7C53)
    assert protected == [
        "mov $0x10,%ax",
        "mov %eax,%ds",
        "mov %eax,%es",
        "mov %eax,%ss",
        "movl $0x59524e43,0x504",
        "xor %edx,%edx",
        "inc %edx",
        "mov %edx,0x500",
        "mov $0x100000,%edi",
        "mov %edx,(%edi)",
        "add $0x8000,%edi",
        "cmp $0x10000000,%edi",
        "jb 0x7c41",
        "jmp 0x7c35",
    ]
    # The GDT descriptor lgdt points at: limit 23, base = the GDT just before it.
    assert sector[0x70:0x76] == (23).to_bytes(2, "little") + (0x7C58).to_bytes(4, "little")


def _disassemble(image, machine, start, stop, origin=0x7C00):
    out = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", machine, "--adjust-vma=%d" % origin, "--start-address=%d" % start, "--stop-address=%d" % stop, str(image)],
        stdout=subprocess.PIPE,
        check=True,
    ).stdout.decode()
    lines = [line.split("\t") for line in out.splitlines() if line.startswith("  ") and ":\t" in line]
    return [" ".join(fields[2].split()) for fields in lines if len(fields) > 2]


@pytest.mark.parametrize("memory_mb", [16, 256])
def test_firmware_is_a_64k_rom_holding_the_sector(memory_mb):
    rom = _canary.firmware(memory_mb)
    assert len(rom) == 0x10000
    assert rom[0x100:0x300] == _canary.boot_sector(memory_mb)
    # The reset vector, the image's last 16 bytes, jumps to the loader at its start.
    assert rom[0xFFF0:0xFFF5] == bytes([0xEA, 0x00, 0x00, 0x00, 0xF0])


@pytest.mark.skipif(not shutil.which("objdump"), reason="needs objdump (binutils)")
def test_firmware_loader_copies_the_sector_to_7c00_and_jumps_there(tmp_path):
    image = tmp_path / "firmware.bin"
    image.write_bytes(_canary.firmware(256))
    assert _disassemble(image, "i8086", 0, 0x26, origin=0) == [
        "cli",
        "mov %cr0,%eax",
        "and $0x9fffffff,%eax",
        "mov %eax,%cr0",
        "xor %ax,%ax",
        "mov %ax,%es",
        "mov $0xf000,%ax",
        "mov %ax,%ds",
        "mov $0x100,%si",
        "mov $0x7c00,%di",
        "mov $0x200,%cx",
        "cld",
        "rep movsb %ds:(%si),%es:(%di)",
        "ljmp $0x0,$0x7c00",
    ]
    assert _disassemble(image, "i8086", 0xFFF0, 0xFFF5, origin=0) == ["ljmp $0xf000,$0x0"]


@needs_qemu
def test_the_guest_boots_and_writes_every_page(canary_tmp):
    image = os.path.join(canary_tmp, "firmware.bin")
    with open(image, "wb") as handle:
        handle.write(_canary.firmware(32))
    sock = os.path.join(canary_tmp, "qmp.sock")
    argv = [QEMU, "-accel", "tcg", "-m", "32", "-display", "none", "-nodefaults", "-no-user-config", "-serial", "none"]
    argv += ["-bios", image, "-qmp", "unix:%s,server=on,wait=off" % sock]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with QMPClient(sock) as qmp:
            qmp.connect(10, alive=lambda: process.poll() is None)
            before = _wait_counter(qmp, 3)
            stride = _canary.GUEST_STRIDE
            written = [_xp(qmp, address) for address in (0x100000, 0x100000 + stride * 77, (32 << 20) - stride)]
            between = [_xp(qmp, address) for address in (0x100000 + 4096, 0x100000 + stride * 77 + 4096 * 7, (32 << 20) - 4096)]
            after = _wait_counter(qmp, before)
            # The first page of every stride from 1 MiB to the top holds the number of a pass that
            # ran while we read; the pages between are never written.
            for value in written:
                assert before - 1 <= value <= after
            assert stride == 8 * 4096 and between == [0, 0, 0]
    finally:
        process.kill()
        process.wait()
        os.unlink(image)
        os.unlink(sock)


def _xp(qmp, address):
    text = qmp.execute("human-monitor-command", {"command-line": "xp /1wx 0x%x" % address})
    return int(text.split(":", 1)[1].split()[0], 16)


def _wait_counter(qmp, passes, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = qmp.execute("human-monitor-command", {"command-line": "xp /2wx 0x500"})
        counter, magic = _canary_guest.parse_xp(text)
        if magic == _canary.GUEST_MAGIC and counter >= passes:
            return counter
        time.sleep(0.01)
    raise AssertionError("the guest did not reach pass %d" % passes)


# ---------------------------------------------------------------------------------------------
# Options


@pytest.fixture
def kvm_node(tmp_path, root):
    """A character device node with the KVM device's numbers, owned by uid 4000 gid 4000."""

    def make(mode):
        path = str(tmp_path / "kvm")
        if os.path.exists(path):
            os.unlink(path)
        os.mknod(path, stat.S_IFCHR | mode, os.makedev(10, 232))
        os.chown(path, 4000, 4000)
        os.chmod(path, mode)
        return path

    return make


@pytest.mark.parametrize(
    "mode, who, usable",
    [
        (0o600, account(uid=4000), True),
        (0o400, account(uid=4000), False),
        (0o600, account(groups=(1234, 4000)), False),
        (0o660, account(groups=(1234, 4000)), True),
        (0o660, account(gid=4000), True),
        (0o660, account(), False),
        (0o666, account(), True),
        (0o000, ROOT, True),
    ],
)
def test_kvm_usable_by_follows_mode_owner_and_groups(kvm_node, mode, who, usable):
    assert _canary.kvm_usable_by(who, kvm_node(mode)) is usable


def test_kvm_is_not_usable_without_a_character_device(tmp_path):
    regular = tmp_path / "kvm"
    regular.write_text("")
    regular.chmod(0o666)
    assert _canary.kvm_usable_by(account(), str(regular)) is False
    assert _canary.kvm_usable_by(ROOT, str(tmp_path / "missing")) is False


def test_auto_accel_is_kvm_only_when_usable(kvm_node):
    path = kvm_node(0o660)
    assert _canary.choose_accel("auto", account(gid=4000), path) == "kvm"
    assert _canary.choose_accel("auto", account(), path) == "tcg"
    assert _canary.choose_accel("kvm", account(), path) == "kvm"
    assert _canary.choose_accel("tcg", ROOT, path) == "tcg"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"qemu_binary": "qemu"}, "qemu_binary must be an absolute path or auto, got 'qemu'"),
        ({"qemu_binary": "/nonexistent/qemu"}, "qemu_binary /nonexistent/qemu: No such file or directory"),
        ({"probe_user": "no-such-user-x"}, "probe_user: no such account 'no-such-user-x' on this host (give an account name, a numeric uid, or auto)"),
    ],
)
def test_options_that_cannot_work_here_fail_in_one_line(options, message):
    with pytest.raises(_canary.CanaryError) as error:
        _canary.make_settings(**options)
    assert str(error.value) == message


def test_a_qemu_for_another_architecture_is_refused(tmp_path):
    fake = tmp_path / "qemu-system-aarch64"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    with pytest.raises(_canary.CanaryError, match="is not an x86 QEMU"):
        _canary.make_settings(qemu_binary=str(fake))


@needs_qemu
def test_settings_resolve_auto(root):
    settings = _canary.make_settings(probe_user="root", accel="auto")
    assert settings.qemu_binary == QEMU
    assert settings.account.name == "root"
    assert settings.accel == ("kvm" if _canary.kvm_usable_by(ROOT) else "tcg")
    assert (settings.memory_mb, settings.timeout, settings.sandbox) == (256, 60, True)


def test_command_lines_differ_only_by_incoming(root):
    settings = _canary.CanarySettings(QEMU, ROOT, "tcg", 64, 60, True)
    source = _canary.qemu_command(settings, "source", "/w")
    destination = _canary.qemu_command(settings, "destination", "/w")
    assert source[:5] == [QEMU, "-accel", "tcg", "-m", "64"]
    assert "-sandbox" in source and source[source.index("-sandbox") + 1] == _canary.SANDBOX_OPTIONS
    assert destination[-2:] == ["-incoming", "defer"]
    assert "-incoming" not in source
    assert [a for a in destination[:-2] if "qmp" not in a] == [a for a in source if "qmp" not in a]
    assert "unix:/w/qemu/source.qmp,server=on,wait=off" in source
    assert "unix:/w/qemu/destination.qmp,server=on,wait=off" in destination
    unsandboxed = _canary.qemu_command(settings._replace(sandbox=False), "source", "/w")
    assert "-sandbox" not in unsandboxed


@needs_qemu
def test_planned_facts_start_nothing(canary_tmp, root):
    settings = _canary.make_settings(probe_user="root", accel="tcg")
    facts = _canary.planned_facts(settings)
    assert facts["ok"] is None
    assert facts["status"] == "none"
    assert facts["commands"]["destination"][-2:] == ["-incoming", "defer"]
    assert "unix:<workdir>/qemu/source.qmp,server=on,wait=off" in facts["commands"]["source"]
    assert facts["qemu_version"].count(".") == 2
    assert os.listdir(canary_tmp) == []


# ---------------------------------------------------------------------------------------------
# Real migrations


def assert_completed(facts, accel):
    assert facts["error"] is None
    assert facts["ok"] is True
    assert facts["status"] == "completed"
    assert facts["postcopy_active_seen"] is True
    # The guest's writes on the destination fault pages in through userfaultfd.
    assert facts["postcopy_requests"] > 0
    assert facts["pages_transferred"] > 0
    assert facts["bytes_transferred"] >= facts["pages_transferred"] * 4096
    assert facts["guest_running_after"] is True
    assert isinstance(facts["total_time_ms"], int) and isinstance(facts["downtime_ms"], int)
    assert facts["accel"] == accel
    assert facts["wall_time_ms"] > 0


@needs_qemu
def test_canary_completes_as_root_under_tcg(canary_tmp, root):
    facts = _canary.run_canary(_canary.make_settings(probe_user="root", accel="tcg", memory_mb=128))
    assert_completed(facts, "tcg")
    assert facts["run_as"]["name"] == "root"
    assert facts["memory_mb"] == 128


@needs_qemu
@needs_kvm
def test_canary_completes_as_root_under_kvm(canary_tmp, root):
    assert_completed(_canary.run_canary(_canary.make_settings(probe_user="root", accel="kvm")), "kvm")


@needs_qemu
def test_canary_without_sandbox_completes(canary_tmp, root):
    facts = _canary.run_canary(_canary.make_settings(probe_user="root", accel="tcg", memory_mb=64, sandbox=False))
    assert_completed(facts, "tcg")
    assert "-sandbox" not in facts["commands"]["source"]


@needs_qemu
@pytest.mark.parametrize("errno_name, words", [("EPERM", "Operation not permitted"), ("ENOSYS", "Function not implemented")])
def test_seccomp_denying_userfaultfd_is_not_ok_in_qemus_words(canary_in_process, root, errno_name, words):
    facts = canary_in_process({"probe_user": "root", "accel": "tcg"}, deny=["userfaultfd:%s" % errno_name])
    assert facts["ok"] is False
    assert facts["status"] == "none"
    assert facts["error"] == "Postcopy is not supported (postcopy_ram_supported_by_host: userfaultfd not available: %s)" % words
    assert facts["postcopy_active_seen"] is False
    assert facts["postcopy_requests"] is None


@needs_qemu
@pytest.mark.parametrize(
    "rule, why",
    [
        ("setgroups:EPERM", "Operation not permitted"),
        ("setgid:EINVAL", "Invalid argument"),
        ("setuid:EAGAIN", "Resource temporarily unavailable"),
    ],
)
def test_qemus_account_switch_is_the_probes_and_fails_in_its_words(canary_in_process, root, rule, why):
    """Both QEMUs switch accounts through _switch.become, as the probe child does: a refused switch stops them, in its words."""
    nobody = resolve_account("nobody")
    facts = canary_in_process({"probe_user": "nobody", "accel": "tcg", "memory_mb": 16}, deny=[rule])
    assert facts["ok"] is False
    assert facts["status"] == "none"
    assert facts["error"] == "postcopy canary: could not switch to account nobody (uid %d): %s" % (nobody.uid, why)


def _proc_status(pid):
    with open("/proc/%d/status" % pid) as handle:
        return dict(line.split(":\t", 1) for line in handle.read().splitlines() if ":\t" in line)


@needs_qemu
def test_qemu_runs_as_the_account_in_its_own_group_with_signals_unblocked(canary_tmp, root, monkeypatch):
    seen = {}
    enable = _canary._Canary._enable_postcopy

    def look_then_enable(self, uri):
        for role, qemu in self.qemu.items():
            process = qemu.process
            seen[role] = (_proc_status(process.pid), os.getpgid(process.pid), process.pid)
            seen["workdir"] = os.stat(self.workspace.path)
            seen["qemu_dir"] = os.stat(self.workspace.qemu_dir)
        return enable(self, uri)

    monkeypatch.setattr(_canary._Canary, "_enable_postcopy", look_then_enable)
    nobody = resolve_account("nobody")
    _canary.run_canary(_canary.make_settings(probe_user="nobody", accel="tcg", memory_mb=16))
    for role in ("source", "destination"):
        status, pgid, pid = seen[role]
        assert status["Name"].startswith("qemu-system")
        assert status["Uid"].split() == [str(nobody.uid)] * 4
        assert status["Gid"].split() == [str(nobody.gid)] * 4
        assert sorted(int(g) for g in status["Groups"].split()) == sorted(nobody.groups)
        assert pgid == pid  # a process group of its own, killed as one
        blocked = int(status["SigBlk"], 16)
        for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            assert not blocked & (1 << (signum - 1)), "QEMU inherited a blocked %s" % signum.name
        assert status["Seccomp"] == "2"  # -sandbox on
    workdir, qemu_dir = seen["workdir"], seen["qemu_dir"]
    assert (workdir.st_uid, workdir.st_gid, stat.S_IMODE(workdir.st_mode)) == (0, 0, 0o711)
    assert (qemu_dir.st_uid, qemu_dir.st_gid, stat.S_IMODE(qemu_dir.st_mode)) == (nobody.uid, nobody.gid, 0o700)


@needs_qemu
def test_unprivileged_account_follows_the_sysctl(canary_tmp, test_user):
    name = test_user.pw_name

    def run():
        return _canary.run_canary(_canary.make_settings(probe_user=name, accel="tcg", memory_mb=64))

    refused = hostctl.steady(run, sysctl=0)
    assert refused["ok"] is False
    assert refused["run_as"]["name"] == name
    assert refused["error"] == "Postcopy is not supported (postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted)"
    assert_completed(hostctl.steady(run, sysctl=1), "tcg")


@needs_qemu
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm")
def test_qemu_that_cannot_start_is_not_ok_in_its_own_words(canary_tmp, root):
    # nobody, not the test account: other suites grant the test account devices for a while.
    nobody = resolve_account("nobody")
    if _canary.kvm_usable_by(nobody):
        pytest.skip("nobody may use /dev/kvm here")
    facts = _canary.run_canary(_canary.make_settings(probe_user="nobody", accel="kvm"))
    assert facts["ok"] is False
    assert facts["status"] == "none"
    assert facts["error"] == (
        "Could not access KVM kernel module: Permission denied; qemu-system-x86_64: -accel kvm: failed to initialize kvm: Permission denied"
    )


def test_stderr_of_a_qemu_that_exits_at_start_is_the_error(canary_tmp, tmp_path, root):
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\necho 'qemu-system-x86_64: warning: noise' >&2\necho 'qemu-system-x86_64: cannot start: reason' >&2\nexit 1\n")
    fake.chmod(0o755)
    facts = _canary.run_canary(_canary.make_settings(qemu_binary=str(fake), probe_user="root", accel="tcg"))
    assert facts["ok"] is False
    assert facts["error"] == "qemu-system-x86_64: cannot start: reason"
    assert facts["commands"]["source"][0] == str(fake)


def test_no_work_dir_means_the_canary_cannot_run(canary_tmp, root, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", "/dev/null")
    with pytest.raises(_canary.CanaryError, match=r"^could not run the canary: \[Errno 20\] Not a directory: '/dev/null/postcopy-canary-"):
        _canary.run_canary(_canary.CanarySettings(QEMU, ROOT, "tcg", 16, 10, True))


@needs_qemu
def test_timeout_kills_real_qemus(canary_tmp, root):
    started = time.monotonic()
    # Booting a 2 GiB guest, writing all of it and migrating it takes well over a second.
    facts = _canary.run_canary(_canary.make_settings(probe_user="root", accel="tcg", memory_mb=2048, timeout=1))
    assert time.monotonic() - started < 5
    assert facts["ok"] is False
    assert facts["error"].startswith("timed out after 1 s ")


def test_timeout_names_the_late_step(canary_tmp, tmp_path, root):
    # A "QEMU" that never opens its QMP socket.
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && exec echo 'QEMU emulator version 7.2.0'\nexec sleep 60\n")
    fake.chmod(0o755)
    facts = _canary.run_canary(_canary.make_settings(qemu_binary=str(fake), probe_user="root", accel="tcg", timeout=1))
    assert facts["ok"] is False
    assert facts["status"] == "none"
    assert facts["error"] == "timed out after 1 s waiting for the source QEMU's QMP socket"
    assert facts["qemu_version"] == "7.2.0"


@needs_qemu
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_interrupted_canary_cleans_up(canary_spawn, canary_qemus, root, signum):
    proc, _pids = canary_spawn({"probe_user": "root", "accel": "tcg", "memory_mb": 2048})
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "CanaryInterrupted: postcopy canary interrupted by %s" % signal.Signals(signum).name in err.decode()
    assert canary_qemus() == []


@needs_qemu
def test_killed_module_takes_qemu_with_it(canary_tmp, canary_spawn, canary_qemus, root):
    proc, pids = canary_spawn({"probe_user": "root", "accel": "tcg", "memory_mb": 2048})
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 10
    while canary_qemus() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert canary_qemus() == [], "QEMU %s outlived its SIGKILLed parent" % pids
    # Only the work dir may be left after SIGKILL; the fixture wants the TMPDIR empty.
    for name in os.listdir(canary_tmp):
        shutil.rmtree(os.path.join(canary_tmp, name))
