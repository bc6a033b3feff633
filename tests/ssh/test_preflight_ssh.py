# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The preflight playbook over real SSH (conftest.py starts the sshd and the login account).

Every inventory host is this machine behind its own loopback address: root login; the login
account becoming root through sudo, with pipelining on and off; the login account without become;
a host whose sshd is stopped once the play has started; a host without the Python it is told to
use. The expected verdict lines are the ones a probe in this process, as root, gives for the same
options: over SSH the preflight must say the same, for the same account.
"""

import json
import os
import subprocess

import hostctl
import pytest
from ansible_collections.hypervisor.migration.plugins.filter.preflight import preflight_line
from ansible_collections.hypervisor.migration.plugins.module_utils._facts import gather_postcopy_facts
from conftest import CALLBACKS, MAIN_ADDRESSES, STOPPED_ADDRESS

PLAYBOOK_TIMEOUT = 300
# QEMU's account on these hosts: this machine has no libvirt, so a stand-in every Debian has.
QEMU_ACCOUNT = "nobody"
NO_PYTHON = "/usr/bin/python3-absent"
PROBE = "Probe userfaultfd as QEMU's account"
REPORT = "Report the fleet"
GATE = "Fail the hosts that did not answer, or that cannot do post-copy when required"
# Files the role and the preflight could touch on a host, and the device and sysctl they judge.
WATCHED = ["/etc/ansible", "/etc/udev/rules.d", "/etc/sysctl.d", "/etc/nova", "/dev/userfaultfd"]


def reference_line(**params):
    """The line for a probe in this process, as root, with the given module options."""
    return preflight_line({"ansible_facts": gather_postcopy_facts(params)})


def inventory(fleet, hosts):
    lines = ["[fleet]"]
    lines.extend("%s ansible_host=%s %s" % (name, address, " ".join("%s=%s" % kv for kv in sorted(host_vars.items()))) for name, address, host_vars in hosts)
    lines.extend(["", "[fleet:vars]", "ansible_port=%d" % fleet.port])
    return "\n".join(lines) + "\n"


class Run:
    def __init__(self, proc, records):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.records = records

    def results(self, task):
        return dict((r["host"], r) for r in self.records if r["task"] == task)

    def _report(self):
        (only,) = self.results(REPORT).values()
        return only["result"]["msg"]

    def lines(self):
        """{host: line} from the report's "host: line" entries."""
        return dict(entry.split(": ", 1) for entry in self._report()[:-1])

    def summary(self):
        return self._report()[-1]


def run_playbook(fleet, tmp_path, hosts, *args, playbook="hypervisor.migration.preflight", stop=False, control_persist="30s"):
    inventory_file = tmp_path / "hosts.ini"
    inventory_file.write_text(inventory(fleet, hosts))
    record = tmp_path / ("record-%d.jsonl" % len(list(tmp_path.glob("record-*"))))
    env = fleet.env(control_persist=control_persist)
    env.update(
        {
            "ANSIBLE_CALLBACK_FORMAT_PRETTY": "false",
            "ANSIBLE_CALLBACK_PLUGINS": CALLBACKS,
            "ANSIBLE_CALLBACKS_ENABLED": "ssh_record",
            "HVM_SSH_RECORD": str(record),
        }
    )
    env.pop("HVM_SSH_STOP_PID", None)
    if stop:
        fleet.restart("stopped")
        env["HVM_SSH_STOP_PID"] = str(fleet.sshds["stopped"].pid)
    argv = ["ansible-playbook", "-i", str(inventory_file), playbook, "-e", "postcopy_preflight_hosts=fleet"] + list(args)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False)
    records = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return Run(proc, records)


