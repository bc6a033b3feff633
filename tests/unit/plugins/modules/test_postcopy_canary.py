# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""postcopy_canary through AnsibleModule's real argument handling: messages, check mode, real runs."""

import json
import os
import subprocess
import sys

import hostctl
import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _canary
from ansible_collections.hypervisor.migration.plugins.modules import postcopy_canary
from module_main import run_module_main

QEMU = "/usr/bin/qemu-system-x86_64"
needs_qemu = pytest.mark.skipif(not os.access(QEMU, os.X_OK), reason="needs qemu-system-x86_64")

FACT_KEYS = {
    "ok", "status", "error", "postcopy_active_seen", "total_time_ms", "downtime_ms", "setup_time_ms", "postcopy_requests",
    "pages_transferred", "bytes_transferred", "guest_running_after", "wall_time_ms", "qemu_binary", "qemu_version", "accel",
    "memory_mb", "sandbox", "run_as", "commands", "launcher", "domains",
}  # fmt: skip


def run_module(capsys, args):
    return run_module_main(postcopy_canary.main, args, capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        ({"memory_mb": 15}, "memory_mb must be between 16 and 65536, got 15"),
        ({"memory_mb": 65537}, "memory_mb must be between 16 and 65536, got 65537"),
        ({"memory_mb": "lots"}, "argument 'memory_mb' is of type str and we were unable to convert to int"),
        ({"timeout": 0}, "timeout must be between 1 and 3600 seconds, got 0"),
        ({"timeout": 3601}, "timeout must be between 1 and 3600 seconds, got 3601"),
        ({"accel": "hvf"}, "value of accel must be one of: auto, kvm, tcg, got: hvf"),
        ({"sandbox": "maybe"}, "argument 'sandbox' is of type str and we were unable to convert to bool"),
        ({"accel": "KVM"}, "value of accel must be one of: auto, kvm, tcg, got: KVM"),
        ({"launcher": "lxc"}, "value of launcher must be one of: auto, libvirt, qemu, got: lxc"),
        ({"probe_user": ""}, "probe_user must be auto, an account name or a numeric uid, got an empty string"),
        ({"probe_user": "a\x00b"}, "probe_user must be auto, an account name or a numeric uid, got a value with control characters"),
        ({"run_as": " "}, "probe_user must be auto, an account name or a numeric uid, got an empty string"),
        ({"probe_user": "no-such-user-x"}, "probe_user: no such account 'no-such-user-x' on this host (give an account name, a numeric uid, or auto)"),
        ({"qemu_binary": ""}, "qemu_binary must be auto or an absolute path, got an empty string"),
        ({"qemu_binary": "qemu-system-x86_64"}, "qemu_binary must be an absolute path or auto, got 'qemu-system-x86_64'"),
        ({"qemu_binary": "/nonexistent/qemu"}, "qemu_binary /nonexistent/qemu: No such file or directory"),
        ({"qemu_binary": "/proc/version"}, "qemu_binary /proc/version is not executable"),
        ({"memory_mb": 1, "timeout": 0}, "memory_mb must be between 16 and 65536, got 1; timeout must be between 1 and 3600 seconds, got 0"),
        ({"probe_user": "\t", "memory_mb": 8}, "probe_user must be auto, an account name or a numeric uid, got an empty string; memory_mb must be between 16"),
        ({"unknown": 1}, "Unsupported parameters for"),
    ],
)
def test_bad_options_fail_in_one_line(capsys, canary_tmp, args, message):
    result = run_module(capsys, args)
    assert result["rc"] == 1
    assert result["failed"] is True
    assert result["msg"].startswith(message)
    assert "\n" not in result["msg"]
    assert "exception" not in result


def test_no_qemu_binary_fails_in_one_line(capsys, canary_tmp, monkeypatch):
    # A host without QEMU: the search finds nothing.
    monkeypatch.setattr(_canary, "find_qemu_binary", lambda spec: None)
    monkeypatch.setattr(_canary, "candidate_binaries", lambda: ["/nonexistent/qemu-system-x86_64"])
    result = run_module(capsys, {})
    assert result["rc"] == 1
    assert result["msg"] == "no QEMU binary found (looked for /nonexistent/qemu-system-x86_64); install QEMU or set qemu_binary"


@needs_qemu
def test_check_mode_reports_the_commands_and_starts_nothing(capsys, canary_tmp, root):
    result = run_module(capsys, {"_ansible_check_mode": True, "probe_user": "root", "accel": "tcg", "memory_mb": 64})
    assert result["rc"] == 0
    assert result["changed"] is False
    facts = result["ansible_facts"]["postcopy_canary"]
    assert set(facts) == FACT_KEYS
    assert facts["ok"] is None
    assert facts["error"] is None
    assert facts["commands"]["source"][:5] == [QEMU, "-accel", "tcg", "-m", "64"]
    assert facts["commands"]["destination"][-2:] == ["-incoming", "defer"]
    assert "<workdir>/firmware.bin" in facts["commands"]["source"]
    assert os.listdir(canary_tmp) == []


@needs_qemu
def test_a_real_canary_reports_success_and_changes_nothing(capsys, canary_tmp, root):
    result = run_module(capsys, {"probe_user": "root", "accel": "tcg"})
    assert result["rc"] == 0
    assert result["changed"] is False
    facts = result["ansible_facts"]["postcopy_canary"]
    assert set(facts) == FACT_KEYS
    assert (facts["ok"], facts["status"], facts["error"]) == (True, "completed", None)
    assert facts["postcopy_active_seen"] is True
    assert facts["postcopy_requests"] > 0
    assert facts["guest_running_after"] is True
    assert facts["run_as"]["name"] == "root"
    assert facts["sandbox"] is True


def run_module_file(canary_tmp, tmp_path, args, wrapper=()):
    """The module file run as Ansible runs it (args file on argv) in a process of its own: (exit code, answer, stderr)."""
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, TMPDIR=canary_tmp)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(os.path.join(p, "ansible_collections")))
    command = list(wrapper) + [sys.executable, postcopy_canary.__file__, str(args_file)]
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=120, check=False)
    return proc.returncode, json.loads(proc.stdout.decode()), proc.stderr.decode()


@needs_qemu
def test_the_deprecated_alias_run_as_still_names_qemus_account(canary_tmp, tmp_path, root):
    """In a process of its own: where the test process has loaded Ansible's controller code, deprecations go to its display, not the answer."""
    returncode, result, _stderr = run_module_file(canary_tmp, tmp_path, {"_ansible_check_mode": True, "run_as": "root", "accel": "tcg", "memory_mb": 64})
    assert returncode == 0
    assert result["ansible_facts"]["postcopy_canary"]["run_as"] == dict(result["ansible_facts"]["postcopy_canary"]["run_as"], name="root", source="option")
    assert [d["version"] for d in result["deprecations"] if "Alias 'run_as' is deprecated" in json.dumps(d)] == ["2.0.0"]


@needs_qemu
def test_under_seccomp_the_task_succeeds_with_ok_false(canary_tmp, tmp_path, root):
    """The module file from an interpreter whose userfaultfd is denied."""
    seccomp = [sys.executable, hostctl.SECCOMP_EXEC, "--deny", "userfaultfd:EPERM", "--"]
    returncode, result, stderr = run_module_file(canary_tmp, tmp_path, {"probe_user": "root", "accel": "tcg"}, seccomp)
    assert returncode == 0, stderr
    assert "failed" not in result
    assert result["changed"] is False
    facts = result["ansible_facts"]["postcopy_canary"]
    assert facts["ok"] is False
    assert facts["error"] == "Postcopy is not supported (postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted)"
