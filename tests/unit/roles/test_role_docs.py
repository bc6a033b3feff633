# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/postcopy/meta/argument_specs.yml is the single source of truth for the role's variables:
ansible-doc renders it, and defaults/main.yml must be what tests/tools/role_docs.py generates from it."""

from __future__ import absolute_import, division, print_function

import os
import sys

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "tools"))

import role_docs  # noqa: E402

ROLE = os.path.join(REPO, "roles", "postcopy")


def load(*path):
    with open(os.path.join(ROLE, *path)) as f:
        return yaml.safe_load(f)


def test_generated_files_are_current(capsys):
    assert role_docs.main(["--check"]) == 0, capsys.readouterr().err


def test_defaults_are_the_specs_defaults():
    options = load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    defaults = load("defaults", "main.yml")
    assert defaults == dict((name, spec["default"]) for name, spec in options.items() if "default" in spec)


def probe_entry_tasks():
    """The tasks tasks_from: probe runs, with import_tasks followed."""
    tasks = []
    for task in load("tasks", "probe.yml"):
        if "ansible.builtin.import_tasks" in task:
            tasks.extend(load("tasks", task["ansible.builtin.import_tasks"]))
        else:
            tasks.append(task)
    return tasks


def test_probe_entry_point_is_one_task_per_host():
    # The fleet figure (bench/, goal <= 1.2 x ping) holds because this entry point costs one task:
    # an argument spec or an assert here would each add a controller worker per host.
    specs = load("meta", "argument_specs.yml")["argument_specs"]
    assert "probe" not in specs
    assert [list(t)[1] for t in probe_entry_tasks()] == ["hypervisor.migration.postcopy_facts"]


def test_the_module_checks_what_the_probe_variables_spec_says():
    # Without its own spec, the probe entry point relies on the module's: same type, elements,
    # choices and default for every variable it passes on.
    from ansible_collections.hypervisor.migration.plugins.filter import postcopy_role
    from ansible_collections.hypervisor.migration.plugins.modules.postcopy_facts import ARGUMENT_SPEC

    main = load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    (task,) = probe_entry_tasks()
    args = task["hypervisor.migration.postcopy_facts"]
    # Every probe option but the FFI backend, which is the host's Python's business, not the fleet's.
    assert set(args) == set(ARGUMENT_SPEC) - {"ffi_backend"}
    for option, value in args.items():
        variable = value.strip("{} ")
        assert value == "{{ %s }}" % variable and variable in main, (option, value)
        for key in ("type", "elements", "default"):
            assert main[variable].get(key) == ARGUMENT_SPEC[option].get(key), (variable, key)
        choices = ARGUMENT_SPEC[option].get("choices")
        if variable == "postcopy_memory_backends":
            # Not copied into the spec: the role's check reads the probe's own rows.
            assert "choices" not in main[variable] and list(postcopy_role.MEMORY_BACKENDS) == choices
        else:
            assert main[variable].get("choices") == choices, variable


def test_every_variable_is_public_and_documented():
    options = load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, spec in options.items():
        assert name.startswith("postcopy_"), name
        assert spec.get("description"), name


def test_markup_becomes_plain_text():
    assert role_docs.plain("V(auto) or I(path)") == "auto or path"