def fleet_hosts(fleet):
    login = {"ansible_user": fleet.login}
    sudo = dict(login, ansible_become="true")
    # Root's login shell on a developer's machine may put other Pythons first (pyenv shims); the
    # login account, a fresh one, shows what interpreter discovery finds on Debian.
    root = {"ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3"}
    return [
        ("root-login", MAIN_ADDRESSES[0], root),
        ("sudo-pipelining", MAIN_ADDRESSES[1], dict(sudo, ansible_pipelining="true")),
        ("sudo-files", MAIN_ADDRESSES[2], dict(sudo, ansible_pipelining="false")),
        ("qemu-account", MAIN_ADDRESSES[3], dict(sudo, postcopy_probe_user=QEMU_ACCOUNT)),
        ("no-become", MAIN_ADDRESSES[4], dict(login, postcopy_probe_user=QEMU_ACCOUNT)),
        ("page-64k", MAIN_ADDRESSES[5], dict(root, postcopy_target_page_size="65536")),
        ("no-python", MAIN_ADDRESSES[6], dict(root, ansible_python_interpreter=NO_PYTHON)),
        ("stopped", STOPPED_ADDRESS, root),
    ]


def test_every_kind_of_host_gets_its_line_and_is_counted(fleet, tmp_path):
    def run():
        return run_playbook(fleet, tmp_path, fleet_hosts(fleet), stop=True), reference_line(), reference_line(probe_user=QEMU_ACCOUNT)

    # vm.unprivileged_userfaultfd held at 0 so that QEMU's unprivileged account is refused by it.
    result, as_root, as_qemu = hostctl.steady(run, sysctl=0)
    as_root_64k = reference_line(target_page_size=65536)
    assert as_root.startswith("SUPPORTED: post-copy works for root (uid 0; no QEMU account found")
    assert as_qemu.startswith("NOT SUPPORTED for nobody (uid 65534), ")
    assert as_root_64k.startswith("NOT SUPPORTED for root (uid 0; ")
    missing_python = result.results(PROBE)["no-python"]["result"]["msg"]
    assert NO_PYTHON in missing_python
    assert result.lines() == {
        "root-login": as_root,
        "sudo-pipelining": as_root,
        "sudo-files": as_root,
        "qemu-account": as_qemu,
        "no-become": "NOT JUDGED: probed as %s, not as QEMU's account nobody: run with --become" % fleet.login,
        "page-64k": as_root_64k,
        "no-python": "FAILED: %s" % " ".join(missing_python.split()),
        "stopped": "UNREACHABLE: Task failed: Failed to connect to the host via ssh: ssh: connect to host %s port %d: Connection refused"
        % (STOPPED_ADDRESS, fleet.port),
    }
    assert result.summary() == (
        "8 hosts: 3 supported, 2 not supported (page_size 1, unprivileged_userfaultfd_sysctl 1), "
        "1 not probed as QEMU's account (no-become), 1 unreachable (stopped), 1 failed (no-python)"
    )
    assert "1 not probed as QEMU's account (no-become), 1 unreachable (stopped)" in result.stdout
    # The hosts that did not answer fail the run, with their line; the others pass, supported or not.
    assert result.rc == 2
    gate = result.results(GATE)
    assert dict((h, (r["status"], r["result"]["msg"])) for h, r in gate.items()) == {
        "no-python": ("failed", result.lines()["no-python"]),
        "stopped": ("failed", result.lines()["stopped"]),
    }


def test_the_login_account_without_become_is_named_with_a_warning(fleet, tmp_path):
    hosts = fleet_hosts(fleet)
    result = run_playbook(fleet, tmp_path, [h for h in hosts if h[0] == "no-become"])
    probe = result.results(PROBE)["no-become"]["result"]
    who = probe["ansible_facts"]["postcopy"]["probe_user"]
    assert (who["name"], who["uid"], who["switched"], who["qemu_account"]) == (fleet.login, fleet.login_uid(), False, QEMU_ACCOUNT)
    warning = "probed as %s, not as QEMU's account nobody: switching accounts needs root (run with --become)" % fleet.login
    # Besides the module's warning, Ansible's own about the interpreter it discovered.
    assert [w for w in probe["warnings"] if "discovered Python interpreter" not in w] == [warning]
    assert "[WARNING]: " + warning in " ".join(result.stderr.split())
    assert result.rc == 0


