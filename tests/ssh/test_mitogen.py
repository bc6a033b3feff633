# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The preflight under Mitogen for Ansible (PyPI ``mitogen``, strategy ``mitogen_linear``) over real SSH.

Mitogen runs modules inside one persistent Python interpreter per host and account instead of a
fresh process per task. postcopy_facts forks and switches accounts in the child only, so under
Mitogen the verdict must be the same as without it, and the interpreter that ran the probe must
still be root afterwards: a later task in the same interpreter finds uid 0, and a second probe
switches again.
"""

import os

import pytest
from conftest import MAIN_ADDRESSES
from test_preflight_ssh import QEMU_ACCOUNT, reference_line, run_playbook

ansible_mitogen = pytest.importorskip("ansible_mitogen")

# Mitogen keeps its own connection per host open for the whole run; an OpenSSH master that
# outlives it would hold the run open until ControlPersist ran out.
PERSIST = "no"
STRATEGY_PLUGINS = os.path.join(os.path.dirname(ansible_mitogen.__file__), "plugins", "strategy")
TWICE = """\
- name: Probe twice in one Mitogen interpreter
  hosts: fleet
  gather_facts: false
  strategy: mitogen_linear
  tasks:
    - name: Probe as QEMU's account
      hypervisor.migration.postcopy_facts:
        probe_user: {account}
      register: first

    - name: Who the interpreter is after the probe
      ansible.builtin.command: id -u
      register: after
      changed_when: false

    - name: Probe again
      hypervisor.migration.postcopy_facts:
        probe_user: {account}
      register: second

    - name: What ran the command
      ansible.builtin.shell: tr '\\0' ' ' < /proc/$PPID/cmdline
      register: parent
      changed_when: false
"""


def _hosts(fleet):
    sudo = {"ansible_user": fleet.login, "ansible_become": "true", "ansible_pipelining": "true"}
    return [
        ("sudo-auto", MAIN_ADDRESSES[0], sudo),
        ("sudo-qemu", MAIN_ADDRESSES[1], dict(sudo, postcopy_probe_user=QEMU_ACCOUNT)),
        ("no-become", MAIN_ADDRESSES[2], {"ansible_user": fleet.login, "postcopy_probe_user": QEMU_ACCOUNT}),
    ]


@pytest.fixture
def mitogen_env(monkeypatch):
    monkeypatch.setenv("ANSIBLE_STRATEGY_PLUGINS", STRATEGY_PLUGINS)
    monkeypatch.setenv("ANSIBLE_STRATEGY", "mitogen_linear")


def test_the_preflight_says_the_same_under_mitogen(fleet, tmp_path, mitogen_env):
    import hostctl

    def run():
        return run_playbook(fleet, tmp_path, _hosts(fleet), control_persist=PERSIST), reference_line(), reference_line(probe_user=QEMU_ACCOUNT)

    result, as_root, as_qemu = hostctl.steady(run, sysctl=0)
    assert result.rc == 0, result.stdout[-3000:]
    assert result.lines() == {
        "sudo-auto": as_root,
        "sudo-qemu": as_qemu,
        "no-become": "NOT JUDGED: probed as %s, not as QEMU's account nobody: run with --become" % fleet.login,
    }
    assert result.summary().startswith("3 hosts: 1 supported, 1 not supported (unprivileged_userfaultfd_sysctl 1), 1 not probed")


def test_the_interpreter_stays_root_after_the_probe(fleet, tmp_path, mitogen_env):
    playbook = tmp_path / "twice.yml"
    playbook.write_text(TWICE.format(account=QEMU_ACCOUNT))
    result = run_playbook(fleet, tmp_path, _hosts(fleet)[:1], playbook=str(playbook), control_persist=PERSIST)
    assert result.rc == 0, result.stdout[-3000:]
    by_task = dict((r["task"], r["result"]) for r in result.records)
    for task in ("Probe as QEMU's account", "Probe again"):
        who = by_task[task]["ansible_facts"]["postcopy"]["probe_user"]
        assert (who["name"], who["uid"], who["switched"]) == (QEMU_ACCOUNT, 65534, True)
    assert by_task["Who the interpreter is after the probe"]["stdout"] == "0"
    # Mitogen's interpreter ran the tasks (its command line names it), not a Python per task.
    assert "mitogen" in by_task["What ran the command"]["stdout"]
