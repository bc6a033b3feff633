# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role's copies of the collection's vocabularies (feature ids, causes, value ranges) are the ones
module_utils defines: the role runs on the controller in YAML and Jinja, so it cannot import them;
each copy is held to its source here and fails on drift."""

from __future__ import absolute_import, division, print_function

import os

import yaml
from ansible_collections.hypervisor.migration.plugins.filter import postcopy_role
from ansible_collections.hypervisor.migration.plugins.module_utils import _diagnose, _facts
from ansible_collections.hypervisor.migration.plugins.modules import postcopy_facts

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
ROLE = os.path.join(REPO, "roles", "postcopy")


def text(*path):
    with open(os.path.join(ROLE, *path)) as handle:
        return handle.read()


def role_vars():
    return yaml.safe_load(text("vars", "main.yml"))


def test_the_report_orders_every_feature_id_the_probe_and_the_canary_report():
    assert postcopy_role.report_data({}, [])["features"] == []
    everything = {"hv": {"__postcopy_verdict": {"supported": False, "missing_features": list(reversed(postcopy_role.FEATURE_IDS))}}}
    assert postcopy_role.report_data(everything, ["hv"])["features"] == list(_diagnose.FEATURES) + [postcopy_role.CANARY_FEATURE]


def test_the_canary_cause_is_in_the_table_with_its_remedy():
    assert postcopy_role.CANARY_CAUSE in _diagnose.CAUSES
    assert postcopy_role.CANARY_REMEDY == _diagnose.REMEDIES[postcopy_role.CANARY_CAUSE]


def test_grants_fix_causes_the_table_knows():
    fixes = role_vars()["__postcopy_grant_fixes"]
    assert set(fixes) == {"device", "sysctl"}
    assert set(sum(fixes.values(), [])) <= set(_diagnose.CAUSES)


def test_the_roles_value_ranges_are_the_modules():
    assert postcopy_role.TARGET_PAGE_SIZE_RANGE == (_facts.MIN_PAGE, _facts.MAX_PAGE)
    assert postcopy_role.PROBE_TIMEOUT_RANGE == (1, _facts.MAX_TIMEOUT)
    pages = "between %d and %d" % (_facts.MIN_PAGE, _facts.MAX_PAGE)
    seconds = "between 1 and %d" % _facts.MAX_TIMEOUT
    backends = "at least one of " + ", ".join(_facts.ARGUMENT_SPEC["memory_backends"]["choices"])
    errors = postcopy_role.probe_variable_errors(
        {"postcopy_probe_user": "auto", "postcopy_qemu_binary": "auto", "postcopy_target_page_size": 3,
         "postcopy_probe_timeout": 0, "postcopy_memory_backends": []})
    assert all(any(words in error for error in errors) for words in (pages, seconds, backends)), errors
    options = yaml.safe_load(text("meta", "argument_specs.yml"))["argument_specs"]["main"]["options"]
    assert pages in " ".join(options["postcopy_target_page_size"]["description"])
    assert seconds in " ".join(options["postcopy_probe_timeout"]["description"])
    module_options = yaml.safe_load(postcopy_facts.DOCUMENTATION)["options"]
    assert pages in " ".join(module_options["target_page_size"]["description"]).lower()
    assert seconds in " ".join(module_options["timeout"]["description"]).lower()
