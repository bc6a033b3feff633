# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""postcopy_facts through AnsibleModule's real argument handling: messages, check mode, facts."""


import re

import pytest
import yaml
from ansible_collections.hypervisor.migration.plugins.module_utils._diagnose import FEATURES
from ansible_collections.hypervisor.migration.plugins.module_utils._probe import MEMORY_BACKENDS
from ansible_collections.hypervisor.migration.plugins.modules import postcopy_facts
from module_main import run_module_main


def run_module(capsys, args):
    return run_module_main(postcopy_facts.main, args, capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        ({"target_page_size": 3000}, "target_page_size must be a power of two between 1024 and 1073741824, got 3000"),
        ({"target_page_size": 0}, "target_page_size must be a power of two between 1024 and 1073741824, got 0"),
        ({"target_page_size": 1 << 31}, "target_page_size must be a power of two between 1024 and 1073741824, got 2147483648"),
        ({"target_page_size": "big"}, "argument 'target_page_size' is of type str and we were unable to convert to int"),
        ({"timeout": 0}, "timeout must be between 1 and 3600 seconds, got 0"),
        ({"timeout": 99999}, "timeout must be between 1 and 3600 seconds, got 99999"),
        ({"memory_backends": ["ram"]}, "value of memory_backends must be one or more of: anonymous, shmem, hugetlbfs. Got no match for: ram"),
        ({"memory_backends": []}, "memory_backends must name at least one of anonymous, shmem, hugetlbfs"),
        ({"ffi_backend": "rust"}, "value of ffi_backend must be one of: auto, cffi, ctypes, got: rust"),
        ({"probe_user": "no-such-user-x"}, "probe_user: no such account 'no-such-user-x' on this host (give an account name, a numeric uid, or auto)"),
        ({"probe_user": " "}, "probe_user must be auto, an account name or a numeric uid, got an empty string"),
        ({"qemu_binary": "qemu-system-x86_64"}, "qemu_binary must be an absolute path or auto, got 'qemu-system-x86_64'"),
        ({"qemu_binary": "/nonexistent/qemu"}, "qemu_binary /nonexistent/qemu: No such file or directory"),
        ({"qemu_binary": "/proc/version"}, "qemu_binary /proc/version is not executable"),
        ({"unknown": 1}, "Unsupported parameters for"),
    ],
)
def test_bad_options_fail_in_one_line(capsys, args, message):
    result = run_module(capsys, args)
    assert result["rc"] == 1
    assert result["failed"] is True
    assert result["msg"].startswith(message)
    assert "\n" not in result["msg"]
    assert "exception" not in result


def test_the_documented_return_values_are_the_vocabularies():
    facts = yaml.safe_load(postcopy_facts.RETURN)["ansible_facts"]["contains"]
    missing = " ".join(facts["postcopy_missing_features"]["description"])
    assert re.findall(r"C\((\w+)\)", missing) == list(FEATURES)
    register = facts["postcopy"]["contains"]["register"]
    assert re.findall(r"C\((\w+)\)", register["description"]) == [memory.name for memory in MEMORY_BACKENDS]
    assert list(register["sample"]) == [memory.name for memory in MEMORY_BACKENDS]


def test_facts_are_returned_and_nothing_changes(capsys, root):
    result = run_module(capsys, {"_ansible_check_mode": True})
    assert result["rc"] == 0
    assert result["changed"] is False
    facts = result["ansible_facts"]
    assert facts["postcopy_supported"] is True
    assert facts["postcopy_missing_features"] == []
    expected_keys = {
        "kernel", "arch", "page_size", "target_page_size", "hugepage_sizes", "memory_backends", "probe_user", "access", "sysctl",
        "seccomp", "cap_sys_ptrace", "api", "register", "qemu", "causes", "backend", "duration_ms",
    }
    assert expected_keys <= set(facts["postcopy"])


def test_explicit_cffi_missing_uses_missing_required_lib(capsys, monkeypatch):
    monkeypatch.setattr(postcopy_facts, "HAS_CFFI", False)
    result = run_module(capsys, {"ffi_backend": "cffi"})
    assert result["rc"] == 1
    assert "Failed to import the required Python library (cffi)" in result["msg"]
