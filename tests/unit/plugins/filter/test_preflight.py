# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The preflight playbook's filters: module arguments from variables, the per-host line, the gate
and the fleet summary. The results fed in are shaped like postcopy_facts' registered results; the
SSH tests (tests/ssh) check the same lines against real hosts."""

import os
import re
import subprocess
import sys

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from ansible_collections.hypervisor.migration.plugins.filter import preflight
from ansible_collections.hypervisor.migration.plugins.modules.postcopy_facts import ARGUMENT_SPEC

SYSCTL_CAUSE = {
    "feature": "userfaultfd",
    "cause": "unprivileged_userfaultfd_sysctl",
    "detail": "userfaultfd() as libvirt-qemu failed with EPERM",
    "remedy": "Set vm.unprivileged_userfaultfd=1.",
}


def probed(name="libvirt-qemu", uid=64055, qemu_account="libvirt-qemu", causes=(), used="syscall"):
    details = {
        "probe_user": {"name": name, "uid": uid, "qemu_account": qemu_account, "switched": name == qemu_account},
        "qemu": {"version": "7.2.22"},
        "kernel": "6.18.0",
        "access": {"used": used},
        "causes": list(causes),
    }
    facts = {"postcopy_supported": not causes, "postcopy_missing_features": [c["feature"] for c in causes], "postcopy": details}
    return {"changed": False, "ansible_facts": facts}


UNREACHABLE = {"unreachable": True, "msg": "Failed to connect to the host via ssh: Connection refused", "changed": False}
FAILED = {"failed": True, "msg": "The module failed to execute correctly,\nyou probably need to set the interpreter.", "changed": False}


def test_the_options_are_read_without_importing_the_module():
    # Each Ansible worker that templates the probe's arguments calls the filter: it must not load the module's code.
    code = (
        "import sys; from ansible_collections.hypervisor.migration.plugins.filter import preflight; preflight.option_variables(); "
        "print(sorted(m for m in sys.modules if '.plugins.module' in m))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
    with pytest.raises(AnsibleFilterError, match="^postcopy_preflight_args: no ARGUMENT_SPEC"):
        preflight._spec_options("SPEC = dict(a=1)\n")
    assert preflight._spec_options("ARGUMENT_SPEC = dict(b=dict(), a=dict())\n") == ["a", "b"]


def test_every_module_option_has_a_variable():
    assert sorted(preflight.option_variables()) == sorted(ARGUMENT_SPEC)
    assert preflight.option_variables()["timeout"] == "postcopy_probe_timeout"
    assert preflight.option_variables()["target_page_size"] == "postcopy_target_page_size"


def test_args_pass_only_the_variables_that_are_set():
    host_vars = {"postcopy_target_page_size": 65536, "postcopy_probe_timeout": 30, "postcopy_canary": True, "other": 1}
    assert preflight.preflight_args(host_vars) == {"target_page_size": 65536, "timeout": 30}


PLAYBOOK = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "playbooks", "preflight.yml")


def preflight_module_defaults():
    """The expression the preflight's probe takes its arguments from (its play's module_defaults)."""
    with open(PLAYBOOK) as handle:
        play = yaml.safe_load(handle)[0]
    return play["module_defaults"]["hypervisor.migration.postcopy_facts"]


def test_the_playbook_names_every_option_and_its_variable():
    # Written out in the playbook for speed; the module's spec and the filter stay the reference.
    written = dict(re.findall(r"'(\w+)': (\w+) \| default\(omit\)", preflight_module_defaults()))
    assert written == preflight.option_variables()


@pytest.mark.parametrize(
    "host_vars",
    [
        {},
        {"postcopy_target_page_size": 65536, "postcopy_probe_timeout": 30, "postcopy_canary": True, "other": 1},
        {
            "postcopy_probe_user": "libvirt-qemu",
            "postcopy_memory_backends": ["anonymous", "shmem"],
            "postcopy_launcher": "libvirt",
            "postcopy_qemu_binary": "/usr/bin/qemu-system-x86_64",
            "postcopy_ffi_backend": "ctypes",
        },
    ],
)
def test_the_playbook_passes_what_the_filter_passes(host_vars):
    templar = Templar(loader=DataLoader(), variables=host_vars)
    assert templar.template(trust_as_template(preflight_module_defaults())) == preflight.preflight_args(host_vars)


@pytest.mark.parametrize(
    "result, line",
    [
        (probed(), "SUPPORTED: post-copy works for libvirt-qemu (uid 64055), QEMU 7.2.22, kernel 6.18.0, userfaultfd via syscall"),
        (
            probed(causes=[SYSCTL_CAUSE]),
            "NOT SUPPORTED for libvirt-qemu (uid 64055), QEMU 7.2.22, kernel 6.18.0: userfaultfd missing, "
            "cause unprivileged_userfaultfd_sysctl: Set vm.unprivileged_userfaultfd=1.",
        ),
        (probed(name="ops", uid=1000), "NOT JUDGED: probed as ops, not as QEMU's account libvirt-qemu: run with --become"),
        (
            probed(name="root", uid=0, qemu_account=None),
            "SUPPORTED: post-copy works for root (uid 0; no QEMU account found, so this is the verdict for the module's own account), "
            "QEMU 7.2.22, kernel 6.18.0, userfaultfd via syscall",
        ),
        (UNREACHABLE, "UNREACHABLE: Failed to connect to the host via ssh: Connection refused"),
        (FAILED, "FAILED: The module failed to execute correctly, you probably need to set the interpreter."),
    ],
)
def test_line(result, line):
    assert preflight.preflight_line(result) == line


@pytest.mark.parametrize(
    "result, plain, required",
    [
        (probed(), False, False),
        (probed(causes=[SYSCTL_CAUSE]), False, True),
        (probed(name="ops"), False, True),
        (UNREACHABLE, True, True),
        (FAILED, True, True),
    ],
)
def test_fails(result, plain, required):
    assert preflight.preflight_fails(result) is plain
    assert preflight.preflight_fails(result, require=True) is required


def test_summary_counts_every_host_by_outcome_and_cause():
    results = {
        "hv-1": probed(),
        "hv-2": probed(causes=[SYSCTL_CAUSE]),
        "hv-3": probed(causes=[SYSCTL_CAUSE, dict(SYSCTL_CAUSE, feature="uffdio_api")]),
        "hv-4": probed(name="ops"),
        "hv-5": UNREACHABLE,
        "hv-6": FAILED,
        "hv-7": None,
    }
    summary = preflight.preflight_summary(results)
    assert summary["counts"] == {"supported": 1, "not_supported": 2, "wrong_account": 1, "unreachable": 1, "failed": 2}
    assert summary["causes"] == {"unprivileged_userfaultfd_sysctl": 2}
    assert preflight.preflight_summary_line(summary) == (
        "7 hosts: 1 supported, 2 not supported (unprivileged_userfaultfd_sysctl 2), "
        "1 not probed as QEMU's account (hv-4), 1 unreachable (hv-5), 2 failed (hv-6, hv-7)"
    )


def test_summary_line_names_at_most_ten_hosts_per_outcome():
    summary = preflight.preflight_summary(dict(("hv-%02d" % n, UNREACHABLE) for n in range(12)))
    assert preflight.preflight_summary_line(summary).endswith(
        "12 unreachable (hv-00, hv-01, hv-02, hv-03, hv-04, hv-05, hv-06, hv-07, hv-08, hv-09 and 2 more), 0 failed"
    )


def test_lines_are_one_per_host_then_the_summary():
    lines = preflight.preflight_lines({"hv-2": UNREACHABLE, "hv-1": probed()})
    assert lines == [
        "hv-1: SUPPORTED: post-copy works for libvirt-qemu (uid 64055), QEMU 7.2.22, kernel 6.18.0, userfaultfd via syscall",
        "hv-2: UNREACHABLE: Failed to connect to the host via ssh: Connection refused",
        "2 hosts: 1 supported, 0 not supported, 0 not probed as QEMU's account, 1 unreachable (hv-2), 0 failed",
    ]


def test_failing_hosts_are_those_that_did_not_answer_and_under_require_the_unsupported():
    results = {"hv-1": probed(), "hv-2": probed(causes=[SYSCTL_CAUSE]), "hv-3": FAILED, "hv-4": None, "hv-5": UNREACHABLE}
    assert preflight.preflight_failing(results) == ["hv-3", "hv-4", "hv-5"]
    assert preflight.preflight_failing(results, require=True) == ["hv-2", "hv-3", "hv-4", "hv-5"]


def test_fleet_is_the_lines_and_the_failing_hosts():
    results = {"hv-1": probed(), "hv-2": FAILED}
    assert preflight.preflight_fleet(results, require=True) == {
        "lines": preflight.preflight_lines(results),
        "failing": preflight.preflight_failing(results, require=True),
    }


def test_a_single_host_is_one_host():
    assert preflight.preflight_summary_line(preflight.preflight_summary({"hv": probed()})).startswith("1 host: 1 supported")


@pytest.mark.parametrize(
    "call",
    [
        lambda: preflight.preflight_line("text"),
        lambda: preflight.preflight_summary(["hv-1"]),
        lambda: preflight.preflight_lines("hv-1"),
        lambda: preflight.preflight_failing(["hv-1"]),
    ],
)
def test_bad_input_is_one_line(call):
    with pytest.raises(AnsibleFilterError, match="^postcopy_preflight_"):
        call()


def test_filters_are_registered_under_their_names():
    names = preflight.FilterModule().filters()
    assert names["postcopy_preflight_line"] is preflight.preflight_line
    assert set(names) == {"postcopy_preflight_" + n for n in ("args", "line", "lines", "failing", "fleet", "outcome", "summary", "summary_line")}


def test_the_line_names_the_launcher_and_how_qemu_gets_userfaultfd():
    result = {
        "ansible_facts": {
            "postcopy_supported": True,
            "postcopy": {
                "probe_user": {"name": "libvirt-qemu", "uid": 64055, "qemu_account": "libvirt-qemu", "switched": True},
                "qemu": {"version": "10.0.7"},
                "kernel": "6.18.0",
                "access": {"used": "device"},
                "causes": [],
                "launcher": {"kind": "libvirt", "version": "11.3.0", "device_path": {"kind": "libvirt_private_dev"}},
            },
        }
    }
    assert preflight.preflight_line(result) == (
        "SUPPORTED: post-copy works for libvirt-qemu (uid 64055), libvirt 11.3, QEMU 10.0, device via libvirt's private /dev, "
        "kernel 6.18.0, userfaultfd via device"
    )


def test_the_guide_lists_every_option_variable():
    guide = os.path.join(os.path.dirname(PLAYBOOK), "..", "docs", "docsite", "rst", "preflight.rst")
    with open(guide) as handle:
        row = next(line for line in handle if "any option of ``postcopy_facts``" in line)
    listed = re.findall(r"``(postcopy_\w+)``", row.split(":", 1)[1])
    assert sorted(listed) == sorted(preflight.option_variables().values())