def test_interpreter_discovery_finds_debians_python(fleet, tmp_path):
    hosts = [h for h in fleet_hosts(fleet) if h[0] in ("sudo-pipelining", "sudo-files")]
    result = run_playbook(fleet, tmp_path, hosts)
    for host in ("sudo-pipelining", "sudo-files"):
        found = result.results(PROBE)[host]["result"]["ansible_facts"]["discovered_interpreter_python"]
        assert os.path.realpath(found) == os.path.realpath("/usr/bin/python3"), (host, found)
    assert result.rc == 0


@pytest.mark.parametrize("become", [True, False], ids=["--become", "no-become"])
def test_the_readmes_command_line(fleet, tmp_path, become):
    # ansible-playbook hypervisor.migration.preflight -i hypervisors.ini -e postcopy_preflight_hosts=hypervisors --become
    hosts = [
        ("hv-pipelining", MAIN_ADDRESSES[0], {"ansible_user": fleet.login, "ansible_pipelining": "true", "postcopy_probe_user": QEMU_ACCOUNT}),
        ("hv-files", MAIN_ADDRESSES[1], {"ansible_user": fleet.login, "ansible_pipelining": "false", "postcopy_probe_user": QEMU_ACCOUNT}),
    ]
    result = run_playbook(fleet, tmp_path, hosts, *(["--become"] if become else []))
    switched = {h: r["result"]["ansible_facts"]["postcopy"]["probe_user"]["switched"] for h, r in result.results(PROBE).items()}
    assert switched == {"hv-pipelining": become, "hv-files": become}
    lines = result.lines()
    if become:
        assert all(line.startswith(("SUPPORTED: post-copy works for nobody (uid 65534)", "NOT SUPPORTED for nobody (uid 65534)")) for line in lines.values()), (
            lines
        )
    else:
        assert set(lines.values()) == {"NOT JUDGED: probed as %s, not as QEMU's account nobody: run with --become" % fleet.login}
    assert result.summary().endswith("0 unreachable, 0 failed")


def test_require_fails_the_hosts_that_cannot_do_post_copy(fleet, tmp_path):
    hosts = [h for h in fleet_hosts(fleet) if h[0] in ("root-login", "page-64k", "no-become")]
    result = run_playbook(fleet, tmp_path, hosts, "-e", "postcopy_preflight_require=true")
    gate = result.results(GATE)
    assert dict((h, r["status"]) for h, r in gate.items()) == {"no-become": "failed", "page-64k": "failed"}
    assert result.rc == 2


def _snapshot():
    """Every watched path with its type, mode, owner, size and content time: what a change would move."""
    seen = {}
    for top in WATCHED:
        for root, dirs, files in os.walk(top) if os.path.isdir(top) else [(os.path.dirname(top), [], [os.path.basename(top)])]:
            for name in dirs + files:
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                seen[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
        if not os.path.exists(top):
            seen[top] = None
    return seen


def test_check_mode_and_the_roles_default_path_change_nothing(fleet, tmp_path):
    hosts = [h for h in fleet_hosts(fleet) if h[0] in ("root-login", "sudo-pipelining", "sudo-files")]
    role_play = tmp_path / "role.yml"
    role_play.write_text("- name: The role with its defaults\n  hosts: fleet\n  gather_facts: false\n  roles:\n    - role: hypervisor.migration.postcopy\n")
    before = _snapshot()
    preflight = run_playbook(fleet, tmp_path, hosts, "--check")
    role = run_playbook(fleet, tmp_path, hosts, "--check", playbook=str(role_play))
    assert _snapshot() == before
    assert (preflight.rc, role.rc) == (0, 0), role.stdout[-2000:]
    assert sorted(preflight.lines()) == ["root-login", "sudo-files", "sudo-pipelining"]
    assert not [r for r in preflight.records if r["result"].get("changed")]
