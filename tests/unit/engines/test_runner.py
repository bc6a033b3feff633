# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-runner (the job runner of AWX and Automation Controller) runs the preflight playbook and
the role unchanged, and the job events it records carry the facts."""

import os
import sys

import pytest

ansible_runner = pytest.importorskip("ansible_runner")

PROBE_TASK = "Probe userfaultfd as QEMU's account"
ROLE_PLAY = """\
- name: The role's probe entry point
  hosts: all
  gather_facts: false
  tasks:
    - name: Probe with the role
      ansible.builtin.import_role:
        name: hypervisor.migration.postcopy
        tasks_from: probe
"""


def _run(tmp_path, playbook):
    (tmp_path / "project").mkdir(exist_ok=True)
    (tmp_path / "project" / "role.yml").write_text(ROLE_PLAY)
    (tmp_path / "inventory").mkdir(exist_ok=True)
    # The local connection with this interpreter, as Ansible's implicit localhost has it.
    (tmp_path / "inventory" / "hosts").write_text("hv-01 ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    envvars = {"ANSIBLE_COLLECTIONS_PATH": os.environ["ANSIBLE_COLLECTIONS_PATH"]} if "ANSIBLE_COLLECTIONS_PATH" in os.environ else {}
    return ansible_runner.run(
        private_data_dir=str(tmp_path),
        playbook=playbook,
        extravars={"postcopy_preflight_hosts": "all"},
        envvars=envvars,
        quiet=True,
    )


def _probe_facts(run):
    """The facts in the job event of each host's probe."""
    return dict(
        (e["event_data"]["host"], e["event_data"]["res"]["ansible_facts"])
        for e in run.events
        if e["event"] == "runner_on_ok" and e["event_data"].get("task") == PROBE_TASK
    )


@pytest.fixture
def collections_path(monkeypatch):
    here = os.path.dirname(os.path.abspath(__file__))
    collections = os.path.join(here, "..", "..", "..", ".build", "collections")
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", os.path.abspath(collections))


@pytest.mark.parametrize("playbook", ["hypervisor.migration.preflight", "role.yml"])
def test_job_events_carry_the_facts(tmp_path, collections_path, playbook):
    run = _run(tmp_path, playbook)
    assert (run.status, run.rc) == ("successful", 0), run.stdout.read()[-2000:]
    facts = _probe_facts(run)
    assert list(facts) == ["hv-01"]
    assert facts["hv-01"]["postcopy_supported"] is (facts["hv-01"]["postcopy_missing_features"] == [])
    assert facts["hv-01"]["postcopy"]["probe_user"]["uid"] == os.geteuid()
    if playbook != "role.yml":
        (report,) = [e for e in run.events if e["event"] == "runner_on_ok" and e["event_data"].get("task") == "Report the fleet"]
        assert report["event_data"]["res"]["msg"][-1].startswith("1 host: ")
