# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role's consumers are defined once: the choices of postcopy_consumers in
meta/argument_specs.yml. Each has its tasks file tasks/consumers/<name>.yml, which tasks/consumers.yml
includes by name, and a paragraph of that option's description, which ansible-doc shows."""

from __future__ import absolute_import, division, print_function

import os

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
ROLE = os.path.join(REPO, "roles", "postcopy")
TASKS = os.path.join(ROLE, "tasks", "consumers")


def spec():
    with open(os.path.join(ROLE, "meta", "argument_specs.yml")) as handle:
        return yaml.safe_load(handle)["argument_specs"]["main"]["options"]["postcopy_consumers"]


def consumers():
    return spec()["choices"]


def read(*path):
    with open(os.path.join(REPO, *path)) as handle:
        return handle.read()


def test_every_consumer_has_its_tasks_file_and_no_file_is_left_over():
    files = sorted(name[: -len(".yml")] for name in os.listdir(TASKS) if name.endswith(".yml"))
    assert files == sorted(consumers())
    assert sorted(os.listdir(TASKS)) == sorted(name + ".yml" for name in files)


def test_the_consumers_are_included_by_name_only():
    (task,) = yaml.safe_load(read("roles", "postcopy", "tasks", "consumers.yml"))
    assert task["ansible.builtin.include_tasks"] == "consumers/{{ __postcopy_consumer }}.yml"
    assert "postcopy_consumers" in task["loop"]
    # The one consumer consumers.yml names is local_facts, which it runs last.
    named = [name for name in consumers() if name in task["loop"]]
    assert named == ["local_facts"]


def test_the_docs_describe_every_consumer():
    # The role's reference (ansible-doc -t role, and the role's page that antsibull-docs builds) is
    # the description of postcopy_consumers: a new consumer is documented there, in the one spec
    # file it touches anyway. role.rst and the README show examples and need not list them all.
    paragraphs = spec()["description"]
    for name in consumers():
        assert [line for line in paragraphs if line.startswith("V(%s) " % name)], "no paragraph of postcopy_consumers starts with V(%s)" % name
